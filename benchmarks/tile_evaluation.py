"""Whole-tile (sliding-window) evaluation: its cost, and how its scores compare with patch
evaluation of the same fine-tuned model.

    python benchmarks/tile_evaluation.py cost [--width 6000] [--rows 3] [--backbone resnet50]
    python benchmarks/tile_evaluation.py compare [--tile 512] [--patch 128] [--steps 150]

``cost`` times ``bench.evaluation.tile_logit_rows`` (window 256, stride 128) over a strip of
a ``--width`` px wide tile, ``--rows`` rows of windows high, and reports the peak resident
memory of the process; the memory the evaluation holds depends on the tile's width (one row
of windows and its logits), the time on the number of windows, so a 6000 x 6000 Potsdam
tile is extrapolated from the strip by its window count.

``compare`` renders tiles with the synthetic scene generator, writes them as a folder
release (PNG images, index-valued PNG masks), prepares them with the real ``prepare``,
fine-tunes DeepLabV3+ on the training patches and scores the same model on the test
patches and on the whole test tiles (window = patch, stride = patch / 2).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from bench.datasets.prepared import patch_origins
from bench.datasets.synthetic_scene import CLASS_NAMES, render_patch
from bench.evaluation import evaluate_patches, evaluate_tiles, tile_logit_rows
from bench.models import build_segmentation_model


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cost(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    model = build_segmentation_model(args.backbone, 4, 6).eval()
    height = 256 + 128 * (args.rows - 1)
    image = torch.randint(0, 256, (4, height, args.width), dtype=torch.uint8)
    before = peak_rss_mib()
    started = time.perf_counter()
    for _ in tile_logit_rows(
        model, image, lambda x: x.float() / 255, 256, 128, 8, torch.device("cpu"), False
    ):
        pass
    seconds = time.perf_counter() - started
    windows = len(patch_origins(height, 256, 128)) * len(patch_origins(args.width, 256, 128))
    full = len(patch_origins(6000, 256, 128)) ** 2
    print(f"{args.backbone}, strip {height}x{args.width} px: {windows} windows in {seconds:.1f}s")
    print(f"  {seconds / windows * 1000:.0f} ms per window; peak RSS {peak_rss_mib():.0f} MiB")
    print(f"  (before the evaluation: {before:.0f} MiB, model and the strip's image)")
    print(
        f"  6000x6000 tile: {full} windows, about {seconds / windows * full / 60:.1f} min; "
        f"held logits 6 x 256 x {args.width} float32 = {6 * 256 * args.width * 4 / 2**20:.0f} "
        f"MiB (+ the tile itself, 4 x 6000 x 6000 uint8 = {4 * 6000 * 6000 / 2**20:.0f} MiB)"
    )


def write_release(raw: Path, tiles: int, size: int) -> None:
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    for i in range(tiles):
        image, mask = render_patch(7, "train", i, size=size, ir_band=False)
        Image.fromarray(np.moveaxis(image, 0, -1)).save(raw / "images" / f"tile{i:02d}.png")
        Image.fromarray(mask).save(raw / "masks" / f"tile{i:02d}.png")
    classes = [{"name": name, "value": k} for k, name in enumerate(CLASS_NAMES)]
    (raw / "classes.yaml").write_text(yaml.safe_dump({"classes": classes}))


def compare(args: argparse.Namespace) -> None:
    from bench import SweepSpec
    from bench.finetune import FinetuneData, finetuning_model, finetuning_trainer, train_on_labels
    from bench.jobs import FinetuneJob
    from bench.sweep import plan

    with tempfile.TemporaryDirectory() as tmp:
        raw, data, run = Path(tmp) / "raw", Path(tmp) / "data", Path(tmp) / "run"
        write_release(raw, args.tiles, args.tile)
        from bench.datasets import create_dataset

        params = create_dataset("folder").Params(patch_size=args.patch, test_fraction=0.25)
        create_dataset("folder", params, None, data).prepare(raw, seeds=(0,), fractions=(1.0,))
        overrides = (
            f"folder.patch_size={args.patch}",
            "folder.test_fraction=0.25",
            f"finetune.steps={args.steps}",
            "finetune.batch_size=8",
        )
        spec = SweepSpec(methods=("random",), datasets=("folder",), fractions=(1.0,),
                         seeds=(0,), overrides=overrides)  # fmt: skip
        job = next(j for j in plan(spec) if isinstance(j, FinetuneJob))
        device = torch.device("cpu")
        finetune = FinetuneData.load(job, data, device)
        model, _, _ = finetuning_model(job, finetune.dataset, None, device)
        trainer = finetuning_trainer(job, model, device, run, finetune.length)
        run.mkdir()
        train_on_labels(job, trainer, finetune, run)
        common = (finetune.normalize, finetune.dataset.num_classes, 255)
        by_patch = evaluate_patches(model, finetune.test, *common, 16, device, False)
        layouts = finetune.dataset.test_tiles()
        window, stride = args.patch, args.patch // 2
        by_tile = evaluate_tiles(
            model, finetune.test, layouts, *common, window, stride, 16, device, False
        )
        print(f"{len(layouts)} test tiles of {args.tile} px, {len(finetune.test)} patches")
        for name, scores in (("patches", by_patch), (f"tiles {window}/{stride}", by_tile)):
            print(
                f"  {name:<14} mIoU {100 * scores['miou']:.2f}  Kappa {100 * scores['kappa']:.2f}"
                f"  OA {100 * scores['oa']:.2f}  per-image mIoU {100 * scores['image_miou']:.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cost")
    c.add_argument("--width", type=int, default=6000)
    c.add_argument("--rows", type=int, default=3)
    c.add_argument("--backbone", default="resnet50")
    m = sub.add_parser("compare")
    m.add_argument("--tiles", type=int, default=8)
    m.add_argument("--tile", type=int, default=512)
    m.add_argument("--patch", type=int, default=128)
    m.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    (cost if args.what == "cost" else compare)(args)


if __name__ == "__main__":
    main()
