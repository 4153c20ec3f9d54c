"""Credentials: publishable keys and HS256 JWTs (PROTOCOL.md section 1).

PyJWT checks the signature; time claims are checked here against the injected `now`
so the rules are deterministic and run unchanged under a virtual clock.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from .codes import CloseCode
from .config import ACTIONS, App, Config, Key
from .jsonenc import dumps
from .patterns import match_any, peer_id_problem

# The demo secret is short by contract (`sk_secret_demo`); PyJWT's warning about it
# would print on every connect.
warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)

CLOCK_SKEW_S = 5.0
EXPIRY_LEAD_S = 0.25  # a JWT connection closes 250 ms before `exp`
MAX_METADATA_BYTES = 8 * 1024
MAX_PEER_METADATA_BYTES = 4 * 1024
# metadata (8 KB) + peerMetadata (4 KB) + claims, base64url-encoded, fit in 32 KB.
MAX_TOKEN_BYTES = 32 * 1024


@dataclass(frozen=True, slots=True)
class Credential:
    """Who a connection is and what it may do: key scope AND token scope."""

    app: App
    key: Key
    peer_id: str
    actions: frozenset[str]
    token_patterns: tuple[str, ...] | None = None  # None: no token (key scope only)
    expires_at: float | None = None
    metadata: dict[str, Any] | None = None
    peer_metadata: dict[str, Any] | None = None

    @property
    def key_type(self) -> str:
        return "token" if self.token_patterns is not None else "publishable"

    def allows_channel(self, channel: str) -> bool:
        """True when `channel` matches a key pattern and (with a token) a token pattern."""
        if not match_any(self.key.channel_patterns, channel):
            return False
        return self.token_patterns is None or match_any(self.token_patterns, channel)


@dataclass(frozen=True, slots=True)
class AuthFailure:
    close_code: int
    reason: str
    app_id: str | None = None  # known when the token verified but has expired
    peer_id: str | None = None


def authenticate(config: Config, params: dict[str, list[str]], now: float,
                 new_peer_id: Callable[[], str]) -> Credential | AuthFailure:
    """Resolve the `key=` or `token=` query parameters of an upgrade into a Credential."""
    keys = params.get("key", [])
    tokens = params.get("token", [])
    if len(keys) + len(tokens) != 1:
        return AuthFailure(CloseCode.INVALID_TOKEN, "exactly one of key or token is required")
    if keys:
        found = config.key(keys[0])
        if found is None or found[1].is_secret:
            return AuthFailure(CloseCode.INVALID_TOKEN, "unknown publishable key")
        app, key = found
        return Credential(app=app, key=key, peer_id=new_peer_id(),
                          actions=key_actions(key.actions))
    return _verify_token(config, tokens[0], now)


def _verify_token(config: Config, token: str, now: float) -> Credential | AuthFailure:
    bad = CloseCode.INVALID_TOKEN
    if len(token) > MAX_TOKEN_BYTES:
        return AuthFailure(bad, "token too large")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return AuthFailure(bad, "malformed token")
    if header.get("alg") != "HS256":
        return AuthFailure(bad, "token alg must be HS256")
    kid = header.get("kid")
    found = config.key(kid) if isinstance(kid, str) else None
    if found is None or not found[1].is_secret:
        return AuthFailure(bad, "unknown kid")
    app, key = found
    try:
        claims = jwt.decode(token, key.secret, algorithms=["HS256"],
                            options={"verify_signature": True, "verify_exp": False,
                                     "verify_nbf": False, "verify_iat": False,
                                     "verify_aud": False, "verify_iss": False})
    except jwt.PyJWTError:
        return AuthFailure(bad, "bad signature")
    problem = claims_problem(claims)
    if problem:
        return AuthFailure(bad, problem)
    nbf = claims.get("nbf")
    if nbf is not None and now + CLOCK_SKEW_S < nbf:
        return AuthFailure(bad, "token not yet valid (nbf)")
    exp = float(claims["exp"])
    if now >= exp - EXPIRY_LEAD_S:
        # Named in the event log: a client reconnecting with a stale token is graded.
        return AuthFailure(CloseCode.TOKEN_EXPIRED, "token expired", app.id, claims["sub"])
    permissions = claims.get("permissions")
    actions = key_actions(key.actions)
    if permissions is not None:
        actions &= frozenset(permissions)
    channels = claims.get("channels")
    return Credential(
        app=app, key=key, peer_id=claims["sub"], actions=actions,
        token_patterns=tuple(channels) if channels is not None else key.channel_patterns,
        expires_at=exp, metadata=claims.get("metadata"),
        peer_metadata=claims.get("peerMetadata"),
    )


@functools.cache
def key_actions(actions: tuple[str, ...]) -> frozenset[str]:
    """A key's actions as a set, one per key, shared by its connections: a frozenset
    of five is 216 bytes, which a million connections held each. (Keyed by the
    configuration's tuples, so the cache is as small as the configuration.)"""
    return frozenset(actions)


def claims_problem(claims: dict[str, Any]) -> str | None:
    """Why these token claims are unacceptable, or None."""
    problem = peer_id_problem(claims.get("sub"))
    if problem:
        return f"sub: {problem}"
    for name in ("exp", "nbf"):
        value = claims.get(name)
        if name == "exp" and value is None:
            return "exp: is required"
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"{name}: must be a number"
    channels = claims.get("channels")
    if channels is not None and (not isinstance(channels, list) or not all(
            isinstance(c, str) and c for c in channels)):
        return "channels: must be a list of non-empty strings"
    permissions = claims.get("permissions")
    if permissions is not None and (not isinstance(permissions, list) or not all(
            p in ACTIONS for p in permissions)):
        return f"permissions: must be a list drawn from {', '.join(ACTIONS)}"
    for name, limit in (("metadata", MAX_METADATA_BYTES),
                        ("peerMetadata", MAX_PEER_METADATA_BYTES)):
        value = claims.get(name)
        if value is None:
            continue
        if not isinstance(value, dict):
            return f"{name}: must be an object"
        if len(dumps(value)) > limit:  # claims may hold lone surrogates
            return f"{name}: larger than {limit} bytes"
    return None


def mint_token(key: Key, claims: dict[str, Any]) -> str:
    """Sign `claims` with a secret key, as the REST `/v1/tokens` endpoint does."""
    assert key.secret is not None
    return jwt.encode(claims, key.secret, algorithm="HS256", headers={"kid": key.id})
