"""Property tests of the statistics routes' time parameters (stats.parse_time): any
string is a finite time in epoch seconds or an InvalidRequest naming the parameter."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from hypothesis import example, given, settings
from hypothesis import strategies as st

from llm_gateway.api.manage.stats import parse_time
from llm_gateway.errors import InvalidRequest

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)
NOW = 1_750_000_000.0
times = (
    st.text(max_size=30)
    | st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**400), st.sampled_from("smhdwx"))
    | st.datetimes(timezones=st.none() | st.timezones()).map(datetime.isoformat)
    | st.floats().map(str)
)


@FUZZ
@given(times)
@example("nan")
@example("-inf")
@example("1e999")
@example("9" * 400 + "h")
@example("0001-01-01T00:00:00+14:00")
def test_a_time_is_finite_epoch_seconds_or_a_typed_error(value: str) -> None:
    try:
        seconds = parse_time(value, "since", NOW)
    except InvalidRequest as exc:
        seconds = NOW if exc.param == "since" else math.nan
    assert math.isfinite(seconds)


@FUZZ
@given(st.datetimes(timezones=st.timezones()), st.sampled_from(["", " "]))
def test_an_iso_time_with_a_zone_is_its_epoch_seconds(when: datetime, pad: str) -> None:
    text = pad + when.isoformat().replace("+00:00", "Z") + pad
    assert parse_time(text, "until", NOW) == when.astimezone(UTC).timestamp()
