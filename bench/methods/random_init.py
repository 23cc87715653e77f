"""Baseline ``random``: no pretraining; the encoder keeps smp's random initialisation."""

from __future__ import annotations

from bench.methods.base import BaselineMethod, register_method


@register_method("random")
class RandomInit(BaselineMethod):
    summary = "random initialisation, no pretraining (lower bound)"

    @classmethod
    def initial_backbone(cls, params, backbone, in_channels):
        return None, "random initialisation (smp defaults, seeded by the run seed)"
