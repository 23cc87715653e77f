"""BYOL (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020).

Online network: backbone -> projector -> predictor; target network: EMA of the online
backbone and projector (no gradient), with momentum ``1 - (1 - 0.996)(cos(pi k/K) + 1)/2``
rising to 1 over training. Loss ``2 - 2 cos(q(z1), sg(z'2))`` plus the same with the views
swapped. The two views are augmented asymmetrically (blur p 1.0 / 0.1, solarize p 0 / 0.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.augment import ViewAugmentation, ViewRecipe
from bench.config import Settings, setting
from bench.methods.base import PretrainingMethod, StepContext, register_method
from bench.methods.ema import cosine_momentum, ema_update, frozen_copy
from bench.models import BACKBONE_WIDTH
from bench.precision import at_least_float32


def bn_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> BN -> ReLU -> Linear: BYOL's projector and predictor (sec. 3.3)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


@dataclass(frozen=True)
class BYOLParams(Settings):
    base_momentum: float = setting(0.996, ge=0, lt=1)  # tau_base (Grill et al., sec. 3.3)
    hidden_dim: int = setting(4096, ge=1)  # projector and predictor hidden width (sec. 3.3)
    projection_dim: int = setting(256, ge=1)
    # Views (Grill et al., table 6): crop 0.08-1, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8,
    # grayscale 0.2, blur p 1.0 / 0.1, solarize p 0 / 0.2.
    crop_scale: tuple[float, float] = setting((0.08, 1.0), gt=0, le=1, ordered=True)
    jitter: tuple[float, float, float, float] = setting(
        (0.4, 0.4, 0.2, 0.1), ge=0, le=1, identity="if_set"
    )
    blur_probs: tuple[float, float] = setting((1.0, 0.1), ge=0, le=1)  # view 1, view 2
    solarize_probs: tuple[float, float] = setting((0.0, 0.2), ge=0, le=1)


@register_method("byol")
class BYOL(PretrainingMethod):
    """Online network predicts the EMA target network's projection of the other view."""

    Params = BYOLParams
    summary = "BYOL: predict an EMA target's projection of the other view (Grill et al. 2020)"
    # The release normalises with statistics over all devices (cross-replica batch norm).
    # The loss has no negatives, so it stays a mean over each process's images; targets
    # stay identical everywhere because every process applies the same averaged update.
    sync_batchnorm = True
    # the EMA target network (Grill et al. 2020, sec. 3.1: "the target network ... is an
    # exponential moving average of the online parameters"), outside the optimiser
    frozen_modules = ("target_backbone", "target_projector")
    # common: the shared views' jitter (SimCLR's); the blur/solarize asymmetry is BYOL's own
    preset_params = {
        "quick": {"crop_scale": (0.2, 1.0)},
        "common": {"jitter": (0.8, 0.8, 0.8, 0.2)},
    }
    # LARS, LR 0.2 x batch/256, wd 1.5e-6, 10 warm-up epochs of 300, cosine per step to 0;
    # biases and BN excluded from LARS adaptation and weight decay (Grill et al., sec. 3.3
    # and appendix C).
    preset_pretrain = {
        "paper": {
            "optimizer": "lars",
            "lars_adapt": "decayed",
            "lr": 0.2,
            "lr_scaling": "linear",
            "weight_decay": 1.5e-6,
            "decay_norm": False,
            "decay_bias": False,
            "epochs": 300,
            "schedule": "warmup_cosine",
            "warmup_fraction": 10 / 300,
            "warmup_start_factor": 0.0,
            "final_lr_factor": 0.0,
        }
    }

    def __init__(self, params: BYOLParams, *args, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        width = BACKBONE_WIDTH[self.config.backbone]
        self.projector = bn_mlp(width, params.hidden_dim, params.projection_dim)
        self.predictor = bn_mlp(params.projection_dim, params.hidden_dim, params.projection_dim)
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projector = frozen_copy(self.projector)
        self.views = nn.ModuleList(
            ViewAugmentation(
                ViewRecipe(
                    size=self.config.view_size,
                    crop_scale=params.crop_scale,
                    jitter=params.jitter,
                    jitter_prob=0.8,
                    grayscale_prob=0.2,
                    blur_prob=blur,
                    solarize_prob=solarize,
                )
            )
            for blur, solarize in zip(params.blur_probs, params.solarize_probs, strict=True)
        )

    def health_views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.views[0](images), self.views[1](images)

    def training_step(self, images: torch.Tensor, ctx: StepContext):
        views = [self.normalize(augment(images)) for augment in self.views]
        # Each view is its own forward pass (own BN batch), as in the BYOL release.
        p1, p2 = (self.predictor(self.projector(self.embed(v))) for v in views)
        with torch.no_grad():
            t1, t2 = (
                self.target_projector(self.target_backbone(v)[-1].mean(dim=(2, 3))) for v in views
            )
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return loss, {}

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        momentum = cosine_momentum(self.params.base_momentum, ctx.step, ctx.total_steps)
        ema_update(self.target_backbone, self.backbone, momentum)
        ema_update(self.target_projector, self.projector, momentum)


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``2 - 2 cos(prediction, sg(target))`` (Grill et al., eq. 2)."""
    p = F.normalize(at_least_float32(prediction), dim=1)
    z = F.normalize(at_least_float32(target.detach()), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()
