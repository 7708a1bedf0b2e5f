"""Which language a conversation speaks when it starts. Pure.

A flow may set it (``turn.locale = "uk"`` after the user picks a language); a new
conversation guesses it from the phone's number: the longest prefix of ``by_prefix``
(``{"380": "uk"}``, the setting ``BOTKIT_LOCALES``) it starts with, else ``default``
(``BOTKIT_DEFAULT_LOCALE``). Templates then come from ``templates/<locale>/`` first
(docs/languages.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Locales"]


@dataclass(frozen=True)
class Locales:
    """The default locale and the ones guessed by number prefix.

    >>> Locales("en", {"380": "uk"}).guess("380501112233")
    'uk'
    """

    default: str = "en"
    by_prefix: Mapping[str, str] = field(default_factory=dict)

    def guess(self, phone: str) -> str:
        """The locale of a new conversation with ``phone``."""
        for n in range(len(phone), 0, -1) if self.by_prefix else ():
            found = self.by_prefix.get(phone[:n])
            if found is not None:
                return found
        return self.default
