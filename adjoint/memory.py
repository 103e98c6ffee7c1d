"""Memory for kept autograd graphs: `gradient(memory_budget=...)` and how a step's graph is measured.

The exact gradient needs, for every step i, the graph of D_i = D(x_i, σ_i, c_i). With
`memory_budget = 0` it recomputes each one in the backward pass (one step's graph alive at
a time). With a budget, the forward pass runs the steps the backward will differentiate
with grad, in order, and keeps their graphs while the kept total fits; the backward uses
a kept graph where it has one and recomputes the rest. Budgets:

- 0: keep nothing (N plain forwards, N forwards with grad, N VJPs);
- a number of megabytes (MiB, 2**20 bytes) > 0: keep graphs up to that many bytes;
- "auto": `auto_budget_bytes` of the device x_init lives on (free memory less a reserve).

The size of a step's graph is measured on every kept step (`measuring`), and the next
step is run with grad only if the kept total plus the last graph measured still fits
(`GraphAllowance`); a step that turns out larger than that is dropped (its forward
counted with grad, its graph recomputed later), and nothing more is kept. So the kept
graphs never exceed the budget, whatever the steps' sizes.

Measuring one step's graph:
- CUDA: torch.cuda.memory_allocated after the step's forward minus before it: exactly
  what keeping the step alive costs (its saved tensors, its output, copies made by hooks).
- CPU and other devices: the bytes of the tensors autograd saves for the backward, each
  storage counted once, leaving out the step's inputs (x_i, the keyframe leaves, θ) and
  tensors that exist anyway (leaves that require grad, nn.Parameters and views of them).
  A constant that is neither (a per-call cast of a weight, a buffer) is counted:
  counting too much only keeps fewer graphs. Every saved tensor, counted or not, also
  costs host memory besides its data (autograd's record of it and its node, the hook's
  record, malloc's headers, and the heap fragmentation of tensors kept between freed
  temporaries): SAVED_TENSOR_OVERHEAD_BYTES each. Measured on the benchmark's UNet
  (459 saved tensors, 11.2 MB of data per step): 1.4 KB per saved tensor in use by
  malloc, 1.9 KB of resident memory with 8 graphs kept, 3.3 KB with 50.

Saved-tensor hooks do not compose: torch uses the innermost one only. So on CPU:
- a caller whose own hook is active around the loop and who knows better what it keeps
  (the ComfyUI node's guard, which copies some tensors and keeps weights by reference)
  declares its pack function with `reporting_hook(pack)` and calls `record_saved(t)` for
  every tensor it keeps that would not exist otherwise; the meter then installs nothing;
- under any other hook the meter wraps it: it counts, then calls that hook's pack (its
  unpack is kept as is), so the outer hook still sees every tensor;
- with no hook, the meter installs its own, which keeps each tensor by reference and
  checks its version when unpacked, as autograd does without hooks (an in-place write
  into a saved tensor must still raise).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import threading
from typing import Iterator, Optional, Sequence

import torch

MiB = 2 ** 20
# "auto" on CUDA: free memory less max(AUTO_CUDA_RESERVE_BYTES, AUTO_CUDA_RESERVE_FRACTION × total)
AUTO_CUDA_RESERVE_BYTES = 2 ** 30
AUTO_CUDA_RESERVE_FRACTION = 0.1
# "auto" on the CPU: this fraction of the memory the OS reports available
AUTO_CPU_FRACTION = 0.5
# host memory each saved tensor costs besides its data (CPU measurement; see the docstring)
SAVED_TENSOR_OVERHEAD_BYTES = 4096


# -- the budget ------------------------------------------------------------------------------
def check_budget(value):
    """memory_budget as given: "auto", or megabytes ≥ 0 as a float. Raises "memory_budget: …"."""
    if isinstance(value, str):
        if value == "auto":
            return "auto"
        raise ValueError(f"memory_budget: must be \"auto\", 0 (recompute every step) or a number of "
                         f"megabytes > 0, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"memory_budget: must be \"auto\", 0 or a number of megabytes, got "
                        f"{type(value).__name__} {value!r}")
    megabytes = float(value)
    if not math.isfinite(megabytes) or megabytes < 0:
        raise ValueError(f"memory_budget: must be \"auto\", 0 (recompute every step) or a finite number of "
                         f"megabytes > 0, got {value!r}")
    return megabytes


def budget_bytes(value, device: torch.device) -> int:
    """The budget in bytes: checked (see check_budget), "auto" resolved on `device`; 0
    inside `graphs_not_kept`."""
    budget = check_budget(value)
    if not keeping_allowed():
        return 0
    if budget == "auto":
        return auto_budget_bytes(device)
    return int(budget * MiB)


def available_ram_bytes() -> int:
    """MemAvailable from /proc/meminfo, else the OS's count of available pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def auto_budget_bytes(device: torch.device) -> int:
    """What "auto" may fill with kept graphs on `device`: on CUDA the free memory (the
    device's free plus what torch's cache holds unused) less max(1 GiB, 10 % of the
    device), on the CPU (and MPS: unified memory) half the available RAM, elsewhere 0."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        cached_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        reserve = max(AUTO_CUDA_RESERVE_BYTES, int(AUTO_CUDA_RESERVE_FRACTION * total))
        return max(free + cached_unused - reserve, 0)
    if device.type in ("cpu", "mps"):
        return int(AUTO_CPU_FRACTION * available_ram_bytes())
    return 0


class GraphAllowance:
    """Kept graphs against the budget. The next step is run with grad only if the kept
    total plus the last graph measured (the best guess of the next) fits; a graph that
    then does not fit is dropped and ends the keeping: kept bytes never exceed the budget."""

    def __init__(self, budget: int):
        self.budget = budget
        self.kept_bytes = 0
        self.last = 0
        self.closed = budget <= 0
        self.measured: list[int] = []      # bytes of every step measured, in order

    def admits_next(self) -> bool:
        if not self.closed and self.kept_bytes + self.last > self.budget:
            self.closed = True
        return not self.closed

    def charge(self, nbytes: int) -> bool:
        """Count a measured graph; False (and no more keeping) when it does not fit."""
        self.measured.append(nbytes)
        self.last = nbytes
        if self.kept_bytes + nbytes > self.budget:
            self.closed = True
            return False
        self.kept_bytes += nbytes
        return True


# -- measuring one step's graph --------------------------------------------------------------
class _State(threading.local):
    def __init__(self):
        self.meters: list[GraphMeter] = []
        self.reporting_packs: list = []
        self.graphs_not_kept = 0


_STATE = _State()


@contextlib.contextmanager
def graphs_not_kept() -> Iterator[None]:
    """Within the block gradient() keeps no graphs, whatever its memory_budget: for a
    caller that finds its model rewriting weights in place between steps (a kept graph
    would see the new values; one recomputed just before its VJP sees the right ones)."""
    _STATE.graphs_not_kept += 1
    try:
        yield
    finally:
        _STATE.graphs_not_kept -= 1


def keeping_allowed() -> bool:
    return _STATE.graphs_not_kept == 0


def _storage_key(t: torch.Tensor):
    """(an identity of t's storage, its bytes); the bytes are only read when asked for."""
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):   # wrapper subclasses without one storage
        return ("id", id(t)), (lambda: t.numel() * t.element_size())
    return storage.data_ptr(), storage.nbytes


