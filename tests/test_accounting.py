"""Delivery accounting over synthetic client event logs: loss is a count."""

import pandas as pd

from loadtests.accounting import delivery_report, subscription_intervals

COLS = ["t", "user", "user_class", "op", "outcome", "latency_ms", "attempt", "bytes",
        "channel", "msg_id", "peer", "intended_t", "policy"]


def rows(*events):
    out = []
    for t, user, op, outcome, channel, msg_id, peer, latency in events:
        out.append([t, user, "X", op, outcome, latency, 1, 0, channel, msg_id, peer, None, ""])
    return pd.DataFrame(out, columns=COLS)


def sub(t, user, channel):
    return (t, user, "subscribe", "ok", channel, "", "", 1.0)


def pub(t, user, channel, msg_id, latency=2.0):
    return (t, user, "publish", "ok", channel, msg_id, "", latency)


def got(t, user, channel, msg_id, publisher):
    return (t, user, "deliver", "message", channel, msg_id, publisher, 1.0)


def test_everything_delivered():
    df = rows(sub(1, "a", "c"), sub(1, "b", "room/*"), pub(5, "p", "room/x", "p:1"),
              got(5, "b", "room/x", "p:1", "p"), pub(6, "p", "c", "p:2"),
              got(6, "a", "c", "p:2", "p"))
    r = delivery_report(df)
    assert r.as_dict() == {"published": 2, "expected": 2, "delivered": 2, "lost": 0,
                           "duplicates": 0, "reordered": 0, "excluded": 0, "unexpected": 0}


def test_loss_duplicates_and_reordering_are_counted():
    df = rows(sub(1, "a", "c"), sub(1, "b", "c"),
              pub(5, "p", "c", "p:1"), pub(6, "p", "c", "p:2"),
              got(6, "a", "c", "p:2", "p"), got(6.1, "a", "c", "p:1", "p"),
              got(6.2, "a", "c", "p:1", "p"))
    r = delivery_report(df)
    assert (r.expected, r.delivered, r.lost, r.duplicates, r.reordered) == (4, 2, 2, 1, 1)


def test_the_publisher_is_not_owed_its_own_message():
    df = rows(sub(1, "p", "c"), pub(5, "p", "c", "p:1"))
    assert delivery_report(df).expected == 0


def test_subscriptions_changing_in_flight_are_excluded_not_lost():
    df = rows(sub(5.999, "late", "c"),  # acked between send (5.998) and ack (6)
              sub(1, "leaver", "c"), (6.5, "leaver", "close", "close 1001", "", "", "", None),
              pub(6, "p", "c", "p:1"))
    r = delivery_report(df)
    assert (r.expected, r.lost, r.excluded) == (0, 0, 2)


def test_a_subscriber_that_left_earlier_is_not_owed():
    df = rows(sub(1, "a", "c"), (2, "a", "unsubscribe", "ok", "c", "", "", 1.0),
              pub(10, "p", "c", "p:1"))
    assert delivery_report(df).as_dict()["expected"] == 0


def test_unexpected_deliveries_are_flagged():
    df = rows(pub(5, "p", "c", "p:1"), got(5, "stranger", "c", "p:1", "p"))
    assert delivery_report(df).unexpected == 1


def test_intervals_end_with_the_connection():
    df = rows(sub(1, "a", "x"), sub(2, "a", "y"),
              (3, "a", "disconnect", "client", "", "", "", None), sub(4, "a", "x"))
    iv = subscription_intervals(df)
    assert sorted(map(tuple, iv[["name", "start", "end"]].values.tolist())) == [
        ("x", 1, 3), ("x", 4, float("inf")), ("y", 2, 3)]
    assert sorted(iv.requested.tolist()) == [0.999, 1.999, 3.999]  # ack latency 1 ms


def test_deliveries_while_a_subscribe_is_in_flight_are_not_unexpected():
    # The subscribe was sent at 4, acked at 9 by a busy client; a message published at
    # 6 reached it: the server had registered the subscription, nobody owed it.
    df = rows((9, "slow", "subscribe", "ok", "c", "", "", 5000.0),
              pub(6, "p", "c", "p:1"), got(6.5, "slow", "c", "p:1", "p"))
    r = delivery_report(df)
    assert (r.expected, r.excluded, r.unexpected) == (0, 1, 0)


def test_window_edges_are_inclusive():
    # Sent and acked at 6 (no latency): owed to a subscription held from 6 until 7 (the
    # ack plus the 1 s grace), excluded for one that ended at 6 or was requested at 7.
    df = rows(sub(1, "ends_at_late", "c"), sub(1, "ends_at_sent", "c"),
              (6, "starts_at_sent", "subscribe", "ok", "c", "", "", 0.0),
              pub(6, "p", "c", "p:1", latency=0.0),
              (6, "ends_at_sent", "close", "close 1001", "", "", "", None),
              (7, "ends_at_late", "unsubscribe", "ok", "c", "", "", 0.0),
              (8, "requested_at_late", "subscribe", "ok", "c", "", "", 1000.0))
    r = delivery_report(df)
    assert (r.expected, r.excluded, r.lost) == (2, 2, 2)
