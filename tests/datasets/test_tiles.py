"""Whole-tile evaluation and stratified label lists on prepared real-layout datasets:
tiles assembled from the prepared patches, and sweeps that use them through the CLI."""

from __future__ import annotations

import json

import numpy as np
from conftest import TINY
from fake_raw import write_potsdam, write_vaihingen

from bench.cli import main
from bench.datasets import DATASETS, create_dataset
from bench.datasets.isprs import POTSDAM_TEST, POTSDAM_TRAIN, VAIHINGEN_TEST
from bench.datasets.subsets import subset_file
from bench.store import RunStore

TRAINING = [item for item in TINY if not item.startswith("synthetic.")]


def test_tiles_assembled_from_prepared_patches_equal_the_raw_tiles(tmp_path):
    """Vaihingen's tiles have sizes that no patch grid divides; the flush last row and
    column of patches still cover them, and the assembled tile is the raw one."""
    truth = write_vaihingen(tmp_path / "raw")
    params = DATASETS.get("vaihingen").Params(patch_size=16)
    dataset = create_dataset("vaihingen", params, None, tmp_path / "data")
    dataset.prepare(tmp_path / "raw", seeds=(0,), fractions=(0.5,), progress=lambda _: None)
    layouts = dataset.test_tiles()
    assert sorted(t.tile_id for t in layouts) == sorted(f"area{a}" for a in VAIHINGEN_TEST)
    test = dataset.load_split("test")
    for layout in layouts:
        raw_image, raw_labels = truth[layout.tile_id]
        image, mask = layout.assemble(test)
        assert (layout.height, layout.width) == raw_labels.shape
        assert np.array_equal(image.numpy(), np.moveaxis(raw_image, -1, 0))
        assert np.array_equal(mask.numpy(), raw_labels)


def run_args(results, data, *extra):
    args = ["-q", "run", "--results", str(results), "--data-root", str(data)]
    args += ["--datasets", "potsdam", "--methods", "random", "--seeds", "0"]
    for item in [*TRAINING, "potsdam.patch_size=32", *extra]:
        args += ["--set", item]
    return args


def test_sweep_scores_whole_tiles_and_labels_every_training_tile(tmp_path, capsys):
    raw, data, results = tmp_path / "raw", tmp_path / "data", tmp_path / "results"
    write_potsdam(raw)  # 72 px tiles: patches at 0, 32 and 40 (flush with the edge)
    prepare = ["prepare", "potsdam", "--raw", str(raw), "--data-root", str(data)]
    assert main([*prepare, "--patch-size", "32", "--seeds", "0"]) == 0
    capsys.readouterr()
    chosen = ["finetune.evaluation=tiles", "finetune.eval_window=48", "finetune.eval_stride=20"]
    chosen.append("finetune.labels=stratified")
    assert main([*run_args(results, data, *chosen), "--fractions", "0.2"]) == 0
    (record,) = [r for r in RunStore(results).records() if r.get("kind") == "finetune"]
    assert record["status"] == "ok" and record["evaluated_on"] == "tiles"
    assert record["images_scored"] == len(POTSDAM_TEST)
    assert record["pixels"] <= len(POTSDAM_TEST) * 72 * 72  # each pixel once
    assert (record["eval_window"], record["eval_stride"]) == (48, 20)
    assert 0 <= record["image_miou"] <= 1 and record["labels"] == "stratified"
    assert record["protocol_overrides"]["evaluation"] == "tiles"
    listed = subset_file(data / "potsdam" / "patch32_stride32", 0.2, 0, "stratified")
    tiles = {line.rsplit("_y", 1)[0] for line in listed.read_text().split()}
    assert len(tiles) == len(POTSDAM_TRAIN)  # 20% of 9 patches per tile: every tile
    assert main(["-q", "table", "--results", str(results), "--metric", "image_miou"]) == 0
    out = capsys.readouterr().out
    assert "per-image mIoU" in out and "sliding windows of 48 px every 20 px" in out
    json.loads((results / record["job_id"] / "result.json").read_text())

    assert (
        main(
            [
                *run_args(
                    results,
                    data,
                    "finetune.evaluation=tiles",
                    "finetune.eval_window=80",
                    "finetune.eval_stride=40",
                )
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "finetune.eval_window=80 is larger than test tile" in err and "\n" not in err
