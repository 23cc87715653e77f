import numpy as np
import pytest
import torch

from bench.config import FinetuneConfig
from bench.finetune import batch_indices, lr_at, random_dihedral


def test_schedules():
    poly = FinetuneConfig(lr=0.01, steps=100, schedule="poly", poly_power=0.9)
    assert lr_at(poly, 0) == 0.01 and lr_at(poly, 50) == pytest.approx(0.01 * 0.5**0.9)
    cosine = FinetuneConfig(lr=1.0, steps=10, schedule="cosine")
    assert lr_at(cosine, 5) == pytest.approx(0.5)
    assert lr_at(FinetuneConfig(lr=0.3, schedule="constant"), 99) == 0.3


def test_batches_cycle_through_all_labelled_patches():
    order = batch_indices(n=5, batch_size=4, steps=5, seed=0)
    assert order.shape == (5, 4)
    flat = order.reshape(-1)
    for epoch in range(4):  # each block of 5 is a permutation
        assert sorted(flat[5 * epoch : 5 * epoch + 5]) == list(range(5))
    assert np.array_equal(order, batch_indices(5, 4, 5, seed=0))
    assert not np.array_equal(order, batch_indices(5, 4, 5, seed=1))


def test_dihedral_moves_image_and_mask_together():
    torch.manual_seed(0)
    masks = torch.randint(0, 7, (16, 9, 9), dtype=torch.uint8)
    images = torch.stack([masks * 10, masks * 20 + 1, masks * 3 + 2], dim=1)  # image encodes mask
    out_images, out_masks = random_dihedral(images, masks)
    assert torch.equal(out_images[:, 0], out_masks * 10)
    assert torch.equal(out_images[:, 1], out_masks * 20 + 1)
    assert not torch.equal(out_masks, masks)  # something was transformed


def test_frozen_protocol_keeps_the_pretrained_encoder_and_its_bn_statistics(
    dirs, tiny_overrides, monkeypatch
):
    import bench.finetune
    from bench import SweepSpec, run_sweep
    from bench.store import BACKBONE, RunStore

    results, data = dirs
    seen = {}
    real_evaluate = bench.finetune.evaluate

    def capture(model, *args, **kwargs):
        seen["encoder"] = {k: v.clone() for k, v in model.encoder.state_dict().items()}
        seen["decoder"] = {k: v.clone() for k, v in model.decoder.state_dict().items()}
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(bench.finetune, "evaluate", capture)
    overrides = (*tiny_overrides, "finetune.protocol=frozen")
    result = run_sweep(
        SweepSpec(methods=("simclr",), fractions=(1.0,), overrides=overrides), results, data
    )
    assert result.ok
    record = result.finetune_records()[0]
    assert record["protocol"] == "frozen" and record["init"].startswith("pretrained backbone")
    pretrained = torch.load(
        RunStore(results).run_dir(record["pretrain_id"]) / BACKBONE, weights_only=True
    )
    assert all(torch.equal(seen["encoder"][k], v) for k, v in pretrained.items())

    # With full fine-tuning the same start moves the encoder.
    seen.clear()
    run_sweep(
        SweepSpec(methods=("simclr",), fractions=(1.0,), overrides=tiny_overrides), results, data
    )
    assert not all(torch.equal(seen["encoder"][k], v) for k, v in pretrained.items())
