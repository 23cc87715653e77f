"""Method registry: one file per method, each registering itself under its CLI name."""

from bench.methods import random_init, simclr  # noqa: F401  (registers)
from bench.methods.base import (
    METHODS,
    BaselineMethod,
    Method,
    PretrainingMethod,
    StepContext,
    register_method,
)

__all__ = [
    "METHODS",
    "BaselineMethod",
    "Method",
    "PretrainingMethod",
    "StepContext",
    "register_method",
]
