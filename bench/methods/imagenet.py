"""Baseline ``imagenet``: supervised ImageNet ResNet weights as the fine-tuning start.

Nothing is downloaded (compute nodes are often offline). The weights file is looked up, in
this order: ``--set imagenet.weights=PATH``; ``$BENCH_IMAGENET_WEIGHTS``; torchvision's cache
(``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch``); timm's Hugging Face cache
(``$HF_HOME/hub``, default ``~/.cache/huggingface``). A torchvision ``.pth`` state_dict or a
timm ``.safetensors`` file both work (same ResNet key names); ``fc.*`` is dropped. For more
than 3 input bands the first convolution is extended the way smp does it: band ``i`` takes
the RGB filter ``i mod 3``, and all are scaled by ``3 / bands``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.config import Settings, setting
from bench.methods.base import BaselineMethod, register_method

WEIGHTS_ENV = "BENCH_IMAGENET_WEIGHTS"

# torchvision's IMAGENET1K_V1 files (what `torchvision.models.resnetXX(weights=...)` caches)
TORCHVISION_FILES = {
    "resnet18": ("resnet18-f37072fd.pth",),
    "resnet34": ("resnet34-b627a593.pth",),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
}
# timm model names whose Hugging Face cache may hold the weights
TIMM_MODELS = {
    "resnet18": ("resnet18.tv_in1k", "resnet18.a1_in1k"),
    "resnet34": ("resnet34.tv_in1k", "resnet34.a1_in1k"),
    "resnet50": ("resnet50.tv_in1k", "resnet50.a1_in1k"),
}


@dataclass(frozen=True)
class ImageNetParams(Settings):
    # Where the file is does not change the result; its SHA-256 goes into the record.
    weights: str = setting("", identity=False)


def candidate_files(backbone: str) -> list[Path]:
    """Cache locations searched when no path is given, in order."""
    torch_home = Path(os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch")
    hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    files = [torch_home / "hub" / "checkpoints" / name for name in TORCHVISION_FILES[backbone]]
    for model in TIMM_MODELS[backbone]:
        snapshots = hf_home / "hub" / f"models--timm--{model}" / "snapshots"
        files += sorted(snapshots.glob("*/model.safetensors"))
    return files


def find_weights(params: ImageNetParams, backbone: str) -> Path:
    given = params.weights or os.environ.get(WEIGHTS_ENV, "")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            source = "imagenet.weights" if params.weights else f"${WEIGHTS_ENV}"
            raise FileNotFoundError(f"ImageNet weights file {path} (from {source}) does not exist")
        return path
    for path in candidate_files(backbone):
        if path.is_file():
            return path
    searched = "\n  ".join(str(p) for p in candidate_files(backbone)[:2])
    raise FileNotFoundError(
        f"no ImageNet weights for {backbone} on this machine (nothing is downloaded at run "
        f"time). Looked in:\n  {searched}\n  and timm's cache. Fix: on a machine with "
        f'internet run\n  python -c "import torchvision; torchvision.models.{backbone}'
        f"(weights='IMAGENET1K_V1')\"\nthen copy ~/.cache/torch/hub/checkpoints/"
        f"{TORCHVISION_FILES[backbone][0]} to the same folder here, or pass "
        f"--set imagenet.weights=/path/to/{TORCHVISION_FILES[backbone][0]} "
        f"(or set ${WEIGHTS_ENV})."
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def extend_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB filters ``[O, 3, k, k]`` -> ``[O, C, k, k]``: band i copies filter i mod 3, scaled
    by 3 / C so the response to a grey image keeps its size (smp's rule)."""
    if in_channels == weight.shape[1]:
        return weight
    if in_channels < weight.shape[1]:
        return weight[:, :in_channels].clone()
    index = torch.arange(in_channels) % weight.shape[1]
    return weight[:, index] * (weight.shape[1] / in_channels)


@register_method("imagenet")
class ImageNetInit(BaselineMethod):
    Params = ImageNetParams
    summary = "supervised ImageNet weights from a local file (no download)"

    @classmethod
    def unavailable_reason(cls, params, backbone):
        try:
            find_weights(params, backbone)
        except FileNotFoundError as error:
            return str(error)
        return None

    @classmethod
    def initial_backbone(cls, params, backbone, in_channels):
        path = find_weights(params, backbone)
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
        if "conv1.weight" not in state:
            raise ValueError(f"{path} is not a ResNet state_dict (no conv1.weight)")
        state["conv1.weight"] = extend_first_conv(state["conv1.weight"], in_channels)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return state, f"ImageNet weights {path} (sha256 {digest})"
