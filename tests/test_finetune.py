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
