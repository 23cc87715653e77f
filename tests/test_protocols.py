"""Downstream protocols: the DeepLabV3+ head as published, each named protocol's optimiser,
schedule and frozen/loaded parts against a transcription of its paper's release (written
here, not imported from bench.protocols), the linear probe against its textbook form,
resolution with presets and --set, and job ids."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY
from torch import nn

from bench import SweepSpec
from bench.config import ConfigError, FinetuneConfig
from bench.datasets import create_dataset
from bench.finetune import TrainingLength, finetuning_model, finetuning_trainer
from bench.jobs import FinetuneJob
from bench.models import DeepLabHead, LinearHead, LinearProbe, build_segmentation_model
from bench.protocols import finetune_settings, protocol_overrides
from bench.store import RunStore
from bench.sweep import plan

# Transcribed from the releases (see the protocol docstrings for file and line).
GLCNET = {  # G-RSIM T-SS-GLCNet main_ss.py train_seg1, config/opt_road.py
    "optimizer": torch.optim.Adam,
    "lr": 1e-4,
    "betas": (0.9, 0.99),
    "weight_decay": 1e-5,  # every parameter
    "epochs": 150,
    "batch": 16,
    "decay_per_epoch": 0.98,
    "rates": (6, 12, 18),
    "stride": 16,
}
FALSE = {  # MMSegmentation deeplabv3plus_r50-d8 + schedule defaults
    "optimizer": torch.optim.SGD,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "iterations": 1300,
    "batch": 16,
    "power": 0.9,
    "min_lr": 1e-4,
    "rates": (12, 24, 36),
    "stride": 8,
}


def aspp_convolutions(model) -> list[list[nn.Conv2d]]:
    """The 3x3 convolutions of each atrous ASPP branch, read from the built module."""
    branches = model.decoder.aspp[0].convs[1:4]
    return [
        [m for m in branch.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        for branch in branches
    ]


@pytest.mark.parametrize(
    ("stride", "separable", "rates"),
    [(16, False, (6, 12, 18)), (8, False, (12, 24, 36)), (8, True, (12, 24, 36))],
)
def test_built_deeplab_has_the_published_rates_and_convolutions(stride, separable, rates):
    model = build_segmentation_model("resnet18", 3, 5, DeepLabHead(stride, separable))
    branches = aspp_convolutions(model)
    assert [branch[0].dilation[0] for branch in branches] == list(rates)
    for branch in branches:
        (conv,) = branch
        # ordinary: one dense 3x3 conv; separable: a depthwise 3x3 (groups = channels)
        assert (conv.groups == conv.in_channels) is separable
        assert conv.groups == (conv.in_channels if separable else 1)
    features = model.encoder(torch.zeros(1, 3, 64, 64))
    assert features[-1].shape[-1] == 64 // stride  # the encoder's output stride


def test_default_head_is_not_smps_default():
    """smp's own default (rates 12/24/36, separable) is what the harness used to build."""
    model = build_segmentation_model("resnet18", 3, 5)
    branches = aspp_convolutions(model)
    assert [b[0].dilation[0] for b in branches] == [6, 12, 18]
    assert all(b[0].groups == 1 for b in branches)


def job_for(*overrides: str, preset: str = "quick", method: str = "random") -> FinetuneJob:
    spec = SweepSpec(
        methods=(method,), fractions=(0.5,), seeds=(0,), preset=preset, overrides=overrides
    )
    return next(j for j in plan(spec) if isinstance(j, FinetuneJob))


def built(job: FinetuneJob, labelled: int):
    dataset = create_dataset("synthetic", job.dataset_params, job.data)
    model, _, _ = finetuning_model(job, dataset, None, torch.device("cpu"))
    length = TrainingLength.of(job.finetune, labelled)
    return model, finetuning_trainer(job, model, torch.device("cpu"), None, length), length


