"""Public functions: `sample` (forward only) and `gradient` (forward + one gradient method).

Both take any denoiser callable D(x, σ, cond) → x0 estimate (in ComfyUI: the guider,
CFG included), the noisy start x_init (batched), ComfyUI's descending σ grid ending at 0,
and conditioning that is a Tensor, a dict of Tensors (constant) or a
`ScheduledConditioning` (keyframes + Timeline). dtype and device follow x_init.

Both run outside inference mode and copy their inputs first, so ComfyUI's inference
tensors (created under `torch.inference_mode()`) are accepted. With `memory_budget = 0`
(the default) `gradient` never keeps more than one step's autograd graph: the forward
pass stores latents only. With a budget it keeps the graphs of as many steps as fit
(memory.py) and recomputes only the rest: the same gradient, fewer forwards.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .adjoints import AdjointContext, DenoiserVJP, GradAccumulator, GraphKeeper, get_method
from .conditioning import ScheduledConditioning, as_scheduled
from .checks import as_int, check_callable, check_finite, check_tensor, named, shape_str
from .coords import AlphaSpec, Grid, _make_grid
from .counting import CallCounts
from .memory import MiB, GraphAllowance, budget_bytes
from .solvers import (Denoiser, Solver, StepCallback, Trajectory, check_sde_noises,
                      draw_sde_noises, get_solver, solve)

LossFn = Callable[[torch.Tensor], torch.Tensor]


class LossValue(float):
    """`GradientResult.loss`: a Python float, like `OptimizeResult.loss` and `IterationInfo.loss`.

    It was a 0-d tensor before; `.item()` still works (with a DeprecationWarning) so code
    written then keeps running. The per-sample losses are the tensor `per_sample_loss`.
    """
    __slots__ = ()

    def item(self) -> float:
        warnings.warn("GradientResult.loss is a Python float now (it was a 0-d tensor); use it as is",
                      DeprecationWarning, stacklevel=2)
        return float(self)


@dataclass(frozen=True)
class KeptGraphs:
    """What a memory budget did: budget_mb (resolved, "auto" included), the forward steps
    whose graphs were kept (in order), and the measured graph size of every step run with
    grad in the forward pass (kept or not), in MiB."""
    budget_mb: float
    steps: tuple
    step_mb: tuple

    @property
    def kept_mb(self) -> float:
        return sum(self.step_mb[:len(self.steps)])


@dataclass
class GradientResult:
    """Loss and gradients of the sample actually produced (or its continuous-adjoint estimate).

    loss: a Python float, the sum of the per-sample losses (as in `OptimizeResult`);
    per_sample_loss: the (B,) tensor loss_fn returned (detached), or None when loss_fn
    returned a scalar. grad_x_init has x_init's shape and dtype. grad_keyframes has the
    keyframes' structure, dtypes and devices (a Tensor, or a dict over their floating-point
    tensors); grad_params follows `params`. kept_graphs: what the memory budget kept.
    """
    loss: float
    per_sample_loss: Optional[torch.Tensor]
    x0: torch.Tensor
    grad_x_init: torch.Tensor
    grad_keyframes: list
    grad_params: tuple
    counts: CallCounts
    trajectory: Trajectory
    method: str
    solver: str
    kept_graphs: Optional[KeptGraphs] = None

    @property
    def grad_cond(self):
        """The conditioning gradient when there is a single keyframe (constant cond)."""
        if len(self.grad_keyframes) != 1:
            raise AttributeError("grad_cond is only defined for a single keyframe; use grad_keyframes")
        return self.grad_keyframes[0]


@dataclass
class _Problem:
    denoiser: Denoiser
    x_init: torch.Tensor
    grid: Grid
    solver: Solver
    conditioning: ScheduledConditioning
    leaves: list
    sde_noises: Optional[list]


def _check_conditioning(conditioning: ScheduledConditioning, x: torch.Tensor, num_steps: int,
                        x_name: str, finite: bool = True) -> None:
    """Keyframe batches fit x, keyframe tensors are finite, keyframe positions are in order."""
    conditioning.check_batch(x.shape[0], against=x_name)
    if finite:
        for name, leaf in zip(conditioning.leaf_names(), conditioning.leaves()):
            check_finite(f"cond: {name}", leaf)
    try:
        conditioning.timeline.start_steps(num_steps)     # raises if keyframes are out of order
    except ValueError as e:
        raise ValueError(f"cond: {e}") from None


def _check_common(x_name, denoiser, x_init, generator, step_callback, finite: bool = True):
    check_callable("denoiser", denoiser, signature="D(x, sigma, cond) -> x0")
    check_tensor(x_name, x_init, min_ndim=1, finite=finite)
    if x_init.shape[0] < 1:
        raise ValueError(f"{x_name}: the batch (first dimension) is empty, shape {shape_str(x_init.shape)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: must be a torch.Generator or None, got {type(generator).__name__}")
    check_callable("step_callback", step_callback, optional=True, signature="(phase, done, total)")


def _check_params(params) -> tuple:
    if isinstance(params, torch.Tensor):
        raise TypeError("params: must be a sequence of tensors (e.g. (theta,)), got a single tensor")
    try:
        params = tuple(params)
    except TypeError:
        raise TypeError(f"params: must be a sequence of tensors, got {type(params).__name__}") from None
    for j, p in enumerate(params):
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            got = f"dtype {p.dtype}" if isinstance(p, torch.Tensor) else type(p).__name__
            raise TypeError(f"params: params[{j}] must be a floating-point tensor, got {got}")
        if not p.requires_grad:
            if not p.is_leaf:
                raise ValueError(f"params: params[{j}] is a non-leaf tensor that does not require grad")
            if p.is_inference():
                raise ValueError(f"params: params[{j}] is an inference tensor and cannot require grad; "
                                 "clone it outside torch.inference_mode() first")
    return params


def _prepare(where: str, denoiser, x_init, sigmas, cond, alpha, solver, sde_noises, generator,
             step_callback=None, draw_noises: bool = True, x_name: str = "x_init",
             checked: bool = False) -> _Problem:
    """Check every argument (errors name `where` and the argument), then copy the inputs.

    checked: the caller (optimize, between its iterations) validated these arguments
    already; the scans for non-finite entries are skipped, so a diverging iterate ends
    in optimize's "non_finite_loss" stop rather than an exception.

    Floating-point keyframe tensors are converted to x_init's dtype (the copies the solver
    uses; the caller's tensors are untouched), so the denoiser always sees one dtype.
    """
    with named(where):
        _check_common(x_name, denoiser, x_init, generator, step_callback, finite=not checked)
        grid = _make_grid(sigmas, alpha)
        solver = get_solver(solver)
        conditioning = as_scheduled(cond)
        _check_conditioning(conditioning, x_init, grid.num_steps, x_name, finite=not checked)
        if solver.stochastic:
            if sde_noises is not None:
                noises = check_sde_noises(sde_noises, x_init, grid.num_steps)
            else:
                noises = None
        else:
            if sde_noises is not None:
                raise ValueError(f"sde_noises: solver {solver.name!r} is deterministic and takes no noises")
            noises = None
    x = x_init.detach().clone()          # a normal tensor even if x_init is an inference tensor
    leaves = [l.detach().to(dtype=x.dtype, copy=True) for l in conditioning.leaves()]
    if solver.stochastic and noises is None and draw_noises:
        noises = draw_sde_noises(x, grid.num_steps, generator)
    return _Problem(denoiser, x, grid, solver, conditioning, leaves, noises)


def sample(denoiser: Denoiser, x_init: torch.Tensor, sigmas, cond, *, alpha: AlphaSpec = None,
           solver="dpmpp_2m", sde_noises: Optional[Sequence[torch.Tensor]] = None,
           generator: Optional[torch.Generator] = None,
           step_callback: Optional[StepCallback] = None) -> Trajectory:
    """Run the sampler without gradients; the Trajectory holds latents, D values, noises, x0.

    solver: "dpmpp_1" (= "ddim"), "dpmpp_2m" or "sde_dpmpp_1". The SDE solver uses
    sde_noises (N − 1 tensors shaped like x_init) or draws them from `generator`.
    step_callback("forward", done, N) runs after every step and may raise to abort.
    Every argument is checked before the first network call; errors read
    "sample: <argument>: …".
    """
    return _sample("sample", denoiser, x_init, sigmas, cond, alpha=alpha, solver=solver,
                   sde_noises=sde_noises, generator=generator, step_callback=step_callback)


def _sample(where, denoiser, x_init, sigmas, cond, *, alpha, solver, sde_noises, generator,
            step_callback, checked=False) -> Trajectory:
    with torch.inference_mode(False):
        prob = _prepare(where, denoiser, x_init, sigmas, cond, alpha, solver, sde_noises, generator,
                        step_callback, checked=checked)
        with torch.no_grad():
            return solve(prob.denoiser, prob.x_init, prob.grid, prob.solver, prob.conditioning,
                         leaves=prob.leaves, sde_noises=prob.sde_noises, counts=CallCounts(),
                         step_callback=step_callback)


@contextlib.contextmanager
def _params_requiring_grad(params: Sequence[torch.Tensor]):
    """Make every θ require grad for the duration (restored afterwards, also on error).

    The params were checked by `_check_params` (floating point, able to require grad).
    """
    switched = []
    try:
        for p in params:
            if not p.requires_grad:
                p.requires_grad_(True)
                switched.append(p)
        yield
    finally:
        for p in switched:
            p.requires_grad_(False)


def _loss_and_cotangent(where: str, loss_fn: LossFn, x0: torch.Tensor, params: Sequence[torch.Tensor]):
    """L = Σ per-sample losses at x0, ∂L/∂x0, and ∂L/∂θ for θ the loss itself uses."""
    with torch.enable_grad():
        x0_in = x0.detach().requires_grad_(True)
        out = loss_fn(x0_in)
        with named(where):
            per_sample = _check_loss_output(out, x0.shape[0])
        total = out.sum()
        if not total.requires_grad:
            raise ValueError(f"{where}: loss_fn: loss_fn(x0) does not depend on x0 through autograd")
        grads = torch.autograd.grad(total, [x0_in, *params], allow_unused=True)
    a_final = grads[0] if grads[0] is not None else torch.zeros_like(x0)
    per_sample = None if per_sample is None else per_sample.detach()
    return LossValue(float(total.detach())), per_sample, a_final, list(grads[1:])


def _check_loss_output(out, batch: int) -> Optional[torch.Tensor]:
    """loss_fn's value: a real scalar or a (batch,) tensor; the per-sample tensor or None."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"loss_fn: must return a tensor, got {type(out).__name__}")
    if not out.is_floating_point():
        raise TypeError(f"loss_fn: must return a floating-point tensor, got dtype {out.dtype}")
    if out.ndim == 0:
        return None
    if out.ndim == 1 and out.shape[0] == batch:
        return out
    raise ValueError(f"loss_fn must return a scalar or a per-sample tensor of shape ({batch},), "
                     f"got shape {shape_str(out.shape)}")


