"""How our forward-with-grad reaches ComfyUI's weights, exactly, on every loading path.

Autograd must see, at backward time, exactly the weight values the forward used. ComfyUI
stores and feeds weights in several ways, and each one is handled by construction:

1. Inference tensors. Loader nodes run under torch.inference_mode(), so weights are
   inference tensors, which autograd refuses to save. `trainable_view(module)` swaps
   every inference parameter and buffer, for the duration of a `with` block, for a
   normal tensor aliasing the same storage: no copy, and the shared module is exactly as
   before afterwards (torch.nn.utils.stateless restores the originals, also on error).
   Tensor subclasses (comfy-kitchen `QuantizedTensor`: scaled-fp8 and mixed-precision
   files on ComfyUI >= 0.33) are aliased through their flatten/unflatten protocol, each
   inner tensor (data, scales) aliased in turn; `Tensor.set_` on the wrapper would give
   a tensor with no data.
2. Quantised layers that also quantise their *input* (fp8 matmuls on GPUs that have
   them): rounding the activations has a zero derivative almost everywhere, so no exact
   gradient exists. Inside the block such mixed-precision layers run ComfyUI's own
   full-precision path (weights dequantised to the compute dtype, input unrounded),
   whose gradient is exact; legacy `fp8_ops` layers (`--fast fp8_matrix_mult`) have no
   such switch and are refused by name (`NotDifferentiable`).
3. Weights that are not the model's own storage when the forward uses them: per-call
   casts (fp8/fp16 weights computed in another dtype), offloaded layers copied into a
   reused cast buffer (the legacy patcher in lowvram), LoRA patches applied on the fly.
   A later layer may overwrite such a buffer before our backward runs. While the block
   is open, a saved-tensor hook snapshots (clones) every tensor autograd saves that is a
   constant (no grad_fn, no requires_grad) and not in the storage of a module opened by
   `trainable_view`. Resident weights cost nothing; a cast weight costs one copy, made
   when the layer saves it, and the copy dies with the step's graph.
4. Dynamic VRAM (ComfyUI >= 0.33 on NVIDIA, `ModelPatcherDynamic`): weights stay on the
   CPU and the forward reads cached GPU views (inference tensors once a stock node has
   run) or reused cast buffers, and pages can be evicted while a graph is alive. We
   never differentiate through a dynamic patcher: `gradient_patcher` returns ComfyUI's
   own non-dynamic delegate (the mechanism its CFGGuider uses for hooked conditioning),
   a separate, normally loaded copy, and refuses by name where none can be made.

On CPU, paths 3 and 4 never arise from ComfyUI itself; the tests exercise them directly.
"""
from __future__ import annotations

import contextlib
import threading

import torch
from torch.nn.utils.stateless import _reparametrize_module


class NotDifferentiable(ValueError):
    """A model (or the way it is loaded) whose exact gradient we cannot compute."""


# -- 1. inference tensors ---------------------------------------------------------------
def _is_wrapper_subclass(t: torch.Tensor) -> bool:
    return type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__")


def inner_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors holding t's data: t itself, or a subclass's flattened parts."""
    if not _is_wrapper_subclass(t):
        return [t]
    names, _ = t.__tensor_flatten__()
    return [x for n in names for x in inner_tensors(getattr(t, n))]


def normal_alias(t: torch.Tensor) -> torch.Tensor:
    """A non-inference tensor sharing t's storage, shape and strides (no copy)."""
    if _is_wrapper_subclass(t):
        names, ctx = t.__tensor_flatten__()
        inner = {n: normal_alias(getattr(t, n)) for n in names}
        return type(t).__tensor_unflatten__(inner, ctx, t.size(), t.stride())
    alias = torch.empty(0, dtype=t.dtype, device=t.device)
    alias.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
    return alias


def _needs_alias(t: torch.Tensor) -> bool:
    return any(x.is_inference() for x in inner_tensors(t))


# -- 2. layers that quantise activations --------------------------------------------------
def _quantises_input(m: torch.nn.Module) -> bool:
    """A comfy mixed-precision layer that would run an fp8 (or fp4/int8) matmul."""
    return getattr(m, "layout_type", None) is not None and getattr(m, "_full_precision_mm", True) is False


