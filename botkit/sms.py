"""The length rule of an SMS fallback text (``text_sms``, PROVIDER_API.md "Viber + SMS").

One SMS holds 160 characters of the GSM 03.38 alphabet (GSM-7), where each character of its
extension table (``^{}\\[~]|€`` and form feed) takes two places, or 70 UTF-16 code units
when the text needs any character outside that alphabet (UCS-2). ``sms_problem`` says which
rule a text breaks, in words a bot author can act on, before the message is sent.
"""

from __future__ import annotations

__all__ = ["GSM7_LIMIT", "UCS2_LIMIT", "gsm7_length", "sms_problem"]

GSM7_LIMIT = 160
UCS2_LIMIT = 70

# GSM 03.38 basic character set (the escape character 0x1B left out: it is no text).
_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_EXTENSION = frozenset("^{}\\[~]|€\f")


def gsm7_length(text: str) -> int | None:
    """Places ``text`` takes in GSM-7 (extension characters count twice), or None if some
    character is not in the GSM-7 alphabet.

    >>> gsm7_length("Order #12 {shipped}")
    21
    >>> gsm7_length("Замовлення") is None
    True
    """
    length = 0
    for char in text:
        if char in _BASIC:
            length += 1
        elif char in _EXTENSION:
            length += 2
        else:
            return None
    return length


def sms_problem(text: str) -> str | None:
    """Why ``text`` does not fit in one SMS, or None when it does.

    >>> sms_problem("x" * 161)
    'at most 160 GSM-7 characters in one SMS, got 161'
    """
    if not text:
        return "must not be empty"
    septets = gsm7_length(text)
    if septets is not None:
        if septets > GSM7_LIMIT:
            return f"at most {GSM7_LIMIT} GSM-7 characters in one SMS, got {septets}"
        return None
    units = len(text.encode("utf-16-le")) // 2
    if units > UCS2_LIMIT:
        first = next(c for c in text if c not in _BASIC and c not in _EXTENSION)
        return (f"at most {UCS2_LIMIT} characters in one SMS when the text needs UCS-2"
                f" (it has {first!r}, which GSM-7 lacks), got {units}")
    return None
