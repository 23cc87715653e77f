"""Does the data loader keep up with training? Patches/s of the prepared-data loader vs the
patches/s a pretraining and a fine-tuning step consume, measured in one process.

    python benchmarks/loader_throughput.py [--patch-size 256] [--batch 64] [--steps 3]

It writes a fake folder-layout release of 4-band 1024 px TIFFs, prepares it with the real
``prepare`` (memory-mapped ``.npy`` per split), then times (1) the pretraining DataLoader
exactly as ``bench.pretrain`` builds it (shuffled, batch ``--batch``) over the prepared
patches, (2) fine-tuning batch reads as ``bench.finetune`` does them, and (3) a SimCLR
training step and a DeepLabV3+ fine-tuning step on this machine at the same batch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

from bench.config import DataConfig, PretrainConfig
from bench.datasets import DATASETS
from bench.methods import METHODS
from bench.methods.base import StepContext
from bench.models import DeepLabHead, build_segmentation_model
from bench.pretrain import shuffled_batches


def write_release(raw: Path, images: int, size: int) -> None:
    rng = np.random.default_rng(0)
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    classes = [{"name": f"c{k}", "value": k} for k in range(6)]
    (raw / "classes.yaml").write_text(yaml.safe_dump({"classes": classes}))
    for n in range(images):
        tifffile.imwrite(
            raw / "images" / f"{n}.tif", rng.integers(0, 256, (size, size, 4), np.uint8)
        )
        tifffile.imwrite(raw / "masks" / f"{n}.tif", rng.integers(0, 6, (size, size), np.uint8))


def rate(fn, count: int, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return count * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--view-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--images", type=int, default=24)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_release(root / "raw", args.images, 1024)
        cls = DATASETS.get("folder")
        dataset = cls(cls.Params(patch_size=args.patch_size), DataConfig(bands="rgbir"), root)
        start = time.perf_counter()
        dataset.prepare(root / "raw", seeds=(0,), fractions=(0.1,), progress=lambda m: None)
        prepare_seconds = time.perf_counter() - start
        train = dataset.load_split("train")

        def cycling(make_loader):
            batches = iter(())

            def next_batch():
                nonlocal batches
                try:
                    return next(batches)
                except StopIteration:
                    batches = iter(make_loader())
                    return next(batches)

            return next_batch

        generator = torch.Generator().manual_seed(0)
        next_batch = cycling(lambda: shuffled_batches(train, args.batch, generator))
        item_by_item = cycling(
            lambda: DataLoader(train, batch_size=args.batch, shuffle=True, drop_last=True)
        )
        item_rate = rate(item_by_item, args.batch, 10)
        loader_rate = rate(next_batch, args.batch, 10)
        labelled = train.subset(np.arange(len(train))[::2])
        order = [np.random.default_rng(i).choice(len(labelled), 8) for i in range(20)]
        finetune_read_rate = rate(lambda: labelled[order[0]], 8, 20)

        config = PretrainConfig(view_size=args.view_size, batch_size=args.batch)
        method_cls = METHODS.get("simclr")
        method = method_cls(method_cls.Params(), config, 4, *dataset.band_stats())
        optimizer = torch.optim.Adam(method.parameters(), 1e-3)
        images = next_batch()[0].float().div_(255)

        def pretrain_step():
            loss, _ = method.training_step(images, StepContext(0, 10, 0))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        pretrain_rate = rate(pretrain_step, args.batch, args.steps)
        model = build_segmentation_model("resnet18", 4, 6, DeepLabHead(output_stride=8))
        fine_opt = torch.optim.Adam(model.parameters(), 1e-3)
        x, y = labelled[order[0]]

        def finetune_step():
            loss = F.cross_entropy(model(x.float() / 255), y.long())
            fine_opt.zero_grad()
            loss.backward()
            fine_opt.step()

        finetune_rate = rate(finetune_step, 8, args.steps)
    print(f"prepared {len(train)} train patches of {args.patch_size} px in {prepare_seconds:.1f}s")
    print(f"item-by-item loader  {item_rate:8.0f} patches/s  (DataLoader, batch {args.batch})")
    print(f"pretraining loader   {loader_rate:8.0f} patches/s  (shuffled_batches, as used)")
    print(f"SimCLR R18 step      {pretrain_rate:8.1f} patches/s  (views {args.view_size} px)")
    print(f"  loader / step      {loader_rate / pretrain_rate:8.1f}x")
    print(f"fine-tuning reads    {finetune_read_rate:8.0f} patches/s  (batch 8)")
    print(f"DeepLabV3+ R18 step  {finetune_rate:8.1f} patches/s")
    print(f"  reads / step       {finetune_read_rate / finetune_rate:8.1f}x")


if __name__ == "__main__":
    main()
