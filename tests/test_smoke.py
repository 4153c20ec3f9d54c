import json

from websockets.sync.client import connect


def test_demo_server_welcomes_and_acks(demo_server):
    with connect(demo_server.url(key="pk_live_demo")) as ws:
        welcome = json.loads(ws.recv(timeout=5))
        assert welcome["type"] == "welcome"
        assert welcome["expiresAt"] is None
        assert welcome["maxMessageSize"] == 65536
        ws.send(json.dumps({"type": "publish", "channel": "a", "data": None, "requestId": "1"}))
        assert json.loads(ws.recv(timeout=5)) == {"type": "ack", "requestId": "1"}
