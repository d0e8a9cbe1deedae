"""The log lines' timestamp (``tokendealer.log.add_timestamp``): ISO 8601 in UTC to the
microsecond, as ``datetime`` writes the same instant, whatever second the line before was
written in."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from tokendealer import log

INSTANTS = [
    1_764_789_021.718_677,  # a fraction
    1_764_789_021.000_000,  # a whole second: the microseconds are written all the same
    1_764_789_021.999_999,
    1_764_789_022.5,  # the next second
    1_764_789_021.25,  # back to an earlier second (another worker's clock, a step back)
    951_782_400.0,  # 2000-02-29
    0.0,
    -0.25,  # before 1970: the second before the epoch, and three quarters of it
]


def _expected(instant: float) -> str:
    stamp = datetime.fromtimestamp(instant, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_each_instant_is_written_as_datetime_writes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for instant in INSTANTS:
        clock = SimpleNamespace(time=lambda instant=instant: instant)
        clock.gmtime, clock.strftime = time.gmtime, time.strftime
        monkeypatch.setattr(log, "time", clock)
        event = log.add_timestamp(None, "info", {"event": "x"})
        written = event["timestamp"]
        expected = _expected(instant)
        # The same second exactly; the microseconds within one (datetime rounds, the
        # processor truncates the float's last bits).
        assert written[:20] == expected[:20], (instant, written, expected)
        assert abs(int(written[20:26]) - int(expected[20:26])) <= 1, (instant, written)
        assert written.endswith("Z") and len(written) == len("2026-12-03T19:10:21.718677Z")
