"""What a client knows of its connection (`ClientState`): the view a behaviour reads,
kept by the protocol client on real sockets and by the virtual engine."""

from __future__ import annotations

from loadtests.clientstate import ACK_CHANGES_STATE, ClientState


def test_presence_frames_keep_the_peers_present():
    state = ClientState()
    state.on_frame({"type": "presence", "channel": "c", "joined": [{"peerId": "a"},
                                                                   {"peerId": "b"}]})
    state.on_frame({"type": "presence", "channel": "c", "left": [{"peerId": "a"}]})
    assert state.peers == {"c": {"b"}}


def test_going_away_keeps_its_hint_until_the_next_connect():
    state = ClientState()
    state.on_frame({"type": "going_away", "retryAfterMs": 1500})
    assert state.going_away_ms == 1500
    state.connecting()
    assert state.going_away_ms is None


def test_acks_of_subscribe_and_unsubscribe_keep_the_subscriptions():
    state = ClientState()
    state.acked("subscribe", "a", 1.0)
    state.acked("subscribe", "b", 2.0)
    state.acked("publish", "c", 3.0)
    state.acked("unsubscribe", "a", 4.0)
    assert state.subscriptions == {"b": 2.0}


def test_the_first_close_code_is_kept_and_a_connect_forgets_it():
    state = ClientState("tok")
    state.opened()
    assert state.is_open
    assert state.closed(4011) is True and state.closed(1006) is False
    assert (state.is_open, state.close_code) == (False, 4011)
    state.acked("subscribe", "a", 1.0)
    state.connecting()
    assert (state.close_code, state.subscriptions, state.token) == (None, {}, "tok")


def test_other_frames_leave_the_state_alone():
    state = ClientState()
    state.on_frame({"type": "welcome", "peerId": "p"})
    state.on_frame({"type": "message", "channel": "c", "data": 1})
    assert (state.peers, state.going_away_ms, state.subscriptions) == ({}, None, {})


def test_ack_changes_state_names_exactly_the_ops_whose_ack_changes_it():
    # A driver skips `acked` for the other ops (a publish's ack, one per message).
    for op in ("subscribe", "unsubscribe", "publish", "send", "connect"):
        state = ClientState()
        state.subscriptions["c"] = 0.0
        before = dict(state.subscriptions)
        state.acked(op, "c" if op == "unsubscribe" else "d", 1.0)
        assert (state.subscriptions != before) == (op in ACK_CHANGES_STATE), op
