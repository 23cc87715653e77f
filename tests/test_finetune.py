import numpy as np
import pytest
import torch

from bench.config import FinetuneConfig
from bench.finetune import TrainingLength, batch_indices, lr_at, random_dihedral


def steps(n: int) -> TrainingLength:
    return TrainingLength(n, 1, False)


def test_schedules():
    poly = FinetuneConfig(lr=0.01, steps=100, schedule="poly", poly_power=0.9)
    length = TrainingLength.of(poly, 50)
    assert lr_at(poly, 0, length) == 0.01
    assert lr_at(poly, 50, length) == pytest.approx(0.01 * 0.5**0.9)
    cosine = FinetuneConfig(lr=1.0, steps=10, schedule="cosine")
    assert lr_at(cosine, 5, steps(10)) == pytest.approx(0.5)
    assert lr_at(FinetuneConfig(lr=0.3, schedule="constant"), 99, steps(100)) == 0.3


def test_batches_cycle_through_all_labelled_patches():
    order = batch_indices(n=5, batch_size=4, length=steps(5), seed=0)
    assert order.shape == (5, 4)
    flat = order.reshape(-1)
    for epoch in range(4):  # each block of 5 is a permutation
        assert sorted(flat[5 * epoch : 5 * epoch + 5]) == list(range(5))
    assert np.array_equal(order, batch_indices(5, 4, steps(5), seed=0))
    assert not np.array_equal(order, batch_indices(5, 4, steps(5), seed=1))


def test_epochs_are_permutations_without_their_last_incomplete_batch():
    """GLCNet's DataLoader(shuffle=True, drop_last=True): 11 patches in batches of 4 are 2
    steps per epoch, 8 distinct patches each epoch."""
    cfg = FinetuneConfig(epochs=3, batch_size=4)
    length = TrainingLength.of(cfg, 11)
    assert (length.steps, length.per_epoch, length.by_epochs) == (6, 2, True)
    order = batch_indices(11, 4, length, seed=0)
    for epoch in range(3):
        drawn = order[2 * epoch : 2 * epoch + 2].reshape(-1)
        assert len(set(drawn.tolist())) == 8
    few = TrainingLength.of(FinetuneConfig(epochs=3, batch_size=16), 5)
    assert (few.steps, few.per_epoch) == (3, 1)  # one batch per epoch, patches repeated
    assert batch_indices(5, 16, few, seed=0).shape == (3, 16)


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
    real_evaluate = bench.finetune.evaluate_patches

    def capture(model, *args, **kwargs):
        seen["encoder"] = {k: v.clone() for k, v in model.encoder.state_dict().items()}
        seen["decoder"] = {k: v.clone() for k, v in model.decoder.state_dict().items()}
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(bench.finetune, "evaluate_patches", capture)
    overrides = (*tiny_overrides, "finetune.freeze=backbone")
    result = run_sweep(
        SweepSpec(methods=("simclr",), fractions=(1.0,), overrides=overrides), results, data
    )
    assert result.ok
    record = result.finetune_records()[0]
    assert record["freeze"] == "backbone" and record["init"].startswith("pretrained backbone")
    assert record["protocol_overrides"]["freeze"] == "backbone"
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


def pretrained_run(store, job, method) -> None:
    """Write a pretraining run's weight files as ``run_pretraining`` does."""
    from bench.pretrain import save_weights
    from bench.store import BACKBONE, DECODER

    run_dir = store.run_dir(job.job_id)
    run_dir.mkdir(parents=True)
    decoder = method.decoder_state_dict()
    if decoder is not None:
        save_weights(run_dir / DECODER, decoder)
    save_weights(run_dir / BACKBONE, method.backbone_state_dict())


def same(part: torch.nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, weights[k]) for k, v in part.state_dict().items())


def test_load_modes_load_glcnet_parts_strictly(tmp_path, tiny_overrides):
    from bench.finetune import load_initial_weights
    from bench.methods.glcnet import GLCNet
    from bench.models import build_segmentation_model
    from bench.store import RunStore
    from bench.sweep import SweepSpec, plan

    pretrain, _ = plan(SweepSpec(methods=("glcnet",), fractions=(1.0,), overrides=tiny_overrides))
    torch.manual_seed(0)
    method = GLCNet(pretrain.method_params, pretrain.pretrain, 3, [0.5] * 3, [0.25] * 3)
    store = RunStore(tmp_path)
    pretrained_run(store, pretrain, method)
    encoder, decoder = method.backbone_state_dict(), method.decoder_state_dict()

    def part(weights, prefix):
        return {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}

    for mode in ("backbone", "backbone+aspp", "all"):
        overrides = (*tiny_overrides, f"finetune.load={mode}")
        jobs = plan(SweepSpec(methods=("glcnet",), fractions=(1.0,), overrides=overrides))
        assert jobs[0].job_id == pretrain.job_id  # one pretraining serves every load mode
        torch.manual_seed(1)  # another initialisation than the pretrained weights
        model = build_segmentation_model(pretrain.pretrain.backbone, 3, num_classes=6)
        fresh = {k: v.clone() for k, v in model.state_dict().items()}
        source, loaded = load_initial_weights(model, jobs[1], store.run_dir(pretrain.job_id), 3)
        assert loaded == mode and source == f"pretrained backbone of {pretrain.job_id}"
        assert same(model.encoder, encoder)
        aspp_loaded = same(model.decoder.aspp, part(decoder, "aspp."))
        assert aspp_loaded == (mode != "backbone")
        assert same(model.decoder.aspp, part(fresh, "decoder.aspp.")) == (not aspp_loaded)
        for name in ("block1", "block2"):
            block = getattr(model.decoder, name)
            assert same(block, part(decoder, f"{name}.")) == (mode == "all")
            assert same(block, part(fresh, f"decoder.{name}.")) == (mode != "all")
        # the class head always starts fresh
        assert same(model.segmentation_head, part(fresh, "segmentation_head."))


def test_backbone_only_methods_load_the_backbone_and_explicit_asks_fail_at_plan(
    tmp_path, tiny_overrides
):
    from bench.config import ConfigError
    from bench.finetune import load_initial_weights
    from bench.methods.simclr import SimCLR
    from bench.models import build_segmentation_model
    from bench.store import RunStore
    from bench.sweep import SweepSpec, plan

    jobs = plan(SweepSpec(methods=("random", "simclr"), fractions=(1.0,), overrides=tiny_overrides))
    random_job, pretrain, finetune = jobs
    assert finetune.finetune.load == "backbone+aspp"  # the default asks for more ...
    store = RunStore(tmp_path)
    pretrained_run(
        store, pretrain, SimCLR(pretrain.method_params, pretrain.pretrain, 3, [0.5] * 3, [0.25] * 3)
    )
    model = build_segmentation_model(finetune.backbone, 3, num_classes=6)
    pretrained = store.run_dir(pretrain.job_id)
    assert (
        load_initial_weights(model, finetune, pretrained, 3)[1] == "backbone"
    )  # ... than there is
    assert load_initial_weights(model, random_job, None, 3)[1] == "none"
    with pytest.raises(ConfigError, match=r"finetune.load=all .* random, simclr.* glcnet"):
        plan(
            SweepSpec(
                methods=("random", "simclr", "glcnet"),
                overrides=(*tiny_overrides, "finetune.load=all"),
            )
        )
    plan(SweepSpec(methods=("simclr",), overrides=(*tiny_overrides, "finetune.load=backbone")))