def _is_fp8_matmul_layer(m: torch.nn.Module) -> bool:
    weight = getattr(m, "weight", None)
    return (type(m).__qualname__.startswith("fp8_ops.") and isinstance(weight, torch.Tensor)
            and weight.dtype == torch.float8_e4m3fn and not getattr(m, "weight_function", None))


def check_differentiable(module: torch.nn.Module) -> None:
    if any(_is_fp8_matmul_layer(m) for m in module.modules()):
        raise NotDifferentiable(
            "model: ComfyUI runs this model's linear layers as fp8 matrix multiplications "
            "(--fast fp8_matrix_mult), which round every activation to fp8, so no exact gradient "
            "exists; restart ComfyUI without the fp8_matrix_mult --fast option to optimise with it "
            "(the weights can stay fp8)")


@contextlib.contextmanager
def full_precision_matmuls(module: torch.nn.Module):
    layers = [m for m in module.modules() if _quantises_input(m)]
    for m in layers:
        m._full_precision_mm = True
    try:
        yield
    finally:
        for m in layers:
            m._full_precision_mm = False


# -- 3. saved constants outside the model's storage -------------------------------------
class _SavedConstantGuard(threading.local):
    """Which storages belong to open views; the pack hook snapshots everything else."""

    def __init__(self):
        self.stable: list[set[int]] = []
        self.snapshots = 0          # tensors cloned so far (tests, memory accounting)
        self.snapshot_bytes = 0

    def is_stable(self, t: torch.Tensor) -> bool:
        return all(any(x.untyped_storage().data_ptr() in s for s in self.stable) for x in inner_tensors(t))

    def pack(self, t: torch.Tensor):
        if t.grad_fn is not None or t.requires_grad or self.is_stable(t):
            return t
        with torch.inference_mode(False):
            copy = t.clone()
        self.snapshots += 1
        self.snapshot_bytes += t.numel() * t.element_size()
        return copy

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t


GUARD = _SavedConstantGuard()


def _storage_ptrs(module: torch.nn.Module) -> set[int]:
    return {x.untyped_storage().data_ptr()
            for t in [*module.parameters(), *module.buffers()] if t is not None
            for x in inner_tensors(t) if x.device.type != "meta"}


@contextlib.contextmanager
def _guard_saved_constants(module: torch.nn.Module):
    outermost = not GUARD.stable
    GUARD.stable.append(_storage_ptrs(module))
    try:
        if outermost:
            with torch.autograd.graph.saved_tensors_hooks(GUARD.pack, GUARD.unpack):
                yield
        else:
            yield
    finally:
        GUARD.stable.pop()


@contextlib.contextmanager
def trainable_view(module: torch.nn.Module):
    """Within the block, autograd through `module` sees exactly the weights the forward used."""
    check_differentiable(module)
    with torch.inference_mode(False):
        swaps = {name: normal_alias(t) for name, t in
                 [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
                 if t is not None and _needs_alias(t)}
        reparametrized = (_reparametrize_module(module, swaps, tie_weights=True, strict=False) if swaps
                          else contextlib.nullcontext())
        with reparametrized, full_precision_matmuls(module), _guard_saved_constants(module):
            yield module


def to_normal(t: torch.Tensor) -> torch.Tensor:
    """A normal, detached copy of a (possibly inference) tensor, usable as an autograd leaf."""
    with torch.inference_mode(False):
        return t.detach().clone()


# -- 4. dynamic VRAM -----------------------------------------------------------------------
def gradient_patcher(patcher, who: str):
    """The ModelPatcher to differentiate through: `patcher` itself, or for a dynamic-VRAM
    patcher ComfyUI's non-dynamic delegate (loaded normally, weights held on the device).
    `who` is 'Node: input', used in the error."""
    is_dynamic = getattr(patcher, "is_dynamic", None)
    if is_dynamic is None or not is_dynamic():
        return patcher
    if getattr(patcher, "cached_patcher_init", None) is None:
        raise NotDifferentiable(
            f"{who}: this model is loaded with dynamic VRAM by a loader that cannot load it again "
            "without it, and its weights cannot be held for a backward pass; load it with a core "
            "loader (Load Checkpoint, Load Diffusion Model, Load VAE) or restart ComfyUI with "
            "--disable-dynamic-vram")
    delegate = getattr(patcher, "get_non_dynamic_delegate", None)
    return delegate() if delegate is not None else patcher.clone(disable_dynamic=True)