def test_glcnet_protocol_is_the_released_optimiser_schedule_and_head():
    job = job_for("finetune.protocol=glcnet", "synthetic.patch_size=32")
    labelled = 138  # GLCNet's 1% Potsdam list
    model, trainer, length = built(job, labelled)
    optimizer = trainer.optimizer
    assert type(optimizer) is GLCNET["optimizer"]
    for group in optimizer.param_groups:
        assert group["betas"] == GLCNET["betas"]
        assert group["weight_decay"] == GLCNET["weight_decay"]  # BN and bias too
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in model.parameters()}  # nothing frozen
    per_epoch = labelled // GLCNET["batch"]  # drop_last
    assert length.steps == GLCNET["epochs"] * per_epoch
    for step in (0, length.steps // 2, length.steps - 1):
        expected = GLCNET["lr"] * GLCNET["decay_per_epoch"] ** (step // per_epoch)
        assert trainer.schedule[step] == pytest.approx(expected, rel=1e-12)
    branches = aspp_convolutions(model)
    assert [b[0].dilation[0] for b in branches] == list(GLCNET["rates"])
    assert job.finetune.load == "backbone+aspp" and job.finetune.evaluation == "patches"


def test_false_protocol_is_mmsegmentations_frozen_sgd_poly():
    job = job_for("finetune.protocol=false", "synthetic.patch_size=32")
    model, trainer, length = built(job, labelled=500)
    optimizer = trainer.optimizer
    assert type(optimizer) is FALSE["optimizer"]
    for group in optimizer.param_groups:
        assert group["momentum"] == FALSE["momentum"]
        assert group["weight_decay"] == FALSE["weight_decay"]
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    encoder = {id(p) for p in model.encoder.parameters()}
    assert not trained & encoder and trained == {id(p) for p in model.parameters()} - encoder
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert length.steps == FALSE["iterations"]
    for step in (0, 650, 1299):
        t = step / FALSE["iterations"]
        expected = (FALSE["lr"] - FALSE["min_lr"]) * (1 - t) ** FALSE["power"] + FALSE["min_lr"]
        assert trainer.schedule[step] == pytest.approx(expected, rel=1e-12)
    branches = aspp_convolutions(model)
    assert [b[0].dilation[0] for b in branches] == list(FALSE["rates"])
    assert all(b[0].groups == b[0].in_channels for b in branches)  # separable (MMSeg)
    assert model.encoder(torch.zeros(1, 3, 64, 64))[-1].shape[-1] == 64 // FALSE["stride"]
    assert job.finetune.load == "backbone"


def test_frozen_encoder_keeps_bn_statistics_in_the_step():
    job = job_for("finetune.protocol=false", "synthetic.patch_size=32")
    model, trainer, _ = built(job, labelled=64)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    from bench.finetune import segmentation_loss

    images, masks = torch.randn(2, 3, 32, 32), torch.randint(0, 6, (2, 32, 32))
    trainer.step(0, lambda: segmentation_loss(model, images, masks, job.finetune, 255))
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats included


def test_paper_preset_uses_the_glcnet_protocol_and_protocol_choice_wins_over_the_preset():
    paper = job_for(preset="paper").finetune
    assert paper.protocol == "glcnet" and protocol_overrides(paper) == {}
    switched = job_for("finetune.protocol=false", preset="paper").finetune
    assert switched == finetune_settings(None, {"protocol": "false"})
    assert protocol_overrides(switched) == {}
    # the cpu preset's own fine-tuning values are overrides of its protocol (harness) ...
    cpu = job_for(preset="cpu").finetune
    assert protocol_overrides(cpu) == {"steps": 600, "batch_size": 16}
    # ... and do not leak into another protocol the user picks
    assert protocol_overrides(job_for("finetune.protocol=glcnet", preset="cpu").finetune) == {}


def test_overrides_are_named_and_change_the_job_id():
    base = job_for("finetune.protocol=glcnet")
    tuned = job_for("finetune.protocol=glcnet", "finetune.lr=3e-4", "finetune.epochs=20")
    assert protocol_overrides(tuned.finetune) == {"lr": 3e-4, "epochs": 20}
    assert tuned.job_id != base.job_id
    ids = {
        job_for(*extra).job_id
        for extra in [
            (),
            ("finetune.protocol=glcnet",),
            ("finetune.protocol=false",),
            ("finetune.aspp_separable=true",),
            ("finetune.output_stride=8",),
            ("finetune.decoder_channels=128",),
            ("finetune.evaluation=tiles",),
            ("finetune.labels=stratified",),
        ]
    }
    assert len(ids) == 8  # every head, protocol and scoring choice is its own job
    assert job_for("finetune.eval_batch_size=3").job_id == job_for().job_id  # execution only


def test_protocol_settings_that_cannot_work_are_refused():
    with pytest.raises(
        ConfigError, match="unknown protocol 'mmseg'.*harness, glcnet, false, linear"
    ):
        finetune_settings(None, {"protocol": "mmseg"})
    with pytest.raises(ConfigError, match="finetune.steps has no effect: protocol glcnet"):
        finetune_settings({"protocol": "glcnet"}, {"steps": "50"})
    steps = finetune_settings({"protocol": "glcnet"}, {"steps": "50", "epochs": "none"})
    assert steps.steps == 50 and steps.epochs is None
    with pytest.raises(ValueError, match="eval_stride=300 is larger than eval_window=256"):
        FinetuneConfig(eval_stride=300)
    with pytest.raises(ValueError, match="load=all would load a pretrained decoder"):
        FinetuneConfig(freeze="backbone", load="all")


def test_glcnet_pretrained_aspp_must_fit_the_fine_tuning_head():
    """GLCNet's pretrained ASPP loads strictly only into the head it was built with."""
    with pytest.raises(ConfigError, match="loads the DeepLabV3\\+ glcnet pretrained"):
        job_for("finetune.aspp_separable=true", method="glcnet")
    job = job_for("finetune.aspp_separable=true", "finetune.load=backbone", method="glcnet")
    assert job.finetune.head.separable
    # the false protocol loads only the backbone: any head goes
    assert job_for("finetune.protocol=false", method="glcnet").finetune.load == "backbone"


def test_linear_protocol_trains_only_a_1x1_convolution_on_the_frozen_encoder():
    job = job_for("finetune.protocol=linear", "synthetic.patch_size=32")
    model, trainer, length = built(job, labelled=64)
    assert isinstance(model, LinearProbe) and job.finetune.head == LinearHead("multiscale")
    optimizer = trainer.optimizer
    assert type(optimizer) is torch.optim.Adam and length.steps == 100
    assert all(g["weight_decay"] == 0 and g["lr"] == 1e-3 for g in optimizer.param_groups)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    convs = [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m not in set(model.encoder.modules())
    ]
    assert [c.kernel_size for c in convs] == [(1, 1)] * 4  # strides 4, 8, 16, 32
    assert trained == {id(p) for c in convs for p in c.parameters()}  # nothing else learns
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert sum(c.bias is not None for c in convs) == 1  # one classifier: one bias
    assert job.finetune.load == "backbone" and protocol_overrides(job.finetune) == {}
    # BN in eval: a step leaves the encoder's weights and running statistics as they were
    from bench.finetune import segmentation_loss

    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    images, masks = torch.randn(2, 3, 32, 32), torch.randint(0, 6, (2, 32, 32))
    trainer.step(0, lambda: segmentation_loss(model, images, masks, job.finetune, 255))
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())


@pytest.mark.parametrize("features", ["multiscale", "last"])
def test_linear_probe_is_one_1x1_conv_over_concatenated_upsampled_features(features):
    """Per-stage convolutions summed after upsampling = the textbook probe: BN-normalised
    stages upsampled to the input, concatenated, one 1x1 convolution."""
    torch.manual_seed(0)
    head = LinearHead(features)
    model = build_segmentation_model("resnet18", 3, 5, head).eval()
    for norm in model.norms:  # statistics as after training, so BN does something
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stages = model.encoder(images)
        upsampled = [
            nn.functional.interpolate(
                (stages[s] - n.running_mean[:, None, None])
                / torch.sqrt(n.running_var[:, None, None] + n.eps),
                size=(64, 64),
                mode="bilinear",
            )
            for s, n in zip(head.stages, model.norms, strict=True)
        ]
        weight = torch.cat([c.weight for c in model.classifiers], dim=1)
        expected = nn.functional.conv2d(torch.cat(upsampled, 1), weight, model.classifiers[0].bias)
        assert torch.allclose(model(images), expected, atol=1e-5)
    assert weight.shape[1] == (960 if features == "multiscale" else 512)


def test_linear_protocol_follows_the_protocol_rules_in_ids_and_settings():
    linear, harness = job_for("finetune.protocol=linear"), job_for()
    assert linear.job_id != harness.job_id
    assert job_for("finetune.protocol=linear", "finetune.linear_features=last").job_id not in (
        linear.job_id,
        harness.job_id,
    )
    tuned = job_for("finetune.protocol=linear", "finetune.lr=0.01").finetune
    assert protocol_overrides(tuned) == {"lr": 0.01}
    assert linear.finetune.head.describe() == {
        "kind": "linear",
        "features": "multiscale",
        "stages": [2, 3, 4, 5],
        "strides": [4, 8, 16, 32],
    }
    with pytest.raises(ConfigError, match="decoder=linear has no ASPP or decoder to load"):
        job_for("finetune.protocol=linear", "finetune.load=backbone+aspp")
    # GLCNet's pretrained ASPP has nowhere to go: the probe loads its backbone only
    assert job_for("finetune.protocol=linear", method="glcnet").finetune.load == "backbone"


def test_a_linear_probe_run_is_recorded_and_captioned_as_every_protocol(dirs, capsys):
    from bench import run_sweep
    from bench.cli import main
    from bench.report.table import build_table

    results, data = dirs
    spec = SweepSpec(
        methods=("random",), fractions=(0.5,), overrides=(*TINY, "finetune.protocol=linear")
    )
    result = run_sweep(spec, results, data)
    (record,) = result.finetune_records()
    assert record["protocol"] == "linear" and record["freeze"] == "backbone"
    assert record["protocol_overrides"] == {"steps": 3, "batch_size": 4}  # TINY's
    assert record["protocol_settings"]["decoder"] == "linear" and record["head"]["kind"] == "linear"
    assert record["loaded"] == "none" and 0 <= record["miou"] <= 1
    (caption,) = build_table(RunStore(results).records(), ("miou",)).protocols
    assert caption.startswith("fine-tuned under protocol linear (this harness: the frozen-encoder")
    assert caption.endswith(", overridden: steps=3, batch_size=4; scored on the test patches")
    assert main(["list"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  linear "))
    assert "cheaper per step" in line and "than harness" in line
