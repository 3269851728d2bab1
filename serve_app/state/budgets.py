"""Token budgets: how many tokens a key may spend per period (a UTC day, ISO week or calendar
month, or fixed windows of a duration counted from the Unix epoch). The state actor charges a
budget when it leases tokens (serve_app/state/rate_limiter.py) and refunds what a lease gives
back, so a budget holds across ingress replicas as TPM does; the spending is written through to
the key store, so it survives restarts."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable

PERIODS = ("day", "week", "month")
PERIOD_PATTERN = r"^(day|week|month|[1-9][0-9]{0,5}[mhd])$"  # anchored for JSON Schema
_DURATION = re.compile(r"([1-9][0-9]{0,5})([mhd])")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400}


def check_period(period: str) -> str:
    """`period` when it is day, week, month or a duration in whole minutes, hours or days (90m, 12h, 30d)."""
    if period not in PERIODS and _DURATION.fullmatch(period) is None:
        raise ValueError(f"budget_period must be day, week, month or a duration such as 12h or 30d, not {period!r}")
    return period


def period_bounds(period: str, now: float) -> tuple[float, float]:
    """[start, end) of the period holding the Unix time `now`."""
    if period not in PERIODS:
        match = _DURATION.fullmatch(period)
        assert match is not None, period
        length = int(match.group(1)) * _UNIT_S[match.group(2)]
        start = now // length * length
        return start, start + length
    day = datetime.datetime.fromtimestamp(now, datetime.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end = day, day + datetime.timedelta(days=1)
    elif period == "week":
        start = day - datetime.timedelta(days=day.weekday())
        end = start + datetime.timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = (start + datetime.timedelta(days=32)).replace(day=1)
    return start.timestamp(), end.timestamp()


class BudgetBook:
    """Tokens spent per (key, period start), in memory and written through by `save(key_id,
    period_start, spent)`; `load(key_id, period_start)` reads a period not seen since a restart."""

    def __init__(self, load: Callable[[str, float], int], save: Callable[[str, float, int], None],
                 wall: Callable[[], float]):
        self._load, self._save, self._wall = load, save, wall
        self._spent: dict[tuple[str, float], int] = {}

    def left(self, key_id: str, budget: int, period: str) -> tuple[int, float, float]:
        """(tokens left, the period's start, seconds until it resets)."""
        now = self._wall()
        start, end = period_bounds(period, now)
        return max(0, budget - self._spent_in(key_id, start)), start, end - now

    def charge(self, key_id: str, period_start: float, tokens: int) -> None:
        """Spend `tokens` of the period that starts at `period_start` (negative: a refund)."""
        spent = max(0, self._spent_in(key_id, period_start) + tokens)
        self._spent[(key_id, period_start)] = spent
        self._save(key_id, period_start, spent)

    def spent(self, key_id: str, period: str) -> int:
        return self._spent_in(key_id, period_bounds(period, self._wall())[0])

    def _spent_in(self, key_id: str, start: float) -> int:
        if (key_id, start) not in self._spent:
            self._spent[(key_id, start)] = self._load(key_id, start)
        return self._spent[(key_id, start)]
