"""check-method and check-dataset: the built-ins pass, purpose-broken ones fail with the
message that says what to fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.conformance import check_dataset, check_method
from bench.datasets import DATASETS, PatchSet, register_dataset
from bench.datasets.synthetic import SyntheticLandCover
from bench.methods import METHODS, register_method
from bench.methods.base import PretrainingMethod
from bench.methods.byol import BYOL
from bench.methods.simclr import SimCLR

PRETRAINING = [m for m in METHODS.names() if METHODS.get(m).pretrains]


def outcomes(contracts) -> dict[str, tuple[str, str]]:
    return {c.name: (c.status, c.message) for c in contracts}


def assert_all_pass(contracts) -> None:
    failing = [str(c) for c in contracts if not c.ok]
    assert not failing, "\n".join(failing)


# ---------------------------------------------------------------------------- methods
def test_byol_passes_every_contract_and_declares_its_target():
    results = outcomes(check_method("byol"))
    assert list(results) == [
        "setup",
        "step",
        "seeded",
        "frozen",
        "resume",
        "no-collapse",
        "backbone-load",
        "step-cost",
    ]
    assert all(status == "PASS" for status, _ in results.values()), results
    assert "target_backbone, target_projector: not trainable" in results["frozen"][1]
    assert "bit-identical" in results["resume"][1]
    assert (
        "a fixed batch of 16 images after each of 2 epochs (8 steps)" in results["no-collapse"][1]
    )
    assert "SimCLR's step time" in results["step-cost"][1]


@pytest.mark.slow
@pytest.mark.parametrize("name", PRETRAINING)
def test_every_built_in_method_passes_every_contract(name):
    assert_all_pass(check_method(name))


def test_a_baseline_is_checked_for_its_initial_weights(capsys):
    assert main(["check-method", "random"]) == 0
    out = capsys.readouterr().out
    assert "PASS backbone-load: fine-tuning starts from" in out and "2 of 2 contracts pass" in out


class UnseededViews(SimCLR):
    """Noise from a generator of its own (OS entropy): the run's seed does not fix it."""

    def training_step(self, images, ctx):
        noise = np.random.default_rng().random(images.shape, dtype=np.float32)
        return super().training_step(images + 0.1 * torch.from_numpy(noise), ctx)


class TrainableTarget(BYOL):
    """BYOL whose EMA target projector was left trainable."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.target_projector.requires_grad_(True)


class UndeclaredTarget(BYOL):
    """BYOL that does not declare its frozen target."""

    frozen_modules = ()


class PrefixedKeys(SimCLR):
    """Hands back its backbone under keys that are not smp's."""

    def backbone_state_dict(self):
        return {f"encoder.{k}": v for k, v in super().backbone_state_dict().items()}


class DetachedFeatures(SimCLR):
    """Its loss sees the backbone's features detached: the backbone never learns."""

    def embed(self, images):
        return super().embed(images).detach()


class CountedTemperature(SimCLR):
    """A schedule kept in a plain attribute, which no checkpoint saves."""

    calls = 0

    def training_step(self, images, ctx):
        self.calls += 1
        loss, logs = super().training_step(images, ctx)
        return loss * (1.0 + 0.01 * self.calls), logs


class ConstantEmbedding(SimCLR):
    """Embeddings multiplied by 0 plus a constant: every image maps to one point."""

    def embed(self, images):
        return super().embed(images) * 0 + 1


class MissingHook(SimCLR):
    """A method that left one of its hooks to the base class."""

    training_step = PretrainingMethod.training_step


BROKEN = {
    "missing-hook": MissingHook,
    "unseeded": UnseededViews,
    "trainable-target": TrainableTarget,
    "undeclared-target": UndeclaredTarget,
    "prefixed-keys": PrefixedKeys,
    "detached": DetachedFeatures,
    "counted": CountedTemperature,
    "constant": ConstantEmbedding,
}


@pytest.fixture
def broken(registries):
    """The broken methods, registered for one test (subclasses: register each anew)."""
    for name, cls in BROKEN.items():
        register_method(f"broken-{name}")(type(cls.__name__, (cls,), {}))
    return lambda name: f"broken-{name}"


