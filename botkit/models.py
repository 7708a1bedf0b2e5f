"""Pydantic models of every payload exchanged with the provider (PROVIDER_API.md).

The provider's numbers (``MessageType``, ``MessageStatus``, ``SmsStatus``) live in
``botkit.statuses`` and are re-exported here.

Field names are the provider's, verbatim. Every documented limit is checked here, so a
reply that breaks one fails when the bot makes it, naming the field and the limit,
instead of coming back as a 400 from the provider.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from botkit.errors import ReplyLimitError
from botkit.sms import sms_problem
from botkit.statuses import (
    MessageStatus,
    MessageType,
    SmsStatus,
    is_final_status,
    sms_status_label,
    status_label,
)

__all__ = [
    "DeliveryStatus",
    "ErrorBody",
    "InboundReply",
    "MessageStatus",
    "MessageType",
    "ReplyMessage",
    "SendRequest",
    "SendResult",
    "SmsStatus",
    "StatusResult",
    "StatusUpdate",
    "is_final_status",
    "is_reply",
    "normalize_phone",
    "parse_tracking_id",
    "sms_status_label",
    "status_label",
]

_TRACKING = re.compile(r"^\s*tracking_id:([0-9]{1,19})\s*$")  # ASCII digits only
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def parse_tracking_id(tracking_data: str | None) -> int | None:
    """Return the message id in ``tracking_id:<id>``, or None for anything else.

    >>> parse_tracking_id("tracking_id:100035")
    100035
    """
    if not tracking_data:
        return None
    match = _TRACKING.match(tracking_data)
    value = int(match.group(1)) if match else None
    return value if value is not None and value < 2**63 else None


def _int_from_digits(value: Any) -> Any:
    # The provider may send ids as numbers or as digit strings (PROVIDER_API.md, SDK tests).
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    return value


def _str_from_int(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def normalize_phone(value: str) -> str:
    """The one spelling botkit stores for a phone: digits without a leading ``+``.

    >>> normalize_phone(" +380501112233")
    '380501112233'
    """
    return value.strip().removeprefix("+")


def _phone(value: Any) -> Any:
    # One spelling per user: "+380 50..." and "38050..." are the same phone. The provider
    # posts numbers without "+" and its examples send them that way (PROVIDER_API.md).
    value = _str_from_int(value)
    return normalize_phone(value) if isinstance(value, str) else value


ProviderId = Annotated[StrictInt, BeforeValidator(_int_from_digits), Field(ge=0, lt=2**63)]
# Any status number, documented or not: a status is never refused for being new.
DeliveryStatus = Annotated[StrictInt, BeforeValidator(_int_from_digits), Field(ge=0, lt=2**31)]


def _utf8(value: str) -> str:
    value.encode()  # a lone surrogate raises UnicodeEncodeError, a ValueError
    return value


Token = Annotated[
    str, BeforeValidator(_str_from_int), Field(min_length=1, max_length=64), AfterValidator(_utf8)
]
# ASCII digits: pydantic's \d would also take Arabic-Indic or fullwidth digits.
Phone = Annotated[
    str, BeforeValidator(_phone), Field(min_length=1, max_length=20, pattern=r"^[0-9]+$")
]


class ReplyMessage(BaseModel):
    """The ``message`` object of a 2Way reply."""

    model_config = ConfigDict(extra="ignore")

    text: str = Field(default="", max_length=4096)
    tracking_data: str | None = Field(default=None, max_length=256)


class InboundReply(BaseModel):
    """A user's reply to a 2Way message, posted by the provider to ``callback_url``."""

    model_config = ConfigDict(extra="ignore")

    message_token: Token
    phone_number: Phone
    time: Annotated[StrictInt, Field(ge=0, lt=2**40)]
    message: ReplyMessage

    @property
    def tracking_id(self) -> int | None:
        """The provider message id the user is answering, if the tracking data names one."""
        return parse_tracking_id(self.message.tracking_data)


def is_reply(data: dict[str, Any]) -> bool:
    """Whether a callback body is a user's reply: it has ``message_token`` and a ``message``
    object. A status update may carry a ``message`` string (an error text), so ``message``
    alone does not make a reply.

    >>> is_reply({"message_id": 7, "status": 2, "message": "Blocked"})
    False
    """
    return isinstance(data.get("message"), dict) and "message_token" in data


class StatusUpdate(BaseModel):
    """A delivery status callback; undocumented by the provider, so extra fields are kept.

    ``status`` may be a number outside ``MessageStatus``; the SMS fields come with Viber +
    SMS messages (PROVIDER_API.md).
    """

    model_config = ConfigDict(extra="allow")

    message_id: ProviderId
    status: DeliveryStatus
    sms_message_id: ProviderId | None = None
    sms_message_status: DeliveryStatus | None = None


