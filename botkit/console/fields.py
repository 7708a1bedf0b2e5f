"""What the console's forms are read into, or a FieldError naming the field to fix."""

from __future__ import annotations

import datetime as dt

__all__ = ["FieldError", "day_range"]


class FieldError(Exception):
    """A form's field that cannot be read: the message starts with the field's name."""


def day_range(first: str, last: str) -> tuple[float | None, float | None]:
    """``[since, until)`` in unix seconds from two ``YYYY-MM-DD`` days, both included, in the
    server's local time; None where a day is not given."""
    since = _day(first, "from").timestamp() if first else None
    until = (_day(last, "to") + dt.timedelta(days=1)).timestamp() if last else None
    if since is not None and until is not None and until <= since:
        raise FieldError("to: the last day comes before the first")
    return since, until


def _day(text: str, field: str) -> dt.datetime:
    """Midnight (the server's local time) of a ``YYYY-MM-DD`` day."""
    try:
        return dt.datetime.combine(dt.date.fromisoformat(text), dt.time()).astimezone()
    except ValueError:
        raise FieldError(f"{field}: {text!r} is not a date (YYYY-MM-DD)") from None
