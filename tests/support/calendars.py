"""Hand-computed cases need exact instants: UTC and Moscow constructors and the Moscow test site."""

from __future__ import annotations

import datetime as dt

from services.callback.domain.calendar import SiteCalendar, TimeRange

UTC = dt.UTC
MSK = dt.timezone(dt.timedelta(hours=3))  # Europe/Moscow has had no DST since 2014


def utc(  # noqa: PLR0917 - mirrors datetime()
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def msk(  # noqa: PLR0917 - mirrors datetime()
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=MSK).astimezone(UTC)


WEEKDAY_HOURS = [TimeRange.parse("09:00", "18:00")]
# Mon-Fri 09:00-18:00, Sat 10:00-15:00, closed for the 2027 New Year holidays (1-8 January).
MOSCOW_SITE = SiteCalendar(
    tz="Europe/Moscow",
    weekly=dict.fromkeys(range(5), WEEKDAY_HOURS) | {5: [TimeRange.parse("10:00", "15:00")]},
    holidays=frozenset(dt.date(2027, 1, day) for day in range(1, 9)),
)
