"""The phones of a campaign: ``PHONE`` arguments and CSV files, read as people write them.

``PhoneList.read`` normalises every number (``phones.read_phone``), keeps the first of
duplicates, and says for each rejected one where it was and why, so ``run.py start`` and
``run.py notify`` can report rejected lines and duplicates apart from skipped phones.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from botkit.errors import BotkitError
from botkit.phones import PhoneError, read_phone

__all__ = ["PhoneList"]


@dataclass
class PhoneList:
    """Phones in the order given (each once), the rejected ones with the reason, and how many
    duplicates were dropped.

    >>> phones = PhoneList.read(["+38 050 124 0002", "380501240002", "12ab"])
    >>> phones.phones, phones.duplicates, len(phones.rejected)
    (['380501240002'], 1, 1)
    """

    phones: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    duplicates: int = 0
    _seen: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def read(
        cls, arguments: Iterable[str], csv_file: Path | None = None, region: str | None = None
    ) -> PhoneList:
        """Read ``PHONE`` arguments, then the phones of ``csv_file``.

        Raises BotkitError when the file is missing or has no column of phones.
        """
        found = cls()
        for value in arguments:
            found._add(value, f"argument {value!r}", region)
        if csv_file is not None:
            found._read_csv(csv_file, region)
        return found

    def _add(self, value: str, where: str, region: str | None) -> None:
        try:
            phone = read_phone(value, region)
        except PhoneError as exc:
            self.rejected.append(f"{where}: {exc}")
            return
        if phone in self._seen:
            self.duplicates += 1
            return
        self._seen.add(phone)
        self.phones.append(phone)

    def _read_csv(self, path: Path, region: str | None) -> None:
        if not path.is_file():
            raise BotkitError(f"phones file {path} does not exist")
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
        header = [cell.strip().lower() for cell in rows[0]] if rows else []
        column, first = 0, 0
        if "phone" in header:
            column, first = header.index("phone"), 1
        elif header and not _readable(rows[0][0], region):
            shown = ", ".join(repr(c.strip()) for c in rows[0]) or "none"
            raise BotkitError(
                f"{path} has no 'phone' column (its first row: {shown}): name the column of"
                " phones 'phone', or put the phones in the first column with no header row")
        for line, row in enumerate(rows[first:], first + 1):
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            value = row[column] if len(row) > column else ""
            self._add(value, f"{path}:{line}: {value.strip()!r}", region)


def _readable(value: str, region: str | None) -> bool:
    try:
        read_phone(value, region)
    except PhoneError:
        return False
    return True