class GraphMeter:
    """Bytes one step's graph keeps alive: saved storages (counted once) on CPU, the
    allocator's growth on CUDA. The step's inputs are never counted."""

    def __init__(self, inputs: Sequence[torch.Tensor]):
        self.excluded = {_storage_key(t)[0] for t in inputs}    # one device: data pointers identify
        self.seen: set = set()
        self.saved_bytes = 0
        self.saved_tensors = 0
        self.allocated_bytes: Optional[int] = None
        self.measurable = True

    def add(self, t: torch.Tensor, new_memory: bool = True) -> None:
        """A tensor the graph saves: its bookkeeping, and its storage (once) when it would
        not exist otherwise."""
        self.saved_tensors += 1
        if new_memory:
            self._add_storage(t)

    def count_saved(self, t: torch.Tensor) -> None:
        """The core's own rule for a tensor autograd saves (see the module docstring); on
        the hot path of every saved tensor, so written out."""
        self.saved_tensors += 1
        base = t._base
        if base is None:
            base = t
        if base.grad_fn is None and (base.requires_grad or type(base) is torch.nn.Parameter):
            return              # exists anyway: a leaf that requires grad, a parameter, or a view of one
        self._add_storage(t)

    def _add_storage(self, t: torch.Tensor) -> None:
        key, nbytes = _storage_key(t)
        if key not in self.excluded and key not in self.seen:
            self.seen.add(key)
            self.saved_bytes += nbytes()

    @property
    def nbytes(self) -> int:
        if self.allocated_bytes is not None:
            return self.allocated_bytes
        return self.saved_bytes + SAVED_TENSOR_OVERHEAD_BYTES * self.saved_tensors


