"""rs-sscl-bench: which self-supervised pretraining gives the best remote-sensing
segmentation when only 1% or 10% of the labels exist?

The typed entry points used by the CLI and the tests::

    from bench import SweepSpec, run_sweep, plan
    result = run_sweep(SweepSpec(methods=("simclr", "random"), fractions=(0.01, 0.1)))
"""

from bench.execution.sweeps import SweepResult, run_sweep
from bench.sweep import SweepSpec, plan
from bench.version import __version__

__all__ = ["SweepResult", "SweepSpec", "__version__", "plan", "run_sweep"]
