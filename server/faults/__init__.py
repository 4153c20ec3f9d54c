"""Fault injection (PROTOCOL.md section 9): one module per kind, one engine.

Every module of this package is imported here, so a kind's module registers it (see
`base.register`) without a list to keep: adding a kind is adding its module.
"""

import importlib
import pkgutil

from .base import (
    KINDS,
    ConnectionStrike,
    Delay,
    Fail,
    FaultSpec,
    FaultSpecError,
    parse_fault,
    parse_faults,
)
from .engine import Fault, FaultEngine

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["KINDS", "ConnectionStrike", "Delay", "Fail", "Fault", "FaultEngine", "FaultSpec",
           "FaultSpecError", "parse_fault", "parse_faults"]
