"""The per-connection token bucket, in virtual time."""

from hypothesis import given
from hypothesis import strategies as st

from server.tokenbucket import TokenBucket


def test_burst_then_empty():
    bucket = TokenBucket(rate=100, burst=200, now=0.0)
    assert all(bucket.take(0.0) for _ in range(200))
    assert not bucket.take(0.0)


def test_refills_at_rate():
    bucket = TokenBucket(rate=100, burst=200, now=0.0)
    for _ in range(200):
        bucket.take(0.0)
    assert not bucket.take(0.0)
    # 10 ms at 100/s is exactly one token.
    assert bucket.take(0.01)
    assert not bucket.take(0.01)


def test_never_holds_more_than_burst():
    bucket = TokenBucket(rate=100, burst=200, now=0.0)
    taken = sum(bucket.take(3600.0) for _ in range(500))
    assert taken == 200


def test_sustained_rate_is_respected():
    bucket = TokenBucket(rate=100, burst=200, now=0.0)
    # One frame each millisecond for 10 s: 1000/s offered, 100/s sustained + 200 burst.
    taken = sum(bucket.take(i / 1000) for i in range(10_000))
    # 200 burst + 999.9 refilled over 9.999 s; float rounding decides the last token.
    assert 1199 <= taken <= 1200


@given(st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=200))
def test_admitted_never_exceeds_burst_plus_rate_times_time(gaps):
    bucket = TokenBucket(rate=50, burst=20, now=0.0)
    now, taken = 0.0, 0
    for gap in gaps:
        now += gap
        taken += bucket.take(now)
    assert taken <= 20 + 50 * now + 1e-6
