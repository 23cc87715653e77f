"""Conformance checks: does a method or dataset honour the harness's contracts?

``python -m bench check-method NAME`` (:func:`check_method`) and ``check-dataset NAME``
(:func:`check_dataset`) run each contract on tiny data in seconds and report one line per
contract, ``PASS name: what was found`` or ``FAIL name: what to fix``, so a plugin's author
learns at once, not after a long run, that e.g. a resumed run drifts or a backbone does not
load into DeepLabV3+. The checks use the real pieces (``create_method``, the pretraining
loop, the fine-tuning's weight loading, the label-subset draws), never copies of them.
"""

from bench.conformance.contracts import Contract
from bench.conformance.dataset import check_dataset, iter_check_dataset
from bench.conformance.method import check_method, iter_check_method

__all__ = [
    "Contract",
    "check_dataset",
    "check_method",
    "iter_check_dataset",
    "iter_check_method",
]
