import numpy as np
import pytest
import torch

from bench import checkpoint
from bench.config import PretrainConfig
from bench.engine import build_optimizer, parameter_groups
from bench.pretrain import warmup_cosine_schedule


def test_warmup_then_cosine_matches_vissl_recipe():
    cfg = PretrainConfig(
        lr=4.8, warmup_fraction=0.1, warmup_start_factor=0.125, final_lr_factor=0.001
    )
    lr = warmup_cosine_schedule(cfg, 1000)
    assert lr.shape == (1000,)
    assert lr[0] == pytest.approx(0.6)  # VISSL: warm-up 0.6 -> 4.8
    assert lr[100] == pytest.approx(4.8) and lr.max() == pytest.approx(4.8)
    assert lr[-1] == pytest.approx(0.0048)
    assert np.all(np.diff(lr[:100]) > 0) and np.all(np.diff(lr[100:]) < 0)
    no_warmup = warmup_cosine_schedule(PretrainConfig(warmup_fraction=0.0, lr=1.0), 5)
    assert no_warmup[0] == 1.0 and len(no_warmup) == 5


def test_no_weight_decay_on_bn_and_bias():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.ndim for p in decay["params"]] == [4]
    assert len(no_decay["params"]) == 3  # conv bias, BN weight and bias


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "lars"])
def test_optimizers_step(name):
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(parameter_groups(model, 1e-4), name, lr=0.1, momentum=0.9)
    before = model.weight.detach().clone()
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)


def test_checkpoint_round_trip_previous_generation_and_damage(tmp_path, caplog):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1, "model": {"w": torch.ones(2)}, "job_id": "x"})
    checkpoint.save(path, {"epoch": 2, "model": {"w": torch.zeros(2)}, "job_id": "x"})
    assert checkpoint.load(path, "x")["epoch"] == 2
    assert checkpoint.load(path, "other job") is None
    path.write_bytes(path.read_bytes()[:100])  # truncated newest generation
    state = checkpoint.load(path, "x")
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.ones(2))
    assert "resuming from the previous checkpoint" in caplog.text
    checkpoint.previous_path(path).write_bytes(b"garbage")
    assert checkpoint.load(path, "x") is None
    assert "starting from scratch" in caplog.text
    assert checkpoint.load(tmp_path / "missing.pt", "x") is None


def test_rng_state_round_trip():
    state = checkpoint.rng_state()
    first = torch.rand(3)
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(3), first)


def test_step_schedule_decays_every_step_epochs():
    from bench.pretrain import lr_schedule

    cfg = PretrainConfig(lr=5e-4, schedule="step", step_epochs=2, step_gamma=0.95)
    lr = lr_schedule(cfg, total_steps=50, steps_per_epoch=10)
    assert lr[0] == lr[19] == pytest.approx(5e-4)
    assert lr[20] == pytest.approx(5e-4 * 0.95) and lr[49] == pytest.approx(5e-4 * 0.95**2)


def test_batched_reads_keep_the_dataloader_order():
    """Reading a batch with one indexed access must not change which patches a batch holds
    (checkpoints resume mid-epoch by replaying the seeded order)."""
    import numpy as np
    from torch.utils.data import DataLoader

    from bench.datasets.base import PatchSet
    from bench.pretrain import shuffled_batches

    images = np.random.default_rng(0).integers(0, 255, (50, 3, 4, 4), dtype=np.uint8)
    patches = PatchSet(images, images[:, 0], [str(i) for i in range(50)])
    expected = DataLoader(
        patches,
        batch_size=8,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(3),
    )
    got = shuffled_batches(patches, 8, torch.Generator().manual_seed(3))
    pairs = list(zip(expected, got, strict=True))
    assert len(pairs) == 6
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_compiled_networks_compute_the_same_loss_and_keep_state_keys(method):
    """pretrain.compile compiles the child networks in place: the loss of a step is the
    same, and the state-dict keys (checkpoints, saved backbone) do not change."""
    from bench.config import PretrainConfig
    from bench.methods import METHODS
    from bench.methods.base import StepContext
    from bench.pretrain import compile_networks

    cls = METHODS.get(method)
    config = PretrainConfig(view_size=32, batch_size=4)
    torch.manual_seed(0)
    plain = cls(cls.Params(), config, 3, [0.5] * 3, [0.25] * 3)
    compiled = cls(cls.Params(), config, 3, [0.5] * 3, [0.25] * 3)
    compiled.load_state_dict(plain.state_dict())
    compile_networks(compiled, backend="eager")  # dynamo's tracing, without codegen
    assert list(compiled.state_dict()) == list(plain.state_dict())
    images = torch.rand(4, 3, 32, 32)
    losses = []
    for model in (plain, compiled):
        torch.manual_seed(1)
        loss, _ = model.training_step(images, StepContext(0, 10, 0))
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
