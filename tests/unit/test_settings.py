"""Settings.from_env: the intervals that tests and operators shrink."""

from __future__ import annotations

import pytest

from tokendealer.settings import ConfigError, Settings

INTERVALS = {
    "TOKENDEALER_DATABASE_RETRY_INTERVAL": "database_retry_interval",
    "TOKENDEALER_READINESS_CACHE": "readiness_cache",
    "TOKENDEALER_KEY_WATCH_INTERVAL": "key_watch_interval",
    "TOKENDEALER_RATE_LIMIT_RETRY_INTERVAL": "rate_limit_retry_interval",
}


@pytest.mark.parametrize(("variable", "field"), INTERVALS.items())
def test_interval_defaults_to_the_field_and_takes_decimals(variable: str, field: str) -> None:
    assert getattr(Settings.from_env({}), field) == getattr(Settings(), field) == 1.0
    assert getattr(Settings.from_env({variable: "0.05"}), field) == 0.05
    assert getattr(Settings.from_env({variable: "60"}), field) == 60.0


@pytest.mark.parametrize("variable", INTERVALS)
@pytest.mark.parametrize("raw", ["0", "-1", "soon", "61", "1e3"])
def test_bad_interval_is_a_config_error_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: raw})
    assert variable in str(caught.value)
    assert "\n" not in str(caught.value)


def test_observability_and_shutdown_settings() -> None:
    defaults = Settings.from_env({})
    assert defaults.metrics is True
    assert (defaults.shutdown_delay, defaults.shutdown_timeout) == (0.0, 10.0)
    read = Settings.from_env(
        {
            "TOKENDEALER_METRICS": "false",
            "TOKENDEALER_SHUTDOWN_DELAY": "2.5",
            "TOKENDEALER_SHUTDOWN_TIMEOUT": "0.5",
        }
    )
    assert (read.metrics, read.shutdown_delay, read.shutdown_timeout) == (False, 2.5, 0.5)
    assert Settings.from_env({"TOKENDEALER_SHUTDOWN_DELAY": "0"}).shutdown_delay == 0


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("TOKENDEALER_SHUTDOWN_DELAY", "-1"),
        ("TOKENDEALER_SHUTDOWN_DELAY", "301"),
        ("TOKENDEALER_SHUTDOWN_TIMEOUT", "0"),
        ("TOKENDEALER_METRICS", "maybe"),
    ],
)
def test_bad_observability_setting_names_its_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: raw})


def test_signing_threads_setting() -> None:
    assert Settings.from_env({}).signing_threads == 0
    assert Settings.from_env({"TOKENDEALER_SIGNING_THREADS": "2"}).signing_threads == 2
    for raw in ("-1", "two", "65"):
        with pytest.raises(ConfigError, match="TOKENDEALER_SIGNING_THREADS"):
            Settings.from_env({"TOKENDEALER_SIGNING_THREADS": raw})


def test_event_loop_setting() -> None:
    assert Settings.from_env({}).event_loop == "asyncio"
    assert Settings.from_env({"TOKENDEALER_EVENT_LOOP": " UVLoop "}).event_loop == "uvloop"
    with pytest.raises(ConfigError, match="TOKENDEALER_EVENT_LOOP must be uvloop or asyncio"):
        Settings.from_env({"TOKENDEALER_EVENT_LOOP": "trio"})
