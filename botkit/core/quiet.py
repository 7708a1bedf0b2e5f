"""Quiet hours: when a message the bot starts may reach a phone. Pure (the clock is passed).

A proactive message (a campaign's, a reminder, a timeout's or an expiry's, a notice) due in
the phone's local night waits for the night to end; a reply to the user's own message never
waits (docs/consent.md). The phone's time zone comes from its number: ``zones`` (prefixes of
the international number, the longest that matches winning; ``*`` for a number of no known
zone) first, then Google's ``phonenumbers``. A number whose country spans several zones
(``+7`` mobiles span eleven) is quiet while it is night in any of them, unless ``zones``
names one: its message waits for the hours that are day in all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from functools import cache, lru_cache
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE
from phonenumbers import timezone as number_zones
from phonenumbers.tzdata import TIMEZONE_DATA

__all__ = ["QuietHours", "zones_of"]

_UNKNOWN = "Etc/Unknown"  # what phonenumbers answers for a number of no known zone
# A search for the day that all of a number's zones share gives up after this many steps
# (their days do not overlap at all): the first zone's day is used then.
_STEPS = 16


@cache
def _one_zone_countries() -> dict[str, str]:
    """Calling code -> the zone of every number of it, for the countries of one zone (183 of
    them, Ukraine's among them): their numbers need no parsing (20 us each, a campaign's
    phones are all different)."""
    zones: dict[str, set[str]] = {str(code): set() for code in COUNTRY_CODE_TO_REGION_CODE}
    for prefix, names in TIMEZONE_DATA.items():
        for code in (prefix[:1], prefix[:2], prefix[:3]):
            if code in zones:
                zones[code].update(names)
                break
    return {code: next(iter(names)) for code, names in zones.items()
            if len(names) == 1 and _UNKNOWN not in names}


def _zones_of_number(phone: str) -> tuple[str, ...]:
    countries = _one_zone_countries()
    for code in (phone[:1], phone[:2], phone[:3]):
        if code in countries:
            return (countries[code],)
    return _parsed_zones(phone)


@lru_cache(maxsize=65536)
def _parsed_zones(phone: str) -> tuple[str, ...]:
    try:
        number = phonenumbers.parse("+" + phone)
    except phonenumbers.NumberParseException:
        return ()
    return tuple(z for z in number_zones.time_zones_for_number(number) if z != _UNKNOWN)


def zones_of(phone: str, zones: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The time zones a phone may be in: the longest prefix of ``zones`` that it starts with,
    else the ones ``phonenumbers`` knows, else ``zones["*"]``, else UTC.

    >>> zones_of("380501240002"), zones_of("79161234567", {"7": "Europe/Moscow"})
    (('Europe/Kyiv',), ('Europe/Moscow',))
    """
    zones = zones or {}
    for n in range(len(phone), 0, -1) if zones else ():
        if phone[:n] in zones:
            return (zones[phone[:n]],)
    return _zones_of_number(phone) or (zones.get("*", "UTC"),)


@dataclass(frozen=True)
class QuietHours:
    """The local night in which no proactive message is sent: ``start`` to ``end`` (the
    default 21:00-09:00 spans midnight; a window within one day, 13:00-14:00, works too).

    >>> QuietHours().opens_at("380501240002", 1800000000.0)  # 10:00 in Kyiv: None, now
    """

    start: time = time(21)
    end: time = time(9)
    zones: Mapping[str, str] = field(default_factory=dict)

    def opens_at(self, phone: str, now: float) -> float | None:
        """None when a proactive message may reach ``phone`` at ``now``; else the first
        moment (a Unix time) after which it may."""
        opening = _opening(zones_of(phone, self.zones), self.start, self.end, now)
        return None if opening == now else opening


@lru_cache(maxsize=4096)
def _opening(zones: tuple[str, ...], start: time, end: time, now: float) -> float:
    """The first moment from ``now`` at which it is day in every zone of ``zones``.

    A campaign asks for many phones at one ``now``, and most share their zones: cached.
    """
    at = now
    for _ in range(_STEPS):
        later = max(_day_from(ZoneInfo(z), start, end, at) for z in zones)
        if later == at:
            return at
        at = later
    return _day_from(ZoneInfo(zones[0]), start, end, now)


def _day_from(zone: ZoneInfo, start: time, end: time, at: float) -> float:
    """``at`` if it is day in ``zone`` then, else when the night that holds it ends."""
    local = datetime.fromtimestamp(at, zone)
    clock = local.time().replace(tzinfo=None)
    if start > end:  # the night spans midnight
        if end <= clock < start:
            return at
        day = local.date() + (timedelta(days=1) if clock >= start else timedelta())
    else:
        if not start <= clock < end:
            return at
        day = local.date()
    return max(at, datetime.combine(day, end, tzinfo=zone).timestamp())
