"""Losses shared by several methods, one per file."""

from bench.losses.ntxent import masked_contrastive_loss, nt_xent, nt_xent_masks, partner_index

__all__ = ["masked_contrastive_loss", "nt_xent", "nt_xent_masks", "partner_index"]
