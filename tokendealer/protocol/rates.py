"""A client's own rate limit, as every face writes and reads it: ``COUNT/UNIT`` or
``COUNT/N UNITs``, the syntax of ``TOKENDEALER_RATE_LIMIT`` (``settings.parse_rate``).

>>> rate_text(read_rate("5/60 seconds"))
'5/minute'
>>> rate_text(read_rate("1200/minute")), rate_text(read_rate("5/10seconds"))
('1200/minute', '5/10 seconds')
"""

from __future__ import annotations

from tokendealer.settings import ConfigError, Rate, parse_rate

#: What a client's own limit does: over it, a request is refused (429), or only recorded
#: (a log line and a metric) while the service-wide limit stays in force, so that an
#: operator can size a limit before enforcing it.
ENFORCE = "enforce"
MONITOR = "monitor"
RATE_LIMIT_MODES = (ENFORCE, MONITOR)

#: The longest rate text read (``1200/minute``; ``999999999/999999 seconds`` is 25).
MAX_RATE_TEXT = 40
_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def read_rate(text: str) -> Rate:
    """The rate ``text`` writes; ``ValueError`` with a one-line reason otherwise."""
    try:
        if len(text) > MAX_RATE_TEXT:
            raise ConfigError(text)
        return parse_rate(text, "rate")
    except ConfigError:
        shown = repr(text) if len(text) <= MAX_RATE_TEXT else repr(text[:MAX_RATE_TEXT]) + "..."
        raise ValueError(
            "a rate limit is COUNT/UNIT or COUNT/N UNITs, such as 1200/minute or "
            f"5/10 seconds (units: second, minute, hour, day), not {shown}"
        ) from None


def rate_text(rate: Rate) -> str:
    """``rate`` in its shortest spelling, which ``read_rate`` reads back: the largest unit
    that divides its period (``120/2 minutes``, not ``120/120 seconds``)."""
    period = float(rate.period)
    if period.is_integer():
        seconds = int(period)
        for unit, size in _UNITS:
            if seconds % size == 0:
                multiple = seconds // size
                per = unit if multiple == 1 else f"{multiple} {unit}s"
                return f"{rate.count}/{per}"
    return f"{rate.count}/{period:g} seconds"  # a period of a fraction of a second: code only
