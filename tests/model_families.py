"""Tiny instances of every model family users run, built with ComfyUI's own classes.

Each family is the real `BaseModel` subclass (its `extra_conds`, its model sampling, its
latent format) around the real network class with reduced widths and depths and random
seeded weights, loaded under torch.inference_mode() as ComfyUI's loaders leave them.
Conditioning has the family's real keys and shapes (reduced widths): where the family's
text encoder is too large to build, the test builds the tensors itself.

    from model_families import FAMILIES, family_or_skip
    fam = family_or_skip("flux1")            # pytest.skip with the reason where unavailable
    patcher = fam.build()                    # float32; fam.build(torch.float64) for FD tests
    positive = fam.conditioning(seed=1, batch=1)
    latent = torch.zeros(1, *fam.latent_shape)

The builders live in families_unet.py (SD1.5, SD2.x v-prediction, SDXL, Playground v2.5)
and families_dit.py (SD3.5, Flux.1, Flux.2, Chroma, Qwen-Image, Z-Image).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class Family:
    name: str                           # "sd15", "flux1", ...
    title: str                          # "SD1.5", "Flux.1 (dev, guidance embedded)", ...
    build: Callable                     # build(dtype=torch.float32) -> comfy ModelPatcher on CPU
    conditioning: Callable              # conditioning(seed, batch=1) -> CONDITIONING
    latent_shape: tuple                 # without the batch: (C, H, W), or (C, T, H, W) for 5-D latents
    cfg: float = 3.0                    # what users run it with (Flux-style guidance-distilled: 1.0)
    # why it cannot be built on this ComfyUI (a skip reason) or None; called at test time,
    # after ComfyUI is imported (modules here must not import comfy at import time: the
    # family names are read when pytest collects, before ComfyUI is loaded with --cpu)
    unavailable: Callable[[], Optional[str]] = lambda: None
    notes: dict = field(default_factory=dict)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def _load_builders():
    for module in ("families_unet", "families_dit"):
        try:
            __import__(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise


def family_or_skip(name: str) -> Family:
    import pytest
    _load_builders()
    fam = FAMILIES.get(name)
    if fam is None:
        pytest.skip(f"family {name!r} has no builder")
    from comfy_harness import load_comfy_in_process
    load_comfy_in_process()
    reason = fam.unavailable()
    if reason:
        pytest.skip(reason)
    return fam


def all_family_names() -> list[str]:
    _load_builders()
    return list(FAMILIES)