def gradient(denoiser: Denoiser, x_init: torch.Tensor, sigmas, cond, loss_fn: LossFn, *,
             alpha: AlphaSpec = None, solver="dpmpp_2m", method="exact",
             adjoint_steps: Optional[int] = None, params: Sequence[torch.Tensor] = (),
             sde_noises: Optional[Sequence[torch.Tensor]] = None,
             generator: Optional[torch.Generator] = None,
             step_callback: Optional[StepCallback] = None, memory_budget=0) -> GradientResult:
    """Sample, evaluate loss_fn(x0), and return gradients w.r.t. x_init, keyframes and params.

    method: "exact" (default; the exact discrete adjoint of the solver that ran),
    "adjointdeis-1", "adjointdeis-2m" (ODE solvers) or "adjointdeis-sde" (SDE solver).
    adjoint_steps: backward steps M ≤ N for the continuous methods (default N).
    memory_budget: megabytes (MiB) of autograd graphs the forward pass may keep for the
    backward, instead of recomputing them: 0 (default) keeps none, "auto" what the device
    has free less a reserve (memory.auto_budget_bytes). The gradient is the same.
    Cost: N forwards, then one VJP per backward step, each through a kept graph or a
    recomputed one (a forward with grad): `exact` is N plain forwards + N forwards with
    grad + N VJPs at budget 0 and N forwards with grad + N VJPs when every graph fits.
    step_callback(phase, done, total) runs after each "forward" and "backward" step and
    may raise (e.g. on user interrupt); the exception propagates and nothing is kept.
    Every argument is checked before the first network call; errors read
    "gradient: <argument>: …". The result's `loss` is a Python float.
    """
    return _gradient("gradient", denoiser, x_init, sigmas, cond, loss_fn, alpha=alpha, solver=solver,
                     method=method, adjoint_steps=adjoint_steps, params=params, sde_noises=sde_noises,
                     generator=generator, step_callback=step_callback, memory_budget=memory_budget)


