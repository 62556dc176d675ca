"""Property tests of the API key format (auth.keys.parse_key): any bearer token is a
key's (id, secret) or None (then it may be a JWT), and a new key parses back."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from llm_gateway.auth.keys import PREFIX, new_key, parse_key

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)
tokens = st.text() | st.lists(st.sampled_from([PREFIX, "-", "x", "", "\x00", "é"])).map("".join)


@FUZZ
@given(tokens)
@example(f"{PREFIX}--")
@example(f"{PREFIX}-id-")
@example(f"{PREFIX}-id-se-cret")
def test_a_token_is_a_key_or_none(token: str) -> None:
    parsed = parse_key(token)
    if parsed is None:
        return
    key_id, secret = parsed
    assert key_id and secret and "-" not in key_id
    assert token == f"{PREFIX}-{key_id}-{secret}"


def test_a_new_key_parses_back_to_its_id_and_secret() -> None:
    for _ in range(20):
        key_id, secret, full = new_key()
        assert parse_key(full) == (key_id, secret)
