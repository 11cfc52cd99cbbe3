"""Quarterly delivery calendar: last Friday of Mar/Jun/Sep/Dec at 08:00 UTC."""
import calendar
from datetime import datetime, time, timedelta, timezone

QUARTER_MONTHS = (3, 6, 9, 12)
DELIVERY_TIME_OF_DAY = time(8, 0, tzinfo=timezone.utc)


def last_friday(year: int, month: int) -> datetime:
    last_day = calendar.monthrange(year, month)[1]
    day = datetime(year, month, last_day, tzinfo=timezone.utc)
    day -= timedelta(days=(day.weekday() - calendar.FRIDAY) % 7)
    return datetime.combine(day.date(), DELIVERY_TIME_OF_DAY)


def quarterly_expiries_after(moment: datetime, count: int = 2) -> list[datetime]:
    """The next `count` quarterly delivery times strictly after `moment`."""
    result: list[datetime] = []
    year = moment.year
    while len(result) < count:
        for month in QUARTER_MONTHS:
            expiry = last_friday(year, month)
            if expiry > moment and len(result) < count:
                result.append(expiry)
        year += 1
    return result


def delivery_symbol(base_symbol: str, expiry: datetime) -> str:
    return f"{base_symbol}_{expiry:%y%m%d}"
