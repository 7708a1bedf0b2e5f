"""Phone numbers as people write them (``+38 050 124 0002``, ``(050) 124 0002``), read with
Google's ``phonenumbers`` into the one spelling botkit stores: E.164 digits, no ``+``.

Used where a person types a phone: the command line, phone CSVs and the sandbox chat. The
provider's callbacks stay strict (``models.Phone``): it sends digits only.
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import NumberParseException, ValidationResult

from botkit.errors import BotkitError

__all__ = ["PhoneError", "check_region", "read_phone"]

MAX_DIGITS = 20  # the provider's limit on destination_addr (PROVIDER_API.md)

_PARSE = {
    NumberParseException.INVALID_COUNTRY_CODE: "no country has that calling code",
    NumberParseException.NOT_A_NUMBER: "not a phone number (digits, spaces, +, - and brackets)",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: f"too long (at most {MAX_DIGITS} digits)",
}
_POSSIBLE = {
    ValidationResult.INVALID_COUNTRY_CODE: "no country has that calling code",
    ValidationResult.TOO_SHORT: "too short for its country",
    ValidationResult.TOO_LONG: "too long for its country",
    ValidationResult.INVALID_LENGTH: "the wrong number of digits for its country",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "a local number: add the area code",
}


class PhoneError(BotkitError, ValueError):
    """A phone number that cannot be read; the message says why."""


def read_phone(text: str, region: str | None = None) -> str:
    """The E.164 digits of a phone number as a person writes it, or PhoneError saying why.

    Without ``region`` a number must be international (with or without ``+``); with one
    (``"UA"``), a national number such as ``(050) 124 0002`` is read in that country.

    >>> read_phone("+38 050 124 0002"), read_phone("(050) 124-0002", "UA")
    ('380501240002', '380501240002')
    """
    written = text.strip()
    if not written:
        raise PhoneError("it is empty")
    digits = sum(c.isdigit() for c in written)
    if digits > MAX_DIGITS:
        raise PhoneError(f"too long ({digits} digits, at most {MAX_DIGITS})")
    international = written.startswith("+") or region is None
    try:
        number = phonenumbers.parse(
            written if written.startswith("+") or not international else "+" + written,
            None if international else region)
    except NumberParseException as exc:
        raise PhoneError(_PARSE.get(exc.error_type, str(exc))) from None
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason != ValidationResult.IS_POSSIBLE:
        raise PhoneError(_POSSIBLE.get(reason, "not a possible phone number"))
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]


def check_region(region: str) -> str:
    """``region`` in upper case if ``phonenumbers`` knows it as a country, else ValueError.

    >>> check_region("ua")
    'UA'
    """
    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"{region!r} is not a two-letter country code (ISO 3166, e.g. UA)")
    return code
