"""Every error botkit raises, in one hierarchy.

    BotkitError
    ├── DefinitionError          the bot is written wrong (flow, step, template)
    │   └── UnknownStepError     ask()/switch() named a step or flow that does not exist
    ├── FlowError                a handler used the Turn wrongly (e.g. ended a turn twice)
    ├── ConfigError              a setting is missing or malformed (names the env var)
    ├── ReplyLimitError          a reply breaks a provider limit (field, limit, value)
    ├── SchemaTooNewError        the database was migrated by a newer botkit
    ├── StoreUnavailableError    the database cannot be reached (callbacks answer 503)
    ├── ConcurrentUpdateError    a conversation changed under a turn (the turn is re-run)
    │   └── TimerTakenError      another process fired, skipped or cancelled the timer
    ├── DuplicateMessageError    a user message was already handled (its turn is dropped)
    ├── UserExistsError          a console user of that name exists already
    └── ProviderError            the provider refused or failed a request
        ├── RateLimitedError         429 (code 0 alone too)   (retryable)
        ├── ProviderUnavailableError 5xx, code 2, timeouts    (retryable)
        ├── InvalidParameterError    400, code 1              (do not retry)
        ├── UnauthorizedError        401, bad access key      (operator must act)
        └── BalanceError             402, code 3              (operator must act)

    Any other refusal (404, 405, another 4xx) is a plain ProviderError: not retried.
"""

from __future__ import annotations

from typing import Any


class BotkitError(Exception):
    """Base class of every error botkit raises."""


class DefinitionError(BotkitError):
    """A bot definition is wrong: the message names the flow, step or template to fix."""


class UnknownStepError(DefinitionError):
    """A handler referred to a step or flow that does not exist."""


class FlowError(BotkitError):
    """A handler used its Turn in a way the flow model does not allow."""


class ConfigError(BotkitError):
    """A setting is missing or malformed; the message names the variable and the accepted form."""


class SchemaTooNewError(BotkitError):
    """The database holds migrations this version of botkit does not know."""


class StoreUnavailableError(BotkitError):
    """The database cannot be reached (down, cut off, or no connection free in time).

    Nothing was stored: a callback is answered 503, so the provider sends it again.
    """


class ConcurrentUpdateError(BotkitError):
    """A conversation was changed by another writer while a turn was computed."""


class TimerTakenError(ConcurrentUpdateError):
    """The timer being fired is no longer pending: it fires once, elsewhere or not at all."""


class DuplicateMessageError(BotkitError):
    """The message (by ``message_token``) was handled before: this turn is rolled back."""


class UserExistsError(BotkitError):
    """A console user of that name exists already."""


class ReplyLimitError(BotkitError):
    """A reply breaks one of the provider's limits; raised when the reply is made, not sent."""

    def __init__(self, field: str, limit: str, value: Any) -> None:
        self.field = field
        self.limit = limit
        self.value = value
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        got = f" (got {shown})" if value is not None else ""
        super().__init__(f"{field}: {limit}{got}")


class ProviderError(BotkitError):
    """The provider answered with an error, or could not be reached.

    Carries what the provider said: ``status`` (HTTP status, or the body's ``status``),
    ``code`` (the provider's error code, when given), ``name`` and ``retryable``.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.name = name

    @property
    def reason(self) -> str:
        """A one-line description for logs and the outbox's error column."""
        parts = [p for p in (self.name, str(self)) if p]
        head = f"HTTP {self.status}" if self.status is not None else "no answer"
        return f"{head}: " + " - ".join(dict.fromkeys(parts))


class RateLimitedError(ProviderError):
    """The provider's rate limit was hit (status 429, or code 0 with no status): retry later."""

    retryable = True


class ProviderUnavailableError(ProviderError):
    """A server error (5xx, code 2), a timeout or a network failure: retry with backoff."""

    retryable = True


class InvalidParameterError(ProviderError):
    """The provider rejected a parameter (400, code 1): retrying cannot help."""


class UnauthorizedError(ProviderError):
    """The access key was refused (401): the operator must fix ``BOTKIT_API_KEY``."""


class BalanceError(ProviderError):
    """The account balance is empty (402, code 3): the operator must top it up."""
