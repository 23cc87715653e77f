"""The training engine on a tiny model: the step, the non-finite guard, clipping, and a train
state that saves and loads itself so that a resumed run equals an uninterrupted one."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from bench.engine import NonFiniteLossError, Trainer, build_optimizer, parameter_groups


def make_trainer(tmp_path, schedule=(0.1, 0.05, 0.02, 0.01), clip_norm=None) -> Trainer:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    optimizer = build_optimizer(parameter_groups(model, 0.0), "sgd", lr=1.0, momentum=0.9)
    return Trainer(
        job_id="job",
        model=model,
        optimizer=optimizer,
        schedule=np.array(schedule),
        device=torch.device("cpu"),
        amp=False,
        checkpoint_path=tmp_path / "checkpoint.pt",
        clip_norm=clip_norm,
    )


def loss_of(trainer: Trainer, step: int):
    x = torch.full((3, 4), float(step + 1))
    return lambda: (trainer.model(x).square().mean(), {"step_scalar": float(step)})


def test_step_takes_the_schedules_lr_and_reports_the_loss_and_scalars(tmp_path):
    trainer = make_trainer(tmp_path)
    outcome = trainer.step(1, loss_of(trainer, 1))
    assert outcome.lr == 0.05 and trainer.optimizer.param_groups[0]["lr"] == 0.05
    assert outcome.extras == {"step_scalar": 1.0} and np.isfinite(outcome.loss)
    assert not outcome.stop


def test_non_finite_loss_stops_before_the_weights_change(tmp_path):
    trainer = make_trainer(tmp_path)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(NonFiniteLossError, match="non-finite training loss nan at step 0"):
        trainer.step(0, lambda: (torch.tensor(float("nan"), requires_grad=True), {}))
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_clipping_bounds_the_update(tmp_path):
    trainer = make_trainer(tmp_path, schedule=(1.0,), clip_norm=0.01)
    before = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    trainer.step(0, loss_of(trainer, 5))
    after = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert 0 < float((after - before).norm()) <= 0.01 + 1e-6  # lr 1, first SGD step


def test_saved_state_resumes_to_the_same_weights(tmp_path):
    uninterrupted = make_trainer(tmp_path / "a")
    for step in range(4):
        uninterrupted.step(step, loss_of(uninterrupted, step))

    first = make_trainer(tmp_path / "b")
    (tmp_path / "b").mkdir()
    for step in range(2):
        first.step(step, loss_of(first, step))
    first.save({"step": 2})
    torch.manual_seed(123)  # whatever happens to the random state in between
    second = make_trainer(tmp_path / "b")
    state = second.load()
    assert state["step"] == 2
    second.restore_rng(state, reseed=0)
    for step in range(2, 4):
        second.step(step, loss_of(second, step))
    for a, b in zip(uninterrupted.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)  # dropout masks and momentum included


def test_run_checkpoints_periodically_and_not_after_the_last_step(tmp_path):
    trainer = make_trainer(tmp_path)
    saved = []
    trainer.save = lambda fields: saved.append(fields["step"])  # type: ignore[method-assign]
    trainer.run(
        ((step, None) for step in range(4)),
        lambda batch, step: trainer.step(step, loss_of(trainer, step)),
        lambda step: ({"step": step + 1}, f"at step {step + 1}"),
        checkpoint_every=2,
        last_checkpoint=3,
    )
    assert saved == [2]  # after step 2; the one after step 4 is not written (run ends)


def test_run_checkpoints_by_time_on_every_process_at_the_same_step(tmp_path):
    def saves(seconds: float) -> list[int]:
        trainer = make_trainer(tmp_path)
        trainer.checkpoint_seconds = seconds
        saved = []

        def save(fields):
            saved.append(fields["step"])
            trainer.last_checkpoint_time = time.monotonic()  # as the real save does

        trainer.save = save  # type: ignore[method-assign]
        trainer.run(
            ((step, None) for step in range(4)),
            lambda batch, step: trainer.step(step, loss_of(trainer, step)),
            lambda step: ({"step": step + 1}, f"at step {step + 1}"),
            last_checkpoint=3,
        )
        return saved

    assert saves(1e-9) == [1, 2, 3]  # due after every step; none after the last
    assert saves(3600.0) == []  # an hour has not passed
    assert saves(0.0) == []  # off


def test_a_checkpoint_restarts_the_interval(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.checkpoint_seconds = 3600.0
    trainer.last_checkpoint_time -= 3600.0  # an hour since the start
    assert trainer.step(0, loss_of(trainer, 0)).checkpoint_due
    trainer.save({"step": 1})
    assert not trainer.step(1, loss_of(trainer, 1)).checkpoint_due
