"""Fetching a fresh JWT from the service's REST endpoint (recovery after close 4002)."""

from __future__ import annotations

import json
import urllib.request


def fetch_token(token_url: str, secret: str | None, peer_id: str,
                expires_in_s: int = 3600, timeout: float = 5.0) -> str | None:
    """POST /v1/tokens for `peer_id`; the token, or None when the endpoint refuses."""
    body = json.dumps({"peerId": peer_id[:128], "expiresInSec": expires_in_s}).encode()
    request = urllib.request.Request(token_url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    if secret:
        request.add_header("Authorization", f"Bearer {secret}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())["token"]
    except (OSError, ValueError, KeyError):
        return None
