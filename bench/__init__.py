"""rs-sscl-bench: which self-supervised pretraining gives the best remote-sensing
segmentation when only 1% or 10% of the labels exist?

The typed entry points used by the CLI and the tests::

    from bench import SweepSpec, run_sweep, plan
    result = run_sweep(SweepSpec(methods=("simclr", "random"), fractions=(0.01, 0.1)))
"""

__version__ = "0.1.0"

from bench.sweep import SweepResult, SweepSpec, plan, run_sweep  # noqa: E402

__all__ = ["SweepResult", "SweepSpec", "__version__", "plan", "run_sweep"]
