"""GraSS (Zhang et al., "GraSS: Contrastive Learning with Gradient-Guided Sampling Strategy
for Remote Sensing Image Semantic Segmentation", IEEE TGRS 2023).

Two stages in one run, on SimCLR's template (views, projector, NT-Xent, optimiser):

1. ID warm-up: plain SimCLR instance discrimination for ``warmup_epochs`` epochs. The
   release does not fix the length; the default here is one third of the epochs.
2. GS training, every step: forward the ``2N`` views keeping the backbone's last-stage map
   ``A`` (``[2N, C, h, w]``, the encoder's last feature); compute NT-Xent and its gradient
   with respect to ``A`` only (``torch.autograd.grad``: no weight gradient, no optimiser
   step); Grad-CAM ``H = mean_c(mean_hw(dL/dA) * A)`` (no ReLU, as in the release); per
   view, upsample ``H`` bilinearly to the view size, keep pixels above
   ``min + r (max - min)`` (``r = control_ratio``), label 8-connected regions, take the one
   holding the peak and crop the view to its bounding box, resized back to the view size
   (a view without such a region stays unchanged); then NT-Xent on the cropped views is the
   step's loss. The release normalises ``H`` by its maximum first; the threshold rule is
   invariant to that positive scaling, so it is not repeated here.

BN statistics update in both forwards of a GS step, as in the release. The per-view region
labelling (scipy.ndimage) is the only part that loops on the CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from bench import distributed
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
    # r, region threshold min + r (max - min) (GraSS sec. III-B)
    control_ratio: float = setting(0.5, ge=0, lt=1)


def grad_cam(features: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """``mean_c(w_c * A_c)`` with ``w_c = mean_hw(dL/dA_c)``: ``[B, C, h, w]`` -> ``[B, h, w]``."""
    weights = at_least_float32(gradients).mean(dim=(2, 3), keepdim=True)
    return (weights * at_least_float32(features)).mean(dim=1)


def peak_region_boxes(cam: torch.Tensor, size: int, ratio: float) -> torch.Tensor:
    """Per map, the bounding box ``(x0, y0, x1, y1)`` (pixel edges, end exclusive) of the
    8-connected region above ``min + ratio (max - min)`` that holds the peak, after bilinear
    upsampling to ``size``; the whole view when there is none (e.g. a flat map)."""
    up = F.interpolate(
        at_least_float32(cam[:, None]), size=(size, size), mode="bilinear", align_corners=False
    )[:, 0]
    low, high = up.amin(dim=(1, 2)), up.amax(dim=(1, 2))
    above = (up > (low + ratio * (high - low))[:, None, None]).cpu().numpy()
    peaks = up.flatten(1).argmax(dim=1).cpu().numpy()
    boxes = np.tile(np.array([0, 0, size, size], dtype=np.float32), (len(above), 1))
    for index, mask in enumerate(above):
        labels, _ = ndimage.label(mask, structure=EIGHT_CONNECTED)
        label = labels.flat[peaks[index]]
        if label == 0:  # nothing above the threshold (flat map)
            continue
        rows, cols = ndimage.find_objects((labels == label).astype(np.int32))[0]
        boxes[index] = (cols.start, rows.start, cols.stop, rows.stop)
    return torch.from_numpy(boxes).to(cam.device)


def crop_and_resize(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each image cropped to its box and resized back to its own size, in one batched
    ``grid_sample``: the same values as ``F.interpolate(crop, mode="bilinear",
    align_corners=False)`` on each crop (sample points clamped to the crop, not the image)."""
    batch, _, height, width = images.shape

    def source(start: torch.Tensor, stop: torch.Tensor, full: int) -> torch.Tensor:
        steps = torch.arange(full, device=images.device, dtype=torch.float32) + 0.5
        extent = (stop - start)[:, None]
        inside = (steps[None, :] * extent / full - 0.5).clamp(min=0.0)
        inside = torch.minimum(inside, extent - 1)
        return (start[:, None] + inside) / (full - 1) * 2 - 1  # align_corners=True coordinates

    boxes = boxes.float()
    xs = source(boxes[:, 0], boxes[:, 2], width)  # [B, W]
    ys = source(boxes[:, 1], boxes[:, 3], height)  # [B, H]
    grid = torch.stack(
        [xs[:, None, :].expand(batch, height, width), ys[:, :, None].expand(batch, height, width)],
        dim=-1,
    )
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", align_corners=True)


@register_method("grass")
class GraSS(SimCLR):
    """SimCLR warm-up, then contrast between Grad-CAM-guided crops of the two views."""

    Params = GraSSParams
    summary = "GraSS: SimCLR warm-up, then gradient-guided crops of the views (Zhang 2023)"
    # 350 epochs in the paper's recipe (METHODS.md); the rest is the VISSL SimCLR template.
    preset_pretrain = {"paper": {"epochs": 350}}

    def warmup_epochs(self) -> int:
        given = self.params.warmup_epochs
        return self.config.epochs // 3 if given is None else given

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
        boxes = peak_region_boxes(
            grad_cam(feature_map.detach(), gradient), views.shape[-1], self.params.control_ratio
        )
        search_seconds = time.perf_counter() - search_start
        cropped = crop_and_resize(views, boxes)
        z = self.projector(self.embed(self.normalize(cropped)))
        loss = nt_xent(distributed.gather_views(z), temperature)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / views.shape[-1] ** 2
        return loss, {
            "gs_stage": 1.0,
            "gs_region_seconds": search_seconds,
            "gs_crop_area": float(area.mean()),
            "gs_unchanged_views": float((area == 1.0).float().mean()),
        }
