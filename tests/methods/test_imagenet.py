import pytest
import torch
import torchvision
from safetensors.torch import save_file

from bench.methods.imagenet import ImageNetInit, ImageNetParams, extend_first_conv
from bench.models import build_segmentation_model, load_backbone_strict


@pytest.fixture
def tv_weights(tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(autouse=True)
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("BENCH_IMAGENET_WEIGHTS", raising=False)


def test_file_from_param_loads_strictly_into_deeplab(tv_weights):
    path, state = tv_weights
    weights, source = ImageNetInit.initial_backbone(ImageNetParams(str(path)), "resnet18", 3)
    assert "fc.weight" not in weights and str(path) in source and "sha256" in source
    model = build_segmentation_model("resnet18", 3, 6)
    load_backbone_strict(model.encoder, weights)
    assert torch.equal(model.encoder.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])


def test_lookup_order_env_then_torch_cache_then_timm_cache(tv_weights, tmp_path, monkeypatch):
    path, state = tv_weights
    assert ImageNetInit.unavailable_reason(ImageNetParams(), "resnet18") is not None
    # timm's Hugging Face cache (safetensors)
    snapshot = tmp_path / "hf_home/hub/models--timm--resnet18.a1_in1k/snapshots/abc"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    _, source = ImageNetInit.initial_backbone(ImageNetParams(), "resnet18", 3)
    assert "model.safetensors" in source
    # torchvision's cache wins over timm's
    cache = tmp_path / "torch_home/hub/checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / "resnet18-f37072fd.pth")
    _, source = ImageNetInit.initial_backbone(ImageNetParams(), "resnet18", 3)
    assert str(cache) in source
    # the environment variable wins over caches
    monkeypatch.setenv("BENCH_IMAGENET_WEIGHTS", str(path))
    _, source = ImageNetInit.initial_backbone(ImageNetParams(), "resnet18", 3)
    assert str(path) in source


def test_missing_file_says_what_to_put_where():
    reason = ImageNetInit.unavailable_reason(ImageNetParams(), "resnet50")
    assert "resnet50-0676ba61.pth" in reason and "imagenet.weights" in reason
    assert "torchvision.models.resnet50(weights='IMAGENET1K_V1')" in reason
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageNetInit.initial_backbone(ImageNetParams("/no/such.pth"), "resnet18", 3)


def test_four_band_first_conv_follows_smp_rule(tv_weights):
    path, state = tv_weights
    weights, _ = ImageNetInit.initial_backbone(ImageNetParams(str(path)), "resnet18", 4)
    rgb = state["conv1.weight"]
    conv = weights["conv1.weight"]
    assert conv.shape == (64, 4, 7, 7)
    assert torch.allclose(conv[:, 1], rgb[:, 1] * 0.75) and torch.allclose(
        conv[:, 3], rgb[:, 0] * 0.75
    )
    load_backbone_strict(build_segmentation_model("resnet18", 4, 6).encoder, weights)
    assert torch.equal(extend_first_conv(rgb, 3), rgb)
