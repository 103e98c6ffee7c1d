"""Let autograd run through modules whose weights ComfyUI loaded as inference tensors.

ComfyUI runs every node under torch.inference_mode(), so the model, VAE and CLIP-vision
weights are inference tensors, which autograd refuses to save for backward. We need
the weights saved (the VJP with respect to the input x needs Wᵀ), never their
gradients. `trainable_view(module)` swaps every inference parameter and buffer, for
the duration of a `with` block, for a *normal* tensor that aliases the same storage:
zero copies, zero extra memory, and the shared module is exactly as before afterwards
(torch.nn.utils.stateless puts the originals back, also on error).

Safe because nothing writes to the weights while our graphs are alive (inference
tensors carry no version counter, so autograd could not detect such a write).
"""
from __future__ import annotations

import contextlib

import torch
from torch.nn.utils.stateless import _reparametrize_module


def normal_alias(t: torch.Tensor) -> torch.Tensor:
    """A non-inference tensor sharing t's storage, shape and strides (no copy)."""
    alias = torch.empty(0, dtype=t.dtype, device=t.device)
    alias.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
    return alias


@contextlib.contextmanager
def trainable_view(module: torch.nn.Module):
    """Within the block, `module`'s inference weights behave as normal (non-grad) tensors."""
    with torch.inference_mode(False):
        swaps = {name: normal_alias(t) for name, t in
                 [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
                 if t is not None and t.is_inference()}
        if not swaps:
            yield module
            return
        with _reparametrize_module(module, swaps, tie_weights=True, strict=False):
            yield module


def to_normal(t: torch.Tensor) -> torch.Tensor:
    """A normal, detached copy of a (possibly inference) tensor, usable as an autograd leaf."""
    with torch.inference_mode(False):
        return t.detach().clone()
