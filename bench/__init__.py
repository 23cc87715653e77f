"""rs-sscl-bench: which self-supervised pretraining gives the best remote-sensing
segmentation when only 1% or 10% of the labels exist?

The typed entry points used by the CLI and the tests::

    from bench import SweepSpec, run_sweep, plan
    result = run_sweep(SweepSpec(methods=("simclr", "random"), fractions=(0.01, 0.1)))
"""

__version__ = "0.1.0"

__all__ = ["SweepResult", "SweepSpec", "__version__", "plan", "run_sweep"]


def __getattr__(name: str):
    """The sweep's entry points, imported when first asked for: ``bench.sweep`` imports
    torch (seconds and a GiB), which commands that only read results do not need."""
    if name in __all__:
        from bench import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
