"""Guidance Loss nodes: each builds a GUIDANCE_LOSS (adjoint.losses) for the Adjoint Sampler.

Nodes only turn ComfyUI types (LATENT, MASK) into the core's loss objects: masks are
resized to the latent the way ComfyUI resizes noise masks (bilinear), batches checked.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from comfy_api.latest import io

from ..adjoint.losses import METRICS, LatentTarget

GuidanceLoss = io.Custom("GUIDANCE_LOSS")
CATEGORY = "Adjoint Guidance/loss"


def latent_mask(node: str, mask, size: tuple[int, int], batch: int):
    """A ComfyUI MASK (H, W) or (B, H, W) as (B|1, 1, h, w) at the latent's size."""
    if mask is None:
        return None
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    if m.shape[0] not in (1, batch):
        raise ValueError(f"{node}: mask: the mask has batch size {m.shape[0]} but the latent has {batch}; "
                         "use one mask or one per sample")
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    return m.clamp(0.0, 1.0)


class LatentTargetLoss(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdjointGuidance_LossLatentTarget",
            display_name="Guidance Loss (Latent Target)",
            category=CATEGORY,
            description="Distance between the sampler's result and a target LATENT, per sample: pulls "
                        "the composition toward a reference without decoding anything.",
            inputs=[
                io.Latent.Input("target", tooltip="The latent to get close to (e.g. VAE Encode of a reference)."),
                io.Combo.Input("metric", options=list(METRICS), default="mse"),
                io.Float.Input("weight", default=1.0, min=0.0, max=1e4, step=0.01),
                io.Mask.Input("mask", optional=True,
                              tooltip="Only compare inside the mask (resized to the latent). An all-zero "
                                      "mask compares nothing: the loss is 0."),
            ],
            outputs=[GuidanceLoss.Output()],
        )

    @classmethod
    def execute(cls, target, metric, weight, mask=None) -> io.NodeOutput:
        samples = target["samples"]
        m = latent_mask("Guidance Loss (Latent Target)", mask, tuple(samples.shape[-2:]), samples.shape[0])
        with torch.inference_mode(False):
            t = samples.detach().clone()
            m = None if m is None else m.detach().clone()
        return io.NodeOutput(LatentTarget(t, metric=metric, weight=weight, mask=m))


NODES = [LatentTargetLoss]
