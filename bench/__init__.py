"""rs-sscl-bench: which self-supervised pretraining gives the best remote-sensing
segmentation when only 1% or 10% of the labels exist?

The typed entry points used by the CLI and the tests::

    from bench import SweepSpec, run_sweep, plan
    result = run_sweep(SweepSpec(methods=("simclr", "random"), fractions=(0.01, 0.1)))
"""

from bench.version import __version__

__all__ = ["SweepResult", "SweepSpec", "__version__", "plan", "run_sweep"]

# name -> the module that defines it (planning, or running sweeps)
_ENTRY_POINTS = {
    "SweepSpec": "bench.sweep_spec",
    "plan": "bench.sweep",
    "SweepResult": "bench.execution.sweeps",
    "run_sweep": "bench.execution.sweeps",
}


def __getattr__(name: str):
    """The sweep's entry points, imported when first asked for: they import torch (seconds
    and a GiB), which commands that only read results do not need."""
    if name in _ENTRY_POINTS:
        import importlib

        return getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
