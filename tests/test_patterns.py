"""Channel-name validation and glob patterns (PROTOCOL.md section 3)."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.patterns import (
    channel_problem,
    is_reserved,
    is_wildcard,
    match_channel,
    peer_id_problem,
    unescape,
)


@pytest.mark.parametrize(("pattern", "channel", "expected"), [
    ("**", "a/b/c", True),
    ("*", "abc", True),
    ("*", "a/b", False),
    ("*", "", True),
    ("room/*", "room/1", True),
    ("room/*", "room/", True),
    ("room/*", "room/1/2", False),
    ("room/**", "room/1/2", True),
    ("room/**", "room", False),
    ("a*b", "ab", True),
    ("a*b", "axxb", True),
    ("a*b", "ax/xb", False),
    ("a**b", "ax/xb", True),
    (r"a\*b", "a*b", True),
    (r"a\*b", "axb", False),
    (r"a\\b", "a\\b", True),
    (r"a\\*", "a\\xyz", True),
    ("public/*", "public/*", True),
    ("a.b", "axb", False),  # regex metacharacters are literal
    ("a+", "a+", True),
    ("Room/*", "room/1", False),  # case-sensitive
])
def test_match_channel(pattern, channel, expected):
    assert match_channel(pattern, channel) is expected


@pytest.mark.parametrize(("name", "expected"), [
    ("room/1", False), ("room/*", True), ("**", True), (r"a\*b", False), (r"a\\*", True),
])
def test_is_wildcard(name, expected):
    assert is_wildcard(name) is expected


def test_unescape_gives_the_concrete_channel():
    assert unescape(r"a\*b\\c") == "a*b\\c"
    assert unescape("plain") == "plain"


@pytest.mark.parametrize(("channel", "reserved"), [
    ("_metered/x", True), ("_INTERNAL/x", True), ("_System/a/b", True),
    ("_metered", False), ("metered/x", False), ("x/_system/y", False), ("_other/x", False),
])
def test_is_reserved(channel, reserved):
    assert is_reserved(channel) is reserved


@pytest.mark.parametrize(("channel", "problem"), [
    (None, "channel is missing"),
    (5, "channel must be a string"),
    ("", "channel is empty"),
    ("x" * 257, "channel is longer than 256 bytes"),
    ("é" * 129, "channel is longer than 256 bytes"),  # 258 bytes in UTF-8
    ("a\x00b", "channel contains control characters"),
    ("a\x7fb", "channel contains control characters"),
    ("a\x85b", "channel contains control characters"),
    ("x" * 256, None),
    ("é" * 128, None),
    ("room/ünïcode ✓", None),
])
def test_channel_problem(channel, problem):
    assert channel_problem(channel) == problem


@pytest.mark.parametrize(("peer", "problem"), [
    (None, "peerId is missing"), ("", "peerId is empty"),
    ("x" * 129, "peerId is longer than 128 bytes"),
    ("é", "peerId must be printable ASCII"), ("a\tb", "peerId must be printable ASCII"),
    ("x" * 128, None), ("user-1@example.com", None), ("a b", None),
])
def test_peer_id_problem(peer, problem):
    assert peer_id_problem(peer) == problem


literal = st.text(alphabet=st.characters(blacklist_characters="*\\", codec="utf-8"), max_size=12)


@given(literal)
def test_a_pattern_without_wildcards_matches_only_itself(text):
    assert match_channel(text, text)
    assert not match_channel(text, text + "x")


@given(st.lists(literal, min_size=1, max_size=4))
def test_double_star_matches_any_join(parts):
    assert match_channel("**", "/".join(parts))
    assert match_channel(parts[0] + "**", "/".join(parts))


@given(literal.filter(lambda s: "/" not in s), literal.filter(lambda s: "/" not in s))
def test_single_star_never_crosses_a_slash(a, b):
    assert match_channel("*", a)
    assert not match_channel("*", f"{a}/{b}")


@given(st.text(alphabet="ab/*\\", max_size=10), st.text(alphabet="ab/*\\", max_size=10))
def test_matches_a_reference_translation(pattern, channel):
    """Cross-check against an independent, character-by-character glob translation."""
    out, i = [], 0
    while i < len(pattern):
        two = pattern[i:i + 2]
        if two in ("\\*", "\\\\"):
            out.append(re.escape(two[1]))
            i += 2
        elif two == "**":
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    expected = re.fullmatch("".join(out), channel, re.DOTALL) is not None
    assert match_channel(pattern, channel) is expected
