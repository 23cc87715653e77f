"""SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020), in the VISSL template that FALSE and GraSS build on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench import distributed
from bench.augment import ViewAugmentation, ViewRecipe
from bench.config import Settings, setting
from bench.losses import nt_xent
from bench.methods.base import PretrainingMethod, StepContext, register_method
from bench.models import BACKBONE_WIDTH, mlp_projector


@dataclass(frozen=True)
class SimCLRParams(Settings):
    # tau = 0.5 in the VISSL config of FALSE/GraSS; Chen et al. use 0.1-0.5 (Table 5).
    temperature: float = setting(0.5, gt=0)
    # Projector Linear(w, w) - ReLU - Linear(w, 128), no BN (Chen et al. 2020, sec. 2.1);
    # 0 means the backbone width w (2048 for ResNet-50, 512 for ResNet-18).
    projector_hidden_dim: int = setting(0, ge=0)
    projector_dim: int = setting(128, ge=1)
    # the ReLU between the two layers; FALSE's and GraSS's released VISSL head has none
    # (bench.models.mlp_projector)
    projector_relu: bool = setting(True, identity="if_set")
    # Views (Chen et al., appendix A): crop scale 0.08-1, h-flip, ColorJitter(0.8, 0.8, 0.8,
    # 0.2) with p 0.8, grayscale p 0.2, Gaussian blur p 0.5 with sigma in [0.1, 2].
    crop_scale: tuple[float, float] = setting((0.08, 1.0), gt=0, le=1, ordered=True)
    # brightness = contrast = saturation; hue = strength / 4 (at most 0.5)
    jitter_strength: float = setting(0.8, ge=0, le=2)
    jitter_prob: float = setting(0.8, ge=0, le=1)
    grayscale_prob: float = setting(0.2, ge=0, le=1)
    blur_prob: float = setting(0.5, ge=0, le=1)


@register_method("simclr")
class SimCLR(PretrainingMethod):
    """Two augmented views per image; NT-Xent over the 2N projected embeddings of the global
    batch."""

    Params = SimCLRParams
    summary = "SimCLR: NT-Xent between two augmented views (Chen et al. 2020)"
    # "Global BN": mean and variance aggregated over all devices (Chen et al. 2020, sec. 2.2);
    # VISSL's SimCLR config (FALSE, GraSS) converts BN to SyncBN too.
    sync_batchnorm = True
    preset_params = {
        "quick": {"crop_scale": (0.2, 1.0)},  # 64 px patches: keep crops >= 29 px
        "paper": {"projector_relu": False},  # the VISSL head FALSE's and GraSS's configs build
    }

    def __init__(self, params: SimCLRParams, *args, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        width = BACKBONE_WIDTH[self.config.backbone]
        self.projector = mlp_projector(
            width, params.projector_hidden_dim or width, params.projector_dim, params.projector_relu
        )
        s = params.jitter_strength
        self.views = ViewAugmentation(
            ViewRecipe(
                size=self.config.view_size,
                crop_scale=params.crop_scale,
                jitter=(s, s, s, s / 4),
                jitter_prob=params.jitter_prob,
                grayscale_prob=params.grayscale_prob,
                blur_prob=params.blur_prob,
            )
        )

    def two_view_embeddings(self, images: torch.Tensor, float32_head: bool = False):
        """``z`` = [projections of all first views; of all second views], ``[2N, D]``, over
        the global batch (gathered with gradients from every process); with
        ``float32_head`` the projector runs in float32 outside autocast."""
        views = torch.cat([self.views(images), self.views(images)], dim=0)
        features = self.embed(self.normalize(views))
        if not float32_head:
            return distributed.gather_views(self.projector(features))
        with torch.autocast(features.device.type, enabled=False):
            return distributed.gather_views(self.projector(features.float()))

    def health_views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.views(images), self.views(images)

    def training_step(self, images: torch.Tensor, ctx: StepContext):
        loss = nt_xent(self.two_view_embeddings(images), self.params.temperature)
        return loss, {}
