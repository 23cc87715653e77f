"""Method registry: one file per method, each registering itself under its CLI name."""

# Registration order is display order: baselines first, then pretraining methods.
from bench.methods import (  # noqa: F401, I001
    random_init,
    imagenet,
    simclr,
    moco,
    byol,
    false,
    grass,
    glcnet,
    multitask,
)
from bench.methods.base import (
    METHODS,
    BaselineMethod,
    Method,
    PretrainingMethod,
    StepContext,
    create_method,
    register_method,
)

__all__ = [
    "METHODS",
    "BaselineMethod",
    "Method",
    "PretrainingMethod",
    "StepContext",
    "create_method",
    "register_method",
]
