"""The Adjoint Sampler's `gradient_memory` input: how much memory the exact gradient may
spend on keeping network graphs instead of recomputing them.

`"0"` recomputes every step's forward in the backward pass (memory flat in the number of
steps: one step's graph at a time); a number of megabytes keeps the graphs of as many
steps as fit (every step's graph is measured as it is made) and recomputes only the rest:
the same gradient, faster, with at most that much more memory; `"auto"` takes half of
what ComfyUI says is free on the model's device after its own reserve for inference
(the other half stays free for the loss: a VAE decode, a CLIP vision encode, previews),
on the CPU half of the free RAM.

`parse_memory_budget` checks the widget text alone (queue time); `resolve_memory_budget`
turns it into megabytes for `adjoint.api.gradient(memory_budget=...)`. Resolve "auto"
when the model is loaded (just before the gradient loop), so the weights are not
counted as free.
"""
from __future__ import annotations

import math
from typing import Union

import torch

INPUT = "gradient_memory"
DEFAULT = "auto"
# Of the memory free (on a GPU: after ComfyUI's inference reserve), the part "auto" may fill
# with kept graphs; the rest stays for the loss (VAE decode, CLIP vision), previews, the OS.
AUTO_FRACTION = 0.5
MB = 1024 * 1024
TOOLTIP = ("Memory for keeping the network's graphs during the exact gradient, instead of recomputing "
           "them: 0 recomputes every step (memory flat in the steps, one extra network forward per "
           "step); a number of megabytes keeps as many steps' graphs as fit and recomputes the rest "
           "(the same gradient, up to ~25 % faster when all fit, peak memory at most that much "
           "higher); auto uses half of the memory ComfyUI reports free on the model's device after "
           "its reserve for inference (on the CPU half the free RAM). The AdjointDEIS methods keep "
           "only the steps their backward evaluates.")


def _refusal(node_name: str, value) -> ValueError:
    return ValueError(f"{node_name}: {INPUT}: expected \"auto\", 0 (recompute every step) or a number of "
                      f"megabytes > 0, found {value!r}")


def parse_memory_budget(node_name: str, value) -> Union[str, float]:
    """The widget value as "auto" or megabytes (0.0 = recompute every step); a clear error
    naming the node and `gradient_memory` otherwise. Accepts numbers and their text."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        try:
            megabytes = float(text.removesuffix("mb").strip())
        except ValueError:
            raise _refusal(node_name, value) from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        megabytes = float(value)
    else:
        raise _refusal(node_name, value)
    if not math.isfinite(megabytes) or megabytes < 0:
        raise _refusal(node_name, value)
    return megabytes


def _device_of(model_patcher_or_device) -> torch.device:
    import comfy.model_management as mm
    if model_patcher_or_device is None:
        return mm.get_torch_device()
    if isinstance(model_patcher_or_device, (torch.device, str)):
        return torch.device(model_patcher_or_device)
    return torch.device(model_patcher_or_device.load_device)


def auto_memory_megabytes(model_patcher_or_device) -> float:
    """AUTO_FRACTION of ComfyUI's free memory on the device after its reserve: on a GPU the
    free memory (get_free_memory: the device's free plus what torch holds unused) less
    minimum_inference_memory() (0.8 GB plus ComfyUI's extra reserved VRAM); on the CPU
    (and MPS) the available RAM. Never below 0."""
    import comfy.model_management as mm
    device = _device_of(model_patcher_or_device)
    free = float(mm.get_free_memory(device))
    if device.type not in ("cpu", "mps"):
        free -= float(mm.minimum_inference_memory())
    return AUTO_FRACTION * max(free, 0.0) / MB


def resolve_memory_budget(node_name: str, value, model_patcher_or_device=None) -> float:
    """Megabytes for adjoint.api.gradient(memory_budget=...): the widget value parsed (see
    parse_memory_budget), "auto" resolved on the model's load device (a ModelPatcher, a
    torch.device, or None for ComfyUI's default device)."""
    budget = parse_memory_budget(node_name, value)
    if budget == "auto":
        return auto_memory_megabytes(model_patcher_or_device)
    return budget