@pytest.mark.parametrize(
    "name,contract,message",
    [
        ("unseeded", "seeded", "seed 0 gave two different first losses"),
        ("unseeded", "seeded", "draw every random number from torch's global generator"),
        ("trainable-target", "frozen", "target_projector is declared frozen but 6 of its"),
        ("trainable-target", "frozen", "call target_projector.requires_grad_(False)"),
        ("undeclared-target", "frozen", "are frozen but not declared (e.g. target_backbone."),
        ("detached", "step", "60 of 60 backbone tensors get no gradient"),
        ("missing-hook", "step", "hook PretrainingMethod.training_step is not implemented"),
        ("constant", "no-collapse", "after 4 steps (epoch 1) the embeddings of a fixed batch"),
        ("constant", "no-collapse", "embedding_std x sqrt(d) = 0.0000 < pretrain.collapse_std"),
    ],
)
def test_broken_methods_fail_with_what_to_fix(broken, name, contract, message):
    results = outcomes(check_method(broken(name), only=[contract]))
    assert list(results) == ["setup", contract] and results["setup"][0] == "PASS"
    status, text = results[contract]
    assert status == "FAIL" and message in text and "\n" not in text, text


def test_backbone_keys_that_are_not_smp_fail_to_load(broken, capsys):
    assert main(["check-method", broken("prefixed-keys"), "--only", "backbone-load"]) == 1
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "backbone-load" in ln)
    assert line.startswith("FAIL backbone-load: backbone weights do not match the model:")
    assert "120 missing (e.g. ['bn1.bias'" in line and "120 unexpected (e.g. ['encoder." in line
    assert "backbone_state_dict() must return smp's ResNet encoder weights" in line


def test_state_outside_the_checkpoint_breaks_the_resume(broken):
    status, text = outcomes(check_method(broken("counted"), only=["resume"]))["resume"]
    assert status == "FAIL" and "differ from an uninterrupted run" in text
    assert "keep all training state in parameters or registered buffers" in text


def test_settings_the_method_refuses_fail_setup_and_skip_the_rest():
    results = outcomes(check_method("moco", ["moco.queue_size=none"], only=["step"]))
    status, text = results["setup"]
    assert status == "FAIL" and "moco: the queue sized from the 16 pretraining images" in text
    assert results["step"] == ("SKIP", "needs the setup, which failed")


# ---------------------------------------------------------------------------- datasets
def test_synthetic_passes_every_dataset_contract(capsys):
    assert main(["check-dataset", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert "PASS labels: all values are classes or ignored; 7 of 7" in out
    assert "8 of 8 contracts pass" in out


class IgnoreIsAClass(SyntheticLandCover):
    ignore_index = 3


class StrayLabels(SyntheticLandCover):
    def load_split(self, split):
        patches = super().load_split(split)
        images, masks = patches[np.arange(len(patches))]
        masks = masks.numpy().copy()
        masks[0, :2, :2] = 9
        return PatchSet(images.numpy(), masks, patches.ids)


class UnseededRender(SyntheticLandCover):
    def _render(self, split, count):
        images, masks = super()._render(split, count)
        return images ^ np.random.default_rng().integers(0, 2, images.shape, np.uint8), masks


@pytest.mark.parametrize(
    "cls,contract,message",
    [
        (IgnoreIsAClass, "classes", "ignore_index 3 is class 'tree': use a value >= 7"),
        (StrayLabels, "labels", "train masks hold values [9] (4 pixels), neither a class"),
        (UnseededRender, "deterministic", "generated twice, the train patches differ"),
    ],
)
def test_broken_datasets_fail_with_what_to_fix(registries, cls, contract, message):
    name = f"broken-{contract}"
    register_dataset(name)(type(cls.__name__, (cls,), {}))
    status, text = outcomes(check_dataset(name, only=[contract]))[contract]
    assert status == "FAIL" and message in text, text
    assert name in DATASETS


def test_an_unprepared_dataset_says_how_to_prepare_it(tmp_path):
    results = outcomes(check_dataset("potsdam", data_root=tmp_path))
    status, text = results["ready"]
    assert status == "FAIL" and "python -m bench prepare potsdam --raw" in text
    assert "--raw FOLDER" in text and "4_Ortho_RGBIR" in text
    assert all(status == "SKIP" for name, (status, _) in results.items() if name != "ready")
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    "check,name,only",
    [(check_method, "random", ("setup",)), (check_dataset, "synthetic", ("ready",))],
)
def test_the_first_contract_can_be_named_in_only(check, name, only):
    results = outcomes(check(name, only=only))
    assert list(results) == list(only) and results[only[0]][0] == "PASS"
