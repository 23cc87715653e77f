"""Preparing real datasets from tiny fake releases in their real layouts and formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from fake_raw import (
    IGNORE,
    colour_label,
    eroded,
    write_deepglobe,
    write_folder,
    write_loveda,
    write_png,
    write_potsdam,
    write_tiff,
    write_vaihingen,
)

from bench.config import DataConfig
from bench.datasets import DATASETS, DatasetError
from bench.datasets.isprs import ISPRS_COLOURS, POTSDAM_TEST, POTSDAM_TRAIN, IsprsParams
from bench.datasets.prepared import MANIFEST, STATE, patch_origins
from bench.datasets.subsets import subset_file


def make(dataset, data_root, bands="rgb", **params):
    cls = DATASETS.get(dataset)
    return cls(cls.Params(**params), DataConfig(bands=bands), data_root)


def patch_of(truth_image_hwc, labels, patch_id, size):
    y, x = (int(part[1:]) for part in patch_id.split("_")[-2:])
    return (
        np.moveaxis(truth_image_hwc[y : y + size, x : x + size], -1, 0),
        labels[y : y + size, x : x + size],
    )


def test_patch_grid_covers_every_pixel_with_the_last_patch_flush():
    assert patch_origins(6000, 256, 256)[-2:] == [5632, 5744]  # Potsdam: 24 per side
    assert len(patch_origins(6000, 256, 256)) == 24
    assert patch_origins(64, 32, 32) == [0, 32] and patch_origins(72, 32, 32) == [0, 32, 40]
    assert patch_origins(31, 32, 32) == []


@pytest.fixture(scope="module")
def potsdam(tmp_path_factory):
    root = tmp_path_factory.mktemp("potsdam")
    truth = write_potsdam(root / "raw")
    dataset = make("potsdam", root / "data", bands="rgbir", patch_size=32)
    messages = []
    manifest = dataset.prepare(root / "raw", progress=messages.append)
    return dataset, manifest, truth, messages, root


def test_potsdam_split_counts_and_pixels_round_trip(potsdam):
    dataset, manifest, truth, messages, _ = potsdam
    assert manifest["splits"]["train"]["tiles"] == POTSDAM_TRAIN
    assert manifest["splits"]["test"]["tiles"] == POTSDAM_TEST
    assert json.loads((dataset.prepared_dir / "split.json").read_text())["test"] == POTSDAM_TEST
    train, test = dataset.load_split("train"), dataset.load_split("test")
    assert len(train) == 24 * 9 and len(test) == 14 * 9  # 72 px tiles: 3 x 3 patches of 32
    assert manifest["bands"] == ["R", "G", "B", "IR"] and train.shape[1:] == (4, 32, 32)
    for patches in (train, test):
        for index in (0, 5, len(patches) - 1):
            image, mask = patches[index]
            tile = "_".join(patches.ids[index].split("_")[:2])
            want_image, want_labels = patch_of(*truth[tile], patches.ids[index], 32)
            assert np.array_equal(image.numpy(), want_image)
            assert np.array_equal(mask.numpy(), want_labels)  # colours -> ISPRS class order
    assert train[0][1][0, 0] == IGNORE  # black pixels are ignored, not a class
    assert any("[38/38]" in m for m in messages)


def test_potsdam_band_choice_and_statistics(potsdam):
    dataset, manifest, truth, _, root = potsdam
    rgb = make("potsdam", root / "data", bands="rgb", patch_size=32)
    assert rgb.in_channels == 3 and rgb.load_split("train")[:4][0].shape == (4, 3, 32, 32)
    images = dataset.load_split("train")[:][0].double() / 255
    mean, std = dataset.band_stats()
    assert np.allclose(mean, images.mean(dim=(0, 2, 3)).numpy(), atol=1e-9)
    assert np.allclose(std, images.permute(1, 0, 2, 3).reshape(4, -1).std(1, False), atol=1e-9)
    assert rgb.band_stats()[0] == mean[:3]
    counts = np.zeros(6, dtype=np.int64)
    for _, mask in (
        dataset.load_split("train")[i] for i in range(len(dataset.load_split("train")))
    ):
        counts += np.bincount(mask.numpy().ravel(), minlength=256)[:6]
    assert manifest["splits"]["train"]["class_pixels"] == counts.tolist()


def test_label_subsets_are_nested_written_and_reproducible(potsdam, tmp_path):
    dataset, _, _, _, root = potsdam
    small = subset_file(dataset.prepared_dir, 0.01, 0).read_text().split()
    large = subset_file(dataset.prepared_dir, 0.1, 0).read_text().split()
    assert len(small) == 3 and len(large) == 22  # ceil(0.01 * 216), ceil(0.1 * 216)
    assert large[: len(small)] == small  # 1% is inside 10%
    assert subset_file(dataset.prepared_dir, 0.1, 1).read_text().split() != large
    again = make("potsdam", tmp_path / "data", patch_size=32)
    again.prepare(root / "raw", seeds=(0,), fractions=(0.1,), progress=lambda m: None)
    assert subset_file(again.prepared_dir, 0.1, 0).read_text().split() == large


def test_prepare_again_is_a_no_op_and_force_redoes_it(potsdam):
    dataset, manifest, _, _, root = potsdam
    messages = []
    again = make("potsdam", root / "data", patch_size=32)
    assert again.prepare(root / "raw", progress=messages.append) == manifest
    assert "already prepared" in messages[0]


def test_interrupted_prepare_resumes_without_redoing_tiles(tmp_path):
    raw, data = tmp_path / "raw", tmp_path / "data"
    truth = write_potsdam(raw)
    label = raw / "5_Labels_all" / "top_potsdam_5_12_label.tif"
    good = label.read_bytes()
    label.write_bytes(good[: len(good) // 3])  # truncated download
    dataset = make("potsdam", data, patch_size=32)
    with pytest.raises(DatasetError, match="cannot read .*top_potsdam_5_12_label.tif"):
        dataset.prepare(raw, progress=lambda m: None)
    assert not (dataset.prepared_dir / MANIFEST).exists()  # nothing looks done
    assert (dataset.prepared_dir / STATE).exists()
    with pytest.raises(DatasetError, match="interrupted"):
        make("potsdam", data, patch_size=32).load_split("train")
    label.write_bytes(good)
    messages = []
    make("potsdam", data, patch_size=32).prepare(raw, progress=messages.append)
    assert "11 of 38 tiles were done" in messages[0]  # 5_12 is the 12th tile
    assert sum(m.startswith("[") for m in messages) == 27  # only the rest were read
    assert not (dataset.prepared_dir / STATE).exists()
    assert not (dataset.prepared_dir / "tiles").exists()
    clean = make("potsdam", tmp_path / "clean", patch_size=32)
    clean.prepare(raw, progress=lambda m: None)
    resumed = make("potsdam", data, patch_size=32)
    for split in ("train", "test"):
        a, b = resumed.load_split(split), clean.load_split(split)
        assert a.ids == b.ids
        assert np.array_equal(a[:][0].numpy(), b[:][0].numpy())
        assert np.array_equal(a[:][1].numpy(), b[:][1].numpy())
    assert truth  # the fake release was written


def test_unknown_colour_is_an_error_naming_colour_file_and_count(tmp_path):
    raw = tmp_path / "raw"
    truth = write_potsdam(raw)
    _, labels = truth["2_10"]
    coloured = colour_label(labels, ISPRS_COLOURS)
    coloured[10:12, 20:25] = (12, 34, 56)  # 10 pixels of a colour in no class
    write_tiff(raw / "5_Labels_all" / "top_potsdam_2_10_label.tif", coloured)
    with pytest.raises(DatasetError) as error:
        make("potsdam", tmp_path / "data", patch_size=32).prepare(raw, progress=lambda m: None)
    text = str(error.value)
    assert "top_potsdam_2_10_label.tif" in text and "(12, 34, 56) (10 pixels)" in text


def test_size_mismatch_missing_files_and_wrong_bands(tmp_path):
    raw = tmp_path / "raw"
    write_potsdam(raw)
    image = raw / "4_Ortho_RGBIR" / "top_potsdam_3_11_RGBIR.tif"
    write_tiff(image, np.zeros((72, 64, 4), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"3_11_RGBIR.tif is 64x72 .* label .* is 72x72"):
        make("potsdam", tmp_path / "data", patch_size=32).prepare(raw, progress=lambda m: None)
    write_tiff(image, np.zeros((72, 72, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match="3_11_RGBIR.tif has 3 bands; expected 4"):
        make("potsdam", tmp_path / "data", patch_size=32).prepare(raw, progress=lambda m: None)
    image.unlink()
    (raw / "5_Labels_all" / "top_potsdam_7_13_label.tif").unlink()
    with pytest.raises(DatasetError) as error:
        make("potsdam", tmp_path / "data", patch_size=32).prepare(raw, progress=lambda m: None)
    text = str(error.value)
    assert "2 expected files are missing" in text
    assert "top_potsdam_3_11_RGBIR.tif" in text and "top_potsdam_7_13_label.tif" in text
    assert "4_Ortho_RGBIR/top_potsdam_{r}_{c}_RGBIR.tif" in text  # the expected layout
    with pytest.raises(DatasetError, match="raw folder .*nowhere does not exist"):
        make("potsdam", tmp_path / "data").prepare(tmp_path / "nowhere")


def test_not_prepared_error_names_the_command_and_prepared_variants(potsdam):
    _, _, _, _, root = potsdam
    with pytest.raises(DatasetError) as error:
        make("potsdam", root / "data", patch_size=64).check_ready()
    text = str(error.value)
    assert "python -m bench prepare potsdam --raw" in text and "--patch-size 64" in text
    assert "patch32_stride32" in text  # what is prepared instead
    with pytest.raises(DatasetError, match="not prepared"):
        make("loveda_urban", root / "data").load_split("train")


def test_noboundary_labels_are_a_separate_prepared_copy(tmp_path):
    raw = tmp_path / "raw"
    write_potsdam(raw)
    params = IsprsParams(patch_size=32, labels="no_boundary")
    dataset = DATASETS.get("potsdam")(params, DataConfig(), tmp_path / "data")
    assert dataset.prepared_dir.name == "patch32_stride32_labels-no_boundary"
    with pytest.raises(DatasetError, match="top_potsdam_2_10_label_noBoundary.tif"):
        dataset.prepare(raw, progress=lambda m: None)


@pytest.mark.parametrize("dataset", ["potsdam", "vaihingen"])
def test_both_label_variants_in_one_prepared_folder(tmp_path, dataset):
    """With the release's _noBoundary files, the eroded test labels sit beside the full ones
    in the same folder (same name: job ids unchanged); with labels=no_boundary the roles
    swap. Training labels stay those of ``labels``."""
    write = write_potsdam if dataset == "potsdam" else write_vaihingen
    truth = write(tmp_path / "raw", no_boundary=True)
    full = make(dataset, tmp_path / "data", patch_size=16)
    manifest = full.prepare(tmp_path / "raw", progress=lambda m: None)
    assert full.prepared_dir.name == "patch16_stride16"
    assert manifest["label_variant"] == "full"
    assert manifest["label_variants"] == {"no_boundary": "test_masks_no_boundary.npy"}
    variants = full.test_label_variants()
    assert list(variants) == ["full", "no_boundary"]
    test = variants["full"]
    for index in (0, len(test) // 2, len(test) - 1):
        patch_id = test.ids[index]
        tile = patch_id.rsplit("_", 2)[0]
        _, want = patch_of(*truth[tile], patch_id, 16)
        image, mask = test[index]
        same_image, eroded_mask = variants["no_boundary"][index]
        assert np.array_equal(mask.numpy(), want)
        _, want_eroded = patch_of(truth[tile][0], eroded(truth[tile][1]), patch_id, 16)
        assert np.array_equal(eroded_mask.numpy(), want_eroded)
        assert np.array_equal(image.numpy(), same_image.numpy())
    eroded_pixels = variants["no_boundary"].read_masks(slice(None))
    assert (eroded_pixels == IGNORE).sum() > (test.read_masks(slice(None)) == IGNORE).sum()
    assert not (full.prepared_dir / "train_masks_no_boundary.npy").exists()

    other = make(dataset, tmp_path / "data", patch_size=16, labels="no_boundary")
    manifest = other.prepare(tmp_path / "raw", progress=lambda m: None)
    assert other.prepared_dir.name == "patch16_stride16_labels-no_boundary"
    assert manifest["label_variants"] == {"full": "test_masks_full.npy"}
    swapped = other.test_label_variants()
    assert np.array_equal(swapped["full"].read_masks(slice(None)), test.read_masks(slice(None)))


def test_a_label_variant_some_test_tiles_lack_is_not_kept(tmp_path):
    write_potsdam(tmp_path / "raw", no_boundary=True)
    (tmp_path / "raw/5_Labels_all_noBoundary/top_potsdam_7_13_label_noBoundary.tif").unlink()
    messages = []
    dataset = make("potsdam", tmp_path / "data", patch_size=32)
    manifest = dataset.prepare(tmp_path / "raw", progress=messages.append)
    assert manifest["label_variants"] == {}
    assert list(dataset.test_label_variants()) == ["full"]
    assert any("label variant no_boundary is not kept: test tiles 7_13" in m for m in messages)


def test_vaihingen_tiles_of_varying_size_and_irrg_bands(tmp_path):
    truth = write_vaihingen(tmp_path / "raw")
    dataset = make("vaihingen", tmp_path / "data", patch_size=16)
    manifest = dataset.prepare(tmp_path / "raw", progress=lambda m: None)
    assert manifest["bands"] == ["IR", "R", "G"]
    assert manifest["splits"]["train"]["tiles"][:3] == ["area1", "area3", "area5"]
    assert len(manifest["splits"]["test"]["tiles"]) == 17
    test = dataset.load_split("test")
    index = len(test) - 1
    image, mask = test[index]
    tile = test.ids[index].split("_")[0]
    want_image, want_labels = patch_of(*truth[tile], test.ids[index], 16)
    assert np.array_equal(image.numpy(), want_image) and np.array_equal(mask, want_labels)
    with pytest.raises(DatasetError, match="needs 4 bands but vaihingen has 3 .IR, R, G."):
        make("vaihingen", tmp_path / "data", bands="rgbir", patch_size=16).check_ready()


def test_deepglobe_thresholded_masks_and_stored_seeded_split(tmp_path):
    truth = write_deepglobe(tmp_path / "raw")
    dataset = make("deepglobe", tmp_path / "data", patch_size=16)
    manifest = dataset.prepare(tmp_path / "raw", progress=lambda m: None)
    split = json.loads((dataset.prepared_dir / "split.json").read_text())
    assert len(split["test"]) == 2 and len(split["train"]) == 8
    assert sorted(split["train"] + split["test"]) == sorted(truth)
    other = make("deepglobe", tmp_path / "data2", patch_size=16)
    other.prepare(tmp_path / "raw", progress=lambda m: None)
    assert json.loads((other.prepared_dir / "split.json").read_text()) == split
    reseeded = make("deepglobe", tmp_path / "data3", patch_size=16, split_seed=5)
    reseeded.prepare(tmp_path / "raw", progress=lambda m: None)
    assert json.loads((reseeded.prepared_dir / "split.json").read_text()) != split
    train = dataset.load_split("train")
    for index in (0, len(train) - 1):
        tile = train.ids[index].split("_")[0]
        _, want_labels = patch_of(*truth[tile], train.ids[index], 16)
        assert np.array_equal(train[index][1].numpy(), want_labels)  # unknown (black) ignored
    assert manifest["classes"]["names"][0] == "urban"


def test_loveda_values_map_to_classes_and_val_is_the_test_split(tmp_path):
    truth = write_loveda(tmp_path / "raw")
    dataset, messages = make("loveda_urban", tmp_path / "data", patch_size=16), []
    manifest = dataset.prepare(tmp_path / "raw", progress=messages.append)
    assert any("smallest usable fraction for loveda_urban is 0.037" in m for m in messages)
    assert not subset_file(dataset.prepared_dir, 0.01, 0).exists()
    assert subset_file(dataset.prepared_dir, 0.1, 0).exists()
    assert manifest["splits"]["test"]["tiles"] == ["Val_3", "Val_4", "Val_5"]
    test = dataset.load_split("test")
    tile = "_".join(test.ids[7].split("_")[:2])
    _, want_labels = patch_of(*truth[tile], test.ids[7], 16)
    assert np.array_equal(test[7][1].numpy(), want_labels)  # 0 -> ignore, k + 1 -> k
    with pytest.raises(DatasetError, match="Rural/images_png"):
        make("loveda_rural", tmp_path / "data").prepare(tmp_path / "raw")
    bad = tmp_path / "raw" / "Train" / "Urban" / "masks_png" / "1.png"
    write_png(bad, np.full((48, 48), 9, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"1.png has label values .*value 9 \(2304 pixels\)"):
        make("loveda_urban", tmp_path / "fresh", patch_size=16).prepare(tmp_path / "raw")


@pytest.mark.parametrize("mode", ["colour", "value"])
def test_folder_dataset_with_colour_or_value_classes(tmp_path, mode):
    truth = write_folder(tmp_path / "raw", mode=mode, bands=4)
    dataset = make("folder", tmp_path / "data", patch_size=16, name="mine")
    manifest = dataset.prepare(tmp_path / "raw", progress=lambda m: None)
    assert dataset.prepared_dir.parent == tmp_path / "data" / "folder" / "mine"
    assert manifest["classes"]["names"] == ["field", "roof", "lake"]
    assert manifest["bands"] == ["R", "G", "B", "IR"]
    reloaded = make("folder", tmp_path / "data", bands="rgbir", patch_size=16, name="mine")
    assert reloaded.class_names == ("field", "roof", "lake") and reloaded.num_classes == 3
    train = reloaded.load_split("train")
    stem = "_".join(train.ids[3].split("_")[:2])
    want_image, want_labels = patch_of(*truth[stem], train.ids[3], 16)
    assert np.array_equal(train[3][0].numpy(), want_image)
    assert np.array_equal(train[3][1].numpy(), want_labels)


def test_folder_split_files_class_file_errors_and_xiangtan(tmp_path):
    raw = tmp_path / "raw"
    write_folder(raw)
    (raw / "train.txt").write_text("scene_00\nscene_01\nscene_02\nscene_03\n")
    (raw / "test.txt").write_text("scene_04\n")
    with pytest.raises(DatasetError, match="1 images are in neither .* scene_05"):
        make("folder", tmp_path / "data", patch_size=16).prepare(raw)
    (raw / "test.txt").write_text("scene_04\nscene_05\n")
    manifest = make("xiangtan", tmp_path / "data", patch_size=16).prepare(
        raw, progress=lambda m: None
    )
    assert manifest["splits"]["test"]["tiles"] == ["scene_04", "scene_05"]
    assert (tmp_path / "data" / "xiangtan" / "patch16_stride16" / MANIFEST).is_file()
    (raw / "classes.yaml").unlink()
    with pytest.raises(DatasetError, match="no class file .*classes.yaml"):
        make("folder", tmp_path / "other", patch_size=16).prepare(raw)
    (raw / "classes.yaml").write_text("classes:\n  - {name: a, colour: [1, 2, 3]}\n  - {name: b}\n")
    with pytest.raises(DatasetError, match="class b needs a colour or a value"):
        make("folder", tmp_path / "other", patch_size=16).prepare(raw)


def test_patch_larger_than_a_tile_says_so(tmp_path):
    write_folder(tmp_path / "raw")
    with pytest.raises(DatasetError, match="smaller than the patch size 64"):
        make("folder", tmp_path / "data", patch_size=64).prepare(tmp_path / "raw")
    assert tifffile  # the real TIFF writer is what the fakes use