def record_saved(t: torch.Tensor, new_memory: bool = True) -> None:
    """For a caller's saved-tensor pack hook (declared with `reporting_hook`), once for
    every tensor it packs: new_memory says the graph keeps `t` alive and it would not exist
    otherwise (an activation, or a copy the hook made); False for tensors that exist anyway
    (weights, the step's inputs), which cost only their bookkeeping. Counted by the step
    being measured, if any; a no-op otherwise."""
    if _STATE.meters:
        _STATE.meters[-1].add(t, new_memory)


@contextlib.contextmanager
def reporting_hook(pack) -> Iterator[None]:
    """Declare, for the block, that the saved-tensor hook whose pack function is `pack`
    reports what it keeps through `record_saved`; measuring under it installs nothing."""
    _STATE.reporting_packs.append(pack)
    try:
        yield
    finally:
        _STATE.reporting_packs.pop()


def _top_hooks():
    """The innermost saved-tensor hooks (pack, unpack) active now, or None."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return None if top is None else top(False)


def _hooks_enabled() -> bool:
    enabled = getattr(torch._C._autograd, "_saved_tensors_hooks_is_enabled", None)
    return True if enabled is None else bool(enabled())


def _pack_with_version(t: torch.Tensor) -> tuple:
    """A saved tensor kept by reference with the version it had when saved. A tensor with a
    grad_fn is held as a detached alias (same storage, same version counter): holding it
    would make a reference cycle through its grad_fn when it is the output of the node
    saving it, and a kept graph never differentiated (an interrupt) would not be freed."""
    return (t.detach() if t.grad_fn is not None else t), t._version


def _unpack_checked(saved: tuple) -> torch.Tensor:
    tensor, version = saved
    if tensor._version != version:
        raise RuntimeError(
            "one of the variables needed for gradient computation has been modified by an inplace "
            f"operation: a saved tensor of shape {tuple(tensor.shape)} is at version "
            f"{tensor._version}; expected version {version}")
    return tensor


def _counting_hooks(meter: GraphMeter):
    """The saved-tensor hooks that let `meter` see what the graph saves (see the docstring)."""
    top = _top_hooks()
    if top is not None and _STATE.reporting_packs and top[0] == _STATE.reporting_packs[-1]:
        return contextlib.nullcontext()
    if top is None:
        def pack(t):
            meter.count_saved(t)
            return _pack_with_version(t)
        return torch.autograd.graph.saved_tensors_hooks(pack, _unpack_checked)
    outer_pack, outer_unpack = top

    def pack_and_pass_on(t):
        meter.count_saved(t)
        return outer_pack(t)
    return torch.autograd.graph.saved_tensors_hooks(pack_and_pass_on, outer_unpack)


@contextlib.contextmanager
def measuring(device: torch.device, inputs: Sequence[torch.Tensor]) -> Iterator[GraphMeter]:
    """Measure the graph recorded inside the block (one step's forward with grad); the
    meter's `nbytes` holds the result after the block. `inputs` are never counted. Where
    saved-tensor hooks are disabled on CPU nothing can be measured: `measurable` is False."""
    meter = GraphMeter(inputs)
    if torch.device(device).type == "cuda":
        before = torch.cuda.memory_allocated(device)
        yield meter
        meter.allocated_bytes = max(torch.cuda.memory_allocated(device) - before, 0)
        return
    if not _hooks_enabled():
        meter.measurable = False
        yield meter
        return
    _STATE.meters.append(meter)
    try:
        with _counting_hooks(meter):
            yield meter
    finally:
        _STATE.meters.pop()
