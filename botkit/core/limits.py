"""Per-phone limits on what the bot starts: how many messages in a row a phone gets without
writing back, and how many proactive ones in 24 hours. Pure: the store counts
(``PhoneCounts``), these rules say what may still go.

Only proactive messages are refused (a campaign's, a timer's, a notice): a reply to the
user's own message is never limited, and it is what resets the first count. A refused
message is stored ``refused`` with its reason and never sent; nothing retries it, so a limit
cannot start a loop (docs/consent.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from botkit.core.records import OutboxItem, PhoneCounts

__all__ = ["LIMIT", "Limits"]

LIMIT = "limit: "  # how the reason of every refusal by a limit begins


@dataclass(frozen=True)
class Limits:
    """``unanswered``: the most bot messages in a row without a reply; ``per_day``: the most
    proactive messages in 24 hours. 0 turns a limit off.

    >>> Limits(5, 10).allowance(PhoneCounts(unanswered=5, proactive=1))
    (0, 'limit: 5 messages in a row without a reply (BOTKIT_MAX_UNANSWERED)')
    """

    unanswered: int = 5
    per_day: int = 10

    def allowance(self, counts: PhoneCounts) -> tuple[int | None, str | None]:
        """How many more proactive messages may go to the phone (None: any number), and
        the reason of the limit that binds first (None when none does)."""
        left: list[tuple[int, str]] = []
        if self.unanswered:
            left.append((self.unanswered - counts.unanswered,
                         (f"{LIMIT}{self.unanswered} messages in a row without a reply"
                          " (BOTKIT_MAX_UNANSWERED)")))
        if self.per_day:
            left.append((self.per_day - counts.proactive,
                         (f"{LIMIT}{self.per_day} proactive messages in 24 hours"
                          " (BOTKIT_MAX_PROACTIVE_PER_DAY)")))
        if not left:
            return None, None
        n, reason = min(left, key=lambda pair: pair[0])
        return max(0, n), reason

    def apply(self, items: Iterable[OutboxItem], counts: PhoneCounts) -> tuple[OutboxItem, ...]:
        """``items`` marked proactive, those beyond the allowance refused with the reason."""
        allowed, reason = self.allowance(counts)
        return tuple(replace(item, proactive=True,
                             refused=reason if allowed is not None and n >= allowed else None)
                     for n, item in enumerate(items))
