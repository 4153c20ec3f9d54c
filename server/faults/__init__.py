"""Fault injection (PROTOCOL.md section 9): one module per kind, one engine."""

from .base import KINDS, ConnectionStrike, Delay, Fail, Fault, FaultSpecError
from .engine import FaultEngine

__all__ = ["KINDS", "ConnectionStrike", "Delay", "Fail", "Fault", "FaultEngine",
           "FaultSpecError"]