class SendRequest(BaseModel):
    """The body of ``POST /send-viber``, with every limit of the provider checked."""

    model_config = ConfigDict(extra="forbid")

    source_addr: str = Field(min_length=1, max_length=20)
    destination_addr: Phone
    message_type: MessageType
    text: str = Field(min_length=1, max_length=1000)
    source_type: Literal[1, 2] = 1
    image: str | None = None
    button_caption: str | None = Field(default=None, min_length=1, max_length=30)
    button_action: str | None = None
    callback_url: str | None = None
    validity_period: int | None = Field(default=None, ge=40, le=21600)
    text_sms: str | None = None

    @field_validator("image", "button_caption")
    @classmethod
    def _rich_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Cross-field rules as field validators, so an error names the field (loc).
        if value is None:
            return value
        kind = info.data.get("message_type")
        if kind in (MessageType.TEXT, MessageType.TWO_WAY_TEXT):
            raise ValueError(f"needs message type 108 or 208, not {int(kind)}")
        if info.data.get("source_type") == 2:
            raise ValueError("transactional messages (source_type 2) carry text only")
        if info.field_name == "image":
            _require_url(value)
            # Only jpg/jpeg/png are accepted; a URL without a suffix can't be judged here.
            last = urlsplit(value).path.lower().rsplit("/", 1)[-1]
            if "." in last and not last.endswith(_IMAGE_SUFFIXES):
                raise ValueError("must be a .jpg, .jpeg or .png image URL")
        return value

    @field_validator("button_action", "callback_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return value if value is None else _require_url(value)

    @field_validator("text_sms")
    @classmethod
    def _sms(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        kind = info.data.get("message_type")
        if kind is not MessageType.TEXT or info.data.get("source_type") != 2:
            shown = int(kind) if kind is not None else "?"
            raise ValueError("an SMS fallback needs a transactional text message (type 106,"
                             f" source_type 2), not type {shown} with source_type"
                             f" {info.data.get('source_type')}")
        problem = sms_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _button_pair(self) -> SendRequest:
        if (self.button_caption is None) != (self.button_action is None):
            raise ValueError("button_caption and button_action go together")
        return self

    @classmethod
    def checked(cls, **fields: Any) -> SendRequest:
        """Build a request, turning the first broken limit into a ReplyLimitError.

        >>> SendRequest.checked(source_addr="Acme", destination_addr="380501112233",
        ...                     message_type=206, text="Hi").message_type
        <MessageType.TWO_WAY_TEXT: 206>
        """
        try:
            return cls(**fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "message"
            value = first.get("input") if first["loc"] else None
            limit = str(first["msg"]).removeprefix("Value error, ")
            raise ReplyLimitError(field, limit, value) from exc

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> SendRequest:
        """Validate a body as the provider receives it, where "not set" has several forms.

        The official SDKs send ``null``, ``""`` (image, button and callback fields) or
        ``validity_period: 0`` for a field they leave unset; the provider takes each as not
        given (PROVIDER_API.md). The Java SDK sends ``message_type`` and ``source_type`` as
        digit strings (``"106"``), taken as the numbers. Used by the fake provider.

        >>> SendRequest.from_wire({"source_addr": "Acme", "destination_addr": 380501112233,
        ...     "message_type": 206, "text": "Hi", "image": "", "validity_period": 0}).image
        """
        read = {k: _int_from_digits(v) if k in _NUMBERS else v for k, v in body.items()}
        return cls.model_validate({k: v for k, v in read.items() if not _unset(k, v)})


_BLANK_WHEN_UNSET = frozenset({"image", "button_caption", "button_action", "callback_url"})
_NUMBERS = frozenset({"message_type", "source_type", "validity_period"})


def _unset(key: str, value: Any) -> bool:
    if value is None:
        return True
    if key in _BLANK_WHEN_UNSET:
        return isinstance(value, str) and value == ""
    return key == "validity_period" and type(value) is int and value == 0


def _require_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http(s) URL")
    return value


class SendResult(BaseModel):
    """The answer to a successful send: ``{"message_id": 429}`` (or ``"429"``)."""

    model_config = ConfigDict(extra="ignore")

    message_id: ProviderId


class StatusResult(BaseModel):
    """The answer of ``POST /receive-viber``; ``status`` may be an undocumented number."""

    model_config = ConfigDict(extra="ignore")

    message_id: ProviderId
    status: DeliveryStatus
    sms_message_id: ProviderId | None = None
    sms_message_status: DeliveryStatus | None = None

    def update(self) -> StatusUpdate:
        """The same status as a ``StatusUpdate``, to record it like a status callback."""
        return StatusUpdate(message_id=self.message_id, status=self.status,
                            sms_message_id=self.sms_message_id,
                            sms_message_status=self.sms_message_status)


class ErrorBody(BaseModel):
    """The provider's error body: ``{"name", "message", "code", "status"}``; any may be missing."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    message: str | None = None
    code: int | None = None
    status: int | None = None

    @classmethod
    def parse(cls, data: Any) -> ErrorBody | None:
        """Return the error body in ``data``, or None if ``data`` is not one.

        The provider's SDKs treat a JSON object with any of ``name``, ``message``, ``code``
        and ``status`` (and no ``message_id``) as an error, even under HTTP 200, so this does
        too. A field of the wrong type (``"status": "bad"``) is left out; a number given as
        a string (``"status": "401"``) is read as the number.
        """
        if not isinstance(data, dict) or "message_id" in data:
            return None
        if not _ERROR_KEYS & data.keys():
            return None
        kept = {}
        for key in _ERROR_KEYS:
            try:
                kept.update(cls.model_validate({key: data.get(key)}).model_dump(include={key}))
            except ValidationError:
                continue
        return cls(**kept)


_ERROR_KEYS = frozenset({"name", "message", "code", "status"})