def _check_gradient_args(where, loss_fn, method, adjoint_steps, params, solver, num_steps,
                         check_steps: bool = True):
    """The arguments `gradient` adds to `sample`'s; returns (method object, params tuple)."""
    with named(where):
        check_callable("loss_fn", loss_fn, signature="loss_fn(x0) -> (B,) or scalar tensor")
        method_obj = get_method(method)
        if not method_obj.supports(solver):
            kind = "stochastic" if solver.stochastic else "deterministic"
            raise ValueError(f"method: {method_obj.name!r} does not apply to the {kind} solver "
                             f"{solver.name!r}; use 'exact'"
                             + (" or 'adjointdeis-sde'" if solver.stochastic
                                else ", 'adjointdeis-1' or 'adjointdeis-2m'"))
        if adjoint_steps is not None:
            as_int("adjoint_steps", adjoint_steps, minimum=1)
        if check_steps:
            method_obj.validate_adjoint_steps(num_steps, adjoint_steps)
        params = _check_params(params)
    return method_obj, params


def _gradient(where, denoiser, x_init, sigmas, cond, loss_fn, *, alpha, solver, method, adjoint_steps,
              params, sde_noises, generator, step_callback, checked=False, memory_budget=0) -> GradientResult:
    with torch.inference_mode(False):
        prob = _prepare(where, denoiser, x_init, sigmas, cond, alpha, solver, sde_noises, generator,
                        step_callback, checked=checked)
        method_obj, params = _check_gradient_args(where, loss_fn, method, adjoint_steps, params,
                                                  prob.solver, prob.grid.num_steps)
        with named(where):
            budget = budget_bytes(memory_budget, prob.x_init.device)
        grid, conditioning = prob.grid, prob.conditioning
        counts = CallCounts()
        with _params_requiring_grad(params):
            leaves = [l.requires_grad_(True) for l in prob.leaves]
            steps = method_obj.graph_steps(grid.num_steps, adjoint_steps, conditioning.switch_steps(grid.num_steps),
                                           grid.alphas[0] == 0.0)
            keeper = GraphKeeper(prob.denoiser, grid, conditioning, leaves, params, counts, steps,
                                 GraphAllowance(budget))
            try:
                with torch.no_grad():
                    traj = solve(keeper, prob.x_init, grid, prob.solver, conditioning, leaves=leaves,
                                 sde_noises=prob.sde_noises, counts=CallCounts(), step_callback=step_callback)
                traj.counts = counts.copy()   # the forward's own cost; `counts` goes on counting
                loss, per_sample, a_final, loss_param_grads = _loss_and_cotangent(where, loss_fn, traj.x0, params)
                vjp = DenoiserVJP(prob.denoiser, grid, conditioning, leaves, params, counts, kept=keeper.graphs)
                grads = GradAccumulator(vjp.num_inputs)
                ctx = AdjointContext(traj, vjp, grads, step_callback)
                grad_x = method_obj.backward(ctx, a_final, adjoint_steps)
            finally:
                keeper.graphs.clear()     # graphs the backward did not use (or an error) die here
        grads.add([None] * len(leaves) + loss_param_grads)
        flat = [torch.zeros_like(t) if g is None else g.detach()
                for g, t in zip(grads.values, [*leaves, *params])]
        # keyframe gradients in the keyframes' own dtypes (their copies ran in x_init's dtype)
        grad_leaves = [g.to(dtype=orig.dtype) for g, orig in zip(flat[:len(leaves)], conditioning.leaves())]
        grad_params = tuple(flat[len(leaves):])
        for l in leaves:
            l.requires_grad_(False)
    kept = KeptGraphs(budget_mb=budget / MiB, steps=tuple(keeper.kept_steps),
                      step_mb=tuple(b / MiB for b in keeper.allowance.measured))
    return GradientResult(loss=loss, per_sample_loss=per_sample, x0=traj.x0.detach(),
                          grad_x_init=grad_x.detach(),
                          grad_keyframes=conditioning.unflatten(grad_leaves),
                          grad_params=grad_params, counts=counts, trajectory=traj,
                          method=method_obj.name, solver=prob.solver.name, kept_graphs=kept)
