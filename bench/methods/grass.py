"""GraSS (Zhang et al., "GraSS: Contrastive Learning with Gradient-Guided Sampling Strategy
for Remote Sensing Image Semantic Segmentation", IEEE TGRS 2023).

Two stages in one run, on SimCLR's template (views, projector, NT-Xent, optimiser):

1. ID warm-up: plain SimCLR instance discrimination for ``warmup_epochs`` epochs. The
   release has no warm-up stage: its step (vissl/trainer/train_steps/GraSS_train_step.py)
   crops from the first step, starting from whatever weights it is given -- a SimCLR run's.
   ``restart_after_warmup`` makes the two stages two runs in one: the GS stage starts with a
   fresh optimiser state and the whole LR schedule again (:meth:`phase_epochs`).
2. GS training, every step: forward the ``2N`` views keeping the backbone's last-stage map
   ``A`` (``[2N, C, h, w]``); compute NT-Xent and its gradient with respect to ``A`` only
   (``torch.autograd.grad``; the release's ``loss.backward()`` also fills weight gradients,
   which its ``zero_grad`` then discards); Grad-CAM ``H = mean_c(mean_hw(dL/dA) * A)`` (no
   ReLU, as released); per view, the crop box of :func:`peak_region_boxes`; then NT-Xent on
   the cropped views is the step's loss.

The crop as released (``getHeadMapCut`` and ``DACrop``, lines 87-158): ``H`` divided by its
maximum (``divide_by_max``; a negative maximum flips the map's order), resized to the view
(cv2 bilinear, here ``F.interpolate`` with the same half-pixel centres), thresholded at
``min + r (max - min)``, 8-connected regions labelled, and the region chosen whose
*bounding box* holds the largest value, later regions winning ties (``region="bbox_max"``);
the view is cropped to that box and resized back with ``mode="nearest"``
(``crop_resize``); a view without a region (a constant map) stays unchanged. A map that is
constant up to float rounding (equal values whose channel mean differs by an ulp between
pixels) is treated as constant here; the release would crop it to the pixels that rounded
up. The options
``region="peak"`` (the region that holds the map's peak) and ``crop_resize="bilinear"``
are this harness's earlier reading of the paper.

BN statistics update in both forwards of a GS step, as in the release. The per-view region
labelling (scipy.ndimage) is the only part that loops on the CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from bench import distributed
from bench.augment import crop_and_resize
from bench.config import setting
from bench.losses import nt_xent
from bench.methods.base import StepContext, register_method
from bench.methods.simclr import SimCLR, SimCLRParams
from bench.precision import at_least_float32

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class GraSSParams(SimCLRParams):
    # ID warm-up length; None = one third of pretrain.epochs (the release leaves it open).
    warmup_epochs: int | None = setting(None, ge=0)
    # the GS stage as a second run: fresh optimiser state and the LR schedule again
    restart_after_warmup: bool = setting(False, identity="if_set")
    # r, region threshold min + r (max - min) (GraSS sec. III-B; release control_ratio 0.5)
    control_ratio: float = setting(0.5, ge=0, lt=1)
    # which region: the one whose bounding box holds the largest value (release) or the one
    # holding the peak; the map divided by its maximum first (release); crop resize mode
    region: Literal["peak", "bbox_max"] = setting("peak", identity="if_set")
    divide_by_max: bool = setting(False, identity="if_set")
    crop_resize: Literal["bilinear", "nearest"] = setting("bilinear", identity="if_set")


def grad_cam(features: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """``mean_c(w_c * A_c)`` with ``w_c = mean_hw(dL/dA_c)``: ``[B, C, h, w]`` -> ``[B, h, w]``."""
    weights = at_least_float32(gradients).mean(dim=(2, 3), keepdim=True)
    return (weights * at_least_float32(features)).mean(dim=1)


def peak_region_boxes(cam: torch.Tensor, size: int, ratio: float, **rule) -> torch.Tensor:
    """Per map, the crop box ``(x0, y0, x1, y1)`` (pixel edges, end exclusive) of
    :func:`region_box` after bilinear upsampling to ``size``; the whole view when there is
    no region (a map constant up to rounding). ``rule``: ``region`` ("peak" by default) and
    ``divide_by_max`` (False) of :class:`GraSSParams`."""
    cam = at_least_float32(cam)
    flat = cam.flatten(1)
    high, low = flat.amax(dim=1), flat.amin(dim=1)
    # constant up to rounding (a channel mean of equal values differs by an ulp between
    # pixels): no region, as for an exactly constant map in the release
    constant = (high - low <= 1e-5 * torch.maximum(high.abs(), low.abs())).cpu().numpy()
    if rule.get("divide_by_max", False):
        constant |= (high == 0).cpu().numpy()  # the release would divide by zero
        cam = cam / torch.where(high == 0, 1.0, high)[:, None, None]
    up = F.interpolate(cam[:, None], size=(size, size), mode="bilinear", align_corners=False)
    up = up[:, 0].cpu().numpy()
    boxes = np.tile(np.array([0, 0, size, size], dtype=np.float32), (len(up), 1))
    for index, heat in enumerate(up):
        if not constant[index]:
            boxes[index] = region_box(heat, ratio, rule.get("region", "peak"), boxes[index])
    return torch.from_numpy(boxes).to(cam.device)


def region_box(heat: np.ndarray, ratio: float, region: str, whole: np.ndarray) -> np.ndarray:
    """The box of the chosen 8-connected region of ``heat > min + ratio (max - min)``."""
    low, high = heat.min(), heat.max()
    labels, count = ndimage.label(heat > low + ratio * (high - low), structure=EIGHT_CONNECTED)
    if count == 0:
        return whole
    objects = ndimage.find_objects(labels)  # bounding boxes, in label (raster) order
    if region == "peak":
        chosen = objects[labels.flat[int(np.argmax(heat))] - 1]
    else:  # the last region whose bounding box holds the largest value (DACrop, >=)
        values = [heat[box].max() for box in objects]
        chosen = objects[len(values) - 1 - int(np.argmax(values[::-1]))]
    rows, cols = chosen
    return np.array([cols.start, rows.start, cols.stop, rows.stop], dtype=np.float32)


@register_method("grass")
class GraSS(SimCLR):
    """SimCLR warm-up, then contrast between Grad-CAM-guided crops of the two views."""

    Params = GraSSParams
    summary = "GraSS: SimCLR warm-up, then gradient-guided crops of the views (Zhang 2023)"
    # Release: the VISSL SimCLR recipe of the paper preset for 350 epochs of GS training
    # (grass_1gpu_resnet_b256.yaml num_epochs), after an ID warm-up run of SimCLR's 200 (a
    # choice: the release does not give its length), as two runs; the crop as released.
    preset_pretrain = {"paper": {"epochs": 200 + 350}}
    preset_params = {
        "quick": {"crop_scale": (0.2, 1.0)},
        "paper": {
            "projector_relu": False,
            "warmup_epochs": 200,
            "restart_after_warmup": True,
            "region": "bbox_max",
            "divide_by_max": True,
            "crop_resize": "nearest",
        },
    }

    def warmup_epochs(self) -> int:
        given = self.params.warmup_epochs
        return self.config.epochs // 3 if given is None else given

    def phase_epochs(self) -> tuple[int, ...]:
        """With ``restart_after_warmup``, the ID warm-up and the GS training as two phases."""
        warmup, epochs = self.warmup_epochs(), self.config.epochs
        if self.params.restart_after_warmup and 0 < warmup < epochs:
            return (warmup, epochs - warmup)
        return (epochs,)

    def training_step(self, images: torch.Tensor, ctx: StepContext):
        if ctx.epoch < self.warmup_epochs():
            loss, logs = super().training_step(images, ctx)
            return loss, {**logs, "gs_stage": 0.0}
        temperature = self.params.temperature
        views = torch.cat([self.views(images), self.views(images)], dim=0)
        feature_map = self.backbone(self.normalize(views))[-1]
        z = distributed.gather_views(self.projector(feature_map.mean(dim=(2, 3))))
        # on several processes the gradient of the global loss arrives summed over processes,
        # a positive factor that the threshold rule below ignores
        (gradient,) = torch.autograd.grad(nt_xent(z, temperature), feature_map)
        search_start = time.perf_counter()
        p = self.params
        boxes = peak_region_boxes(
            grad_cam(feature_map.detach(), gradient),
            views.shape[-1],
            p.control_ratio,
            region=p.region,
            divide_by_max=p.divide_by_max,
        )
        search_seconds = time.perf_counter() - search_start
        cropped = crop_and_resize(views, boxes, p.crop_resize)
        z = self.projector(self.embed(self.normalize(cropped)))
        loss = nt_xent(distributed.gather_views(z), temperature)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / views.shape[-1] ** 2
        return loss, {
            "gs_stage": 1.0,
            "gs_region_seconds": search_seconds,
            "gs_crop_area": float(area.mean()),
            "gs_unchanged_views": float((area == 1.0).float().mean()),
        }
