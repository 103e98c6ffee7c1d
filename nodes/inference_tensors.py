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
   when the layer saves it, and the copy dies with the step's graph. The copy is what
   makes graphs kept across steps (a memory budget, adjoint/memory.py) safe: a later
   step reusing the cast buffer writes into the buffer, not into a kept graph.
   The same hook measures kept graphs for the core: saved-tensor hooks do not nest (the
   innermost wins), so instead of the core installing a counting hook inside ours, ours
   reports every tensor it packs to `adjoint.memory` (`record_saved`), as new memory where
   it would not exist otherwise (activations and its own copies; never resident weights,
   never the step's inputs), and declares itself with `adjoint.memory.reporting_hook`.
   Kept tensors are version-checked when unpacked, also when their graph was kept across
   later steps, so an in-place write by a later step raises (GraphSafety then runs again
   with snapshots).
4. Dynamic VRAM (ComfyUI >= 0.33 on NVIDIA, `ModelPatcherDynamic`): weights stay on the
   CPU and the forward reads cached GPU views (inference tensors once a stock node has
   run) or reused cast buffers, and pages can be evicted while a graph is alive. We
   never differentiate through a dynamic patcher: `gradient_patcher` returns ComfyUI's
   own non-dynamic delegate (the mechanism its CFGGuider uses for hooked conditioning),
   a separate, normally loaded copy, and refuses by name where none can be made.

5. Differentiable code paths: ComfyUI >= 0.33 runs some layers (RoPE) through kernels
   without a backward formula unless `comfy.model_management.in_training` is set, its own
   switch for gradients; it is set while a view is open.
6. Code that writes in place into tensors autograd saved (Flux's residual adds), or holds
   inference tensors outside modules (latent formats' mean/std): `GraphSafety` runs the
   work again with every saved activation snapshotted, or with inference arguments
   aliased, when autograd reports exactly that hazard.
7. Weights ComfyUI rewrites in place during sampling (`comfy.utils.copy_to_param`, via
   `.data`, which no version counter sees: hooked LoRA weights switching, a patched model
   unloaded): while the guard is open such writes are counted per storage, and a saved
   weight written after it was saved raises when unpacked; GraphSafety then keeps no
   graphs across steps (the memory budget's graphs are what could span a rewrite).

On CPU, paths 3 and 4 never arise from ComfyUI itself; the tests exercise them directly.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Optional

import torch
from torch.nn.utils.stateless import _reparametrize_module

from ..adjoint import memory


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
        self.snapshot_activations = False   # also copy activations (GraphSafety escalation)
        self.snapshots = 0          # tensors cloned so far (tests, memory accounting)
        self.snapshot_bytes = 0
        self.weight_writes: dict[int, int] = {}   # storage → in-place rewrites seen (7.)

    def is_stable(self, t: torch.Tensor) -> bool:
        return all(any(x.untyped_storage().data_ptr() in s for s in self.stable) for x in inner_tensors(t))

    def writes_to(self, t: torch.Tensor) -> int:
        return sum(self.weight_writes.get(x.untyped_storage().data_ptr(), 0) for x in inner_tensors(t))

    def note_write(self, t: torch.Tensor) -> None:
        for x in inner_tensors(t):
            ptr = x.untyped_storage().data_ptr()
            self.weight_writes[ptr] = self.weight_writes.get(ptr, 0) + 1

    def pack(self, t: torch.Tensor):
        stable = self.is_stable(t)
        if stable or (t.requires_grad and (t.grad_fn is None or not self.snapshot_activations)):
            # kept by reference: with a saved-tensor hook installed autograd no longer checks
            # the version counter itself, so we do (an in-place write must not pass silently)
            # an activation is alive because the graph keeps it; weights and inputs exist anyway
            memory.record_saved(t, new_memory=not stable and t.grad_fn is not None)
            return _Kept(t.detach(), t._version, self.writes_to(t) if stable else None)
        with torch.inference_mode(False):
            copy = t.detach().clone()
        self.snapshots += 1
        self.snapshot_bytes += t.numel() * t.element_size()
        memory.record_saved(copy)
        return copy

    @staticmethod
    def unpack(packed) -> torch.Tensor:
        if isinstance(packed, _Kept):
            if packed.tensor._version != packed.version:
                raise RuntimeError(
                    "one of the variables needed for gradient computation has been modified by an inplace "
                    f"operation: a saved tensor of shape {tuple(packed.tensor.shape)} is at version "
                    f"{packed.tensor._version}; expected version {packed.version}")
            if packed.writes is not None and GUARD.writes_to(packed.tensor) != packed.writes:
                raise RuntimeError(
                    f"a weight of shape {tuple(packed.tensor.shape)} saved for the gradient {REWRITTEN} "
                    "(comfy.utils.copy_to_param: hooked LoRA weights switching between conditionings or "
                    "steps, or the model unloaded) before the backward pass used it")
            return packed.tensor
        return packed


class _Kept:
    """A saved tensor kept by reference, with the version it had when autograd saved it
    and, for a resident weight, how often ComfyUI had rewritten its storage (7.). It holds
    a detached alias (same storage and version counter): the tensor itself would make a
    reference cycle through its grad_fn when it is an output saved by its own node, and a
    graph never differentiated (an interrupt, graphs kept across steps) would leak."""
    __slots__ = ("tensor", "version", "writes")

    def __init__(self, tensor: torch.Tensor, version: int, writes: Optional[int] = None):
        self.tensor, self.version, self.writes = tensor, version, writes


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
            with torch.autograd.graph.saved_tensors_hooks(GUARD.pack, GUARD.unpack), \
                    memory.reporting_hook(GUARD.pack), _watch_weight_writes():
                yield
        else:
            yield
    finally:
        GUARD.stable.pop()


# -- 7. weights rewritten in place behind autograd's back ----------------------------------
REWRITTEN = "was rewritten in place"


@contextlib.contextmanager
def _watch_weight_writes():
    """ComfyUI rewrites weights in place through `comfy.utils.copy_to_param` (`.data.copy_`:
    no version counter sees it) when hooked LoRA weights switch (per conditioning group and
    per hook keyframe, during sampling) and when a patched model is unloaded. A graph that
    saved such a weight by reference (resident weights are never copied) would then see
    the new values: while the guard is open every such write is counted per storage, and
    unpacking a weight written since it was saved raises (GraphSafety's `keep_no_graphs`,
    or an error where even one step's graph is hit)."""
    import comfy.utils
    original = comfy.utils.copy_to_param
    GUARD.weight_writes.clear()          # counts start with the outermost view

    def copy_to_param_watched(obj, attr, value):
        GUARD.note_write(comfy.utils.get_attr(obj, attr))
        return original(obj, attr, value)
    comfy.utils.copy_to_param = copy_to_param_watched
    try:
        yield
    finally:
        comfy.utils.copy_to_param = original


@contextlib.contextmanager
def comfy_training_paths():
    """ComfyUI's own switch to its differentiable code paths (what its training node sets):
    on 0.33, RoPE (Flux, Chroma, Qwen-Image, Flux.2) and fused RMSNorm+RoPE (Z-Image) run
    comfy-kitchen kernels without a backward formula unless `in_training` is set; with it
    they run plain torch, equal to round-off. Absent on older ComfyUI: nothing to do."""
    import comfy.model_management as mm
    if not hasattr(mm, "in_training"):
        yield
        return
    previous = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = previous


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
        with reparametrized, full_precision_matmuls(module), _guard_saved_constants(module), \
                comfy_training_paths():
            yield module


# -- 6. code that writes in place, or holds inference tensors outside modules ------------
# Functions returning several views of one tensor: autograd forbids writing into such a view
# in place once gradients flow ("Output 0 of Unbind is a view and is being modified inplace").
MULTI_VIEW_FUNCTIONS = frozenset({"unbind", "split", "chunk", "tensor_split", "split_with_sizes",
                                  "hsplit", "vsplit", "dsplit"})


class _GraphSafetyMode(torch.overrides.TorchFunctionMode):
    """Under grad mode only (the forward-with-grad; plain forwards run untouched):
    - alias_inference: every inference tensor handed to a torch function is replaced by a
      normal alias (no copy), except the tensor an in-place function writes to, so
      ComfyUI's own refusal to write into shared inference tensors still holds;
    - copy_views: the outputs of functions returning several views (unbind, split, chunk)
      come back as copies, which code may then scale in place (ComfyUI's ControlNet merge
      does `x *= strength` on unbound outputs) without autograd refusing it."""

    def __init__(self, alias_inference: bool, copy_views: bool):
        super().__init__()
        self.alias_inference, self.copy_views = alias_inference, copy_views

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if self.alias_inference:
            writes = name.endswith("_") or name.startswith("__i") or name == "__setitem__"
            first, rest = (args[:1], args[1:]) if writes else ((), args)
            rest, kwargs = torch.utils._pytree.tree_map_only(
                torch.Tensor, lambda t: normal_alias(t) if _needs_alias(t) else t, (rest, kwargs))
            args = (*first, *rest)
        out = func(*args, **kwargs)
        if self.copy_views and name in MULTI_VIEW_FUNCTIONS and isinstance(out, (tuple, list)):
            out = type(out)(o.clone() if isinstance(o, torch.Tensor) else o for o in out)
        return out


class GraphSafety:
    """How a forward-with-grad is protected, escalated when autograd reports a hazard.

    Plain runs cost nothing extra. Three failures are recoverable exactly, by running again:
    - "modified by an inplace operation": code that writes in place into a tensor autograd
      saved (Flux's and Chroma's residual adds after a LayerNorm, FreeU's slice scaling);
      again with every saved activation snapshotted when saved (memory: one copy of what
      the step's graph saves);
    - "Inference tensors cannot be saved for backward": inference tensors held outside
      module parameters (a latent format's mean/std, a ControlNet's weights); again with
      every such tensor aliased as a normal one when a torch function receives it;
    - "is a view and is being modified inplace": in-place writes into the outputs of
      unbind/split/chunk (a Fun ControlNet's outputs, scaled by ComfyUI's merge); again
      with those outputs copied;
    - "was rewritten in place": ComfyUI rewrote a resident weight that a graph kept from
      an earlier step had saved (hooked LoRA weights switching between steps, 7.); again
      keeping no graphs across steps (memory budget 0: each step recomputed just before
      its VJP). Where the rewrite falls inside one step (two hook groups in one CFG batch)
      that fails again and is raised.
    Anything else, or the same failure again, is raised: never a silently wrong gradient.
    Every remedy acts under grad mode only; the tests check the gradient it gives against
    finite differences of the plain forward.
    """
    HAZARDS = {"snapshot_activations": "modified by an inplace operation",
               "alias_inference_arguments": "Inference tensors cannot be saved for backward",
               "copy_multi_view_outputs": "is a view and is being modified inplace",
               "keep_no_graphs": REWRITTEN}

    def __init__(self):
        self.active: list[str] = []

    def escalate(self, error: BaseException) -> bool:
        for remedy, message in self.HAZARDS.items():
            if message in str(error) and remedy not in self.active:
                self.active.append(remedy)
                return True
        return False

    @contextlib.contextmanager
    def applied(self):
        previous = GUARD.snapshot_activations
        GUARD.snapshot_activations = "snapshot_activations" in self.active
        alias = "alias_inference_arguments" in self.active
        copy_views = "copy_multi_view_outputs" in self.active
        mode = _GraphSafetyMode(alias, copy_views) if alias or copy_views else contextlib.nullcontext()
        no_kept_graphs = memory.graphs_not_kept() if "keep_no_graphs" in self.active else contextlib.nullcontext()
        try:
            with mode, no_kept_graphs:
                yield
        finally:
            GUARD.snapshot_activations = previous


def run_protected(module: torch.nn.Module, safety: GraphSafety, run, on_escalate=None):
    """run() under trainable_view(module) and `safety`; when autograd reports a hazard that
    GraphSafety can protect from, escalate and run again from the start (run() must start
    from the same inputs each time, so the result is the one an unhindered run gives)."""
    while True:
        try:
            with trainable_view(module), safety.applied():
                return run()
        except RuntimeError as error:
            if not safety.escalate(error):
                raise
            if on_escalate is not None:
                on_escalate(error, safety.active[-1])


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
