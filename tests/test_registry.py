import warnings

import pytest

from bench.datasets import DATASETS
from bench.methods import METHODS
from bench.registry import Registry, UnknownNameError


def test_register_get_list_and_unknown():
    reg = Registry("widget")

    @reg.register("alpha")
    class Alpha:
        pass

    @reg.register("beta")
    class Beta:
        pass

    assert reg.get("alpha") is Alpha and Alpha.name == "alpha"
    assert reg.names() == ["alpha", "beta"] and reg.names("b*") == ["beta"]
    assert "alpha" in reg and len(reg) == 2
    with pytest.raises(UnknownNameError, match="valid widgets: alpha, beta"):
        reg.get("gamma")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg.register("alpha")(type("Other", (), {}))
    assert any("registered twice" in str(w.message) for w in caught)


def test_first_entries_are_registered():
    assert {"simclr", "random"} <= set(METHODS.names())
    assert "synthetic" in DATASETS
