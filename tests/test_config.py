import dataclasses

import pytest

from bench.config import (
    PRESETS,
    ConfigError,
    FinetuneConfig,
    PretrainConfig,
    build_section,
    get_preset,
    parse_overrides,
    stable_hash,
)
from bench.methods.simclr import SimCLRParams


def test_parse_overrides_groups_by_section():
    assert parse_overrides(["pretrain.lr=0.1", "pretrain.epochs=3", "simclr.temperature=0.2"]) == {
        "pretrain": {"lr": "0.1", "epochs": "3"},
        "simclr": {"temperature": "0.2"},
    }
    for bad in ("pretrain.lr", "lr=0.1", ".lr=1", "pretrain.=1"):
        with pytest.raises(ConfigError, match="section.field=value"):
            parse_overrides([bad])


def test_build_section_parses_types_and_layers():
    cfg = build_section(
        PretrainConfig, "pretrain", {"epochs": 5, "lr": 0.5}, {"epochs": "7", "amp": "false"}
    )
    assert cfg.epochs == 7 and cfg.lr == 0.5 and cfg.amp is False
    params = build_section(SimCLRParams, "simclr", {"crop_scale": "0.3,0.9"})
    assert params.crop_scale == (0.3, 0.9)
    assert build_section(FinetuneConfig, "finetune", {"output_stride": "8"}).output_stride == 8


@pytest.mark.parametrize(
    "values,match",
    [
        ({"lrr": "1"}, "valid keys for pretrain: pretrain.backbone"),
        ({"epochs": "two"}, "expected int"),
        ({"epochs": "1.5"}, "expected int"),
        ({"lr": "nan"}, "finite"),
        ({"optimizer": "adagrad"}, "not one of adam, adamw, sgd, lars"),
        ({"amp": "maybe"}, "true or false"),
        ({"epochs": "0"}, "epochs must be >= 1"),
    ],
)
def test_bad_values_fail_clearly(values, match):
    with pytest.raises(ConfigError, match=match):
        build_section(PretrainConfig, "pretrain", values)


def test_hash_ignores_non_identity_fields_only():
    base = PretrainConfig()
    assert stable_hash(base) == stable_hash(PretrainConfig())
    assert stable_hash(base) == stable_hash(dataclasses.replace(base, log_every=99))
    assert stable_hash(base) != stable_hash(dataclasses.replace(base, lr=base.lr * 2))


def test_presets_are_valid_sections():
    assert get_preset("quick").name == "quick"
    with pytest.raises(ConfigError, match="valid presets: quick, cpu, paper"):
        get_preset("huge")
    for preset in map(PRESETS.get, PRESETS.names()):
        build_section(PretrainConfig, "pretrain", preset.values.get("pretrain"))
        build_section(FinetuneConfig, "finetune", preset.values.get("finetune"))
    paper = build_section(PretrainConfig, "pretrain", PRESETS.get("paper").values["pretrain"])
    assert (paper.backbone, paper.batch_size, paper.view_size) == ("resnet50", 256, 224)
