"""Public functions: `sample` (forward only) and `gradient` (forward + one gradient method).

Both take any denoiser callable D(x, σ, cond) → x0 estimate (in ComfyUI: the guider,
CFG included), the noisy start x_init (batched), ComfyUI's descending σ grid ending at 0,
and conditioning that is a Tensor, a dict of Tensors (constant) or a
`ScheduledConditioning` (keyframes + Timeline). dtype and device follow x_init.

Both run outside inference mode and copy their inputs first, so ComfyUI's inference
tensors (created under `torch.inference_mode()`) are accepted. `gradient` never keeps
more than one step's autograd graph: the forward pass stores latents only.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .adjoints import AdjointContext, DenoiserVJP, GradAccumulator, get_method
from .conditioning import ScheduledConditioning, as_scheduled
from .coords import AlphaSpec, Grid, make_grid
from .counting import CallCounts
from .solvers import (Denoiser, Solver, StepCallback, Trajectory, check_sde_noises,
                      draw_sde_noises, get_solver, solve)

LossFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class GradientResult:
    """Loss and gradients of the sample actually produced (or its continuous-adjoint estimate).

    loss: 0-d tensor, the sum of per-sample losses; per_sample_loss: (B,) or None when
    loss_fn returned a scalar. grad_keyframes has the keyframes' structure (a Tensor, or a
    dict over their floating-point tensors); grad_params follows `params`.
    """
    loss: torch.Tensor
    per_sample_loss: Optional[torch.Tensor]
    x0: torch.Tensor
    grad_x_init: torch.Tensor
    grad_keyframes: list
    grad_params: tuple
    counts: CallCounts
    trajectory: Trajectory
    method: str
    solver: str

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


def _prepare(denoiser, x_init, sigmas, cond, alpha, solver, sde_noises, generator,
             draw_noises: bool = True) -> _Problem:
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable D(x, sigma, cond), got {type(denoiser).__name__}")
    if not isinstance(x_init, torch.Tensor) or not x_init.is_floating_point() or x_init.ndim < 1:
        raise TypeError("x_init must be a floating-point tensor shaped (B, ...)")
    grid = make_grid(sigmas, alpha)
    solver = get_solver(solver)
    conditioning = as_scheduled(cond)
    conditioning.check_batch(x_init.shape[0])
    conditioning.timeline.start_steps(grid.num_steps)   # raises if keyframes are out of order
    x = x_init.detach().clone()          # a normal tensor even if x_init is an inference tensor
    leaves = [l.detach().clone() for l in conditioning.leaves()]
    if solver.stochastic:
        if sde_noises is not None:
            noises = check_sde_noises(sde_noises, x, grid.num_steps)
        else:
            noises = draw_sde_noises(x, grid.num_steps, generator) if draw_noises else None
    else:
        if sde_noises is not None:
            raise ValueError(f"sde_noises: solver {solver.name!r} is deterministic and takes no noises")
        noises = None
    return _Problem(denoiser, x, grid, solver, conditioning, leaves, noises)


def sample(denoiser: Denoiser, x_init: torch.Tensor, sigmas, cond, *, alpha: AlphaSpec = None,
           solver="dpmpp_2m", sde_noises: Optional[Sequence[torch.Tensor]] = None,
           generator: Optional[torch.Generator] = None,
           step_callback: Optional[StepCallback] = None) -> Trajectory:
    """Run the sampler without gradients; the Trajectory holds latents, D values, noises, x0.

    solver: "dpmpp_1" (= "ddim"), "dpmpp_2m" or "sde_dpmpp_1". The SDE solver uses
    sde_noises (N − 1 tensors shaped like x_init) or draws them from `generator`.
    step_callback("forward", done, N) runs after every step and may raise to abort.
    """
    with torch.inference_mode(False):
        prob = _prepare(denoiser, x_init, sigmas, cond, alpha, solver, sde_noises, generator)
        with torch.no_grad():
            return solve(prob.denoiser, prob.x_init, prob.grid, prob.solver, prob.conditioning,
                         leaves=prob.leaves, sde_noises=prob.sde_noises, counts=CallCounts(),
                         step_callback=step_callback)


@contextlib.contextmanager
def _params_requiring_grad(params: Sequence[torch.Tensor]):
    """Make every θ require grad for the duration (restored afterwards, also on error)."""
    switched = []
    try:
        for j, p in enumerate(params):
            if not isinstance(p, torch.Tensor) or not p.is_floating_point():
                raise TypeError(f"params[{j}] must be a floating-point tensor")
            if not p.requires_grad:
                if not p.is_leaf:
                    raise ValueError(f"params[{j}] is a non-leaf tensor that does not require grad")
                try:
                    p.requires_grad_(True)
                except RuntimeError as e:   # e.g. an inference tensor
                    raise ValueError(f"params[{j}] cannot require grad ({e}); clone it outside "
                                     "torch.inference_mode() first") from e
                switched.append(p)
        yield
    finally:
        for p in switched:
            p.requires_grad_(False)


def _loss_and_cotangent(loss_fn: LossFn, x0: torch.Tensor, params: Sequence[torch.Tensor]):
    """L = Σ per-sample losses at x0, ∂L/∂x0, and ∂L/∂θ for θ the loss itself uses."""
    with torch.enable_grad():
        x0_in = x0.detach().requires_grad_(True)
        out = loss_fn(x0_in)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"loss_fn must return a tensor, got {type(out).__name__}")
        batch = x0.shape[0]
        if out.ndim == 0:
            per_sample = None
        elif out.ndim == 1 and out.shape[0] == batch:
            per_sample = out
        else:
            raise ValueError(f"loss_fn must return a scalar or a per-sample tensor of shape ({batch},), "
                             f"got shape {tuple(out.shape)}")
        total = out.sum()
        if not total.requires_grad:
            raise ValueError("loss_fn(x0) does not depend on x0 through autograd")
        grads = torch.autograd.grad(total, [x0_in, *params], allow_unused=True)
    a_final = grads[0] if grads[0] is not None else torch.zeros_like(x0)
    per_sample = None if per_sample is None else per_sample.detach()
    return total.detach(), per_sample, a_final, list(grads[1:])


def gradient(denoiser: Denoiser, x_init: torch.Tensor, sigmas, cond, loss_fn: LossFn, *,
             alpha: AlphaSpec = None, solver="dpmpp_2m", method="exact",
             adjoint_steps: Optional[int] = None, params: Sequence[torch.Tensor] = (),
             sde_noises: Optional[Sequence[torch.Tensor]] = None,
             generator: Optional[torch.Generator] = None,
             step_callback: Optional[StepCallback] = None) -> GradientResult:
    """Sample, evaluate loss_fn(x0), and return gradients w.r.t. x_init, keyframes and params.

    method: "exact" (default; the exact discrete adjoint of the solver that ran),
    "adjointdeis-1", "adjointdeis-2m" (ODE solvers) or "adjointdeis-sde" (SDE solver).
    adjoint_steps: backward steps M ≤ N for the continuous methods (default N).
    Cost: N plain forwards, then one forward-with-grad + one VJP per backward step.
    step_callback(phase, done, total) runs after each "forward" and "backward" step and
    may raise (e.g. on user interrupt); the exception propagates and nothing is kept.
    """
    params = tuple(params)
    method_obj = get_method(method)
    with torch.inference_mode(False):
        prob = _prepare(denoiser, x_init, sigmas, cond, alpha, solver, sde_noises, generator)
        if not method_obj.supports(prob.solver):
            kind = "stochastic" if prob.solver.stochastic else "deterministic"
            raise ValueError(f"method {method_obj.name!r} does not apply to the {kind} solver "
                             f"{prob.solver.name!r}; use 'exact'"
                             + (" or 'adjointdeis-sde'" if prob.solver.stochastic
                                else ", 'adjointdeis-1' or 'adjointdeis-2m'"))
        method_obj.validate_adjoint_steps(prob.grid.num_steps, adjoint_steps)
        counts = CallCounts()
        with _params_requiring_grad(params):
            with torch.no_grad():
                traj = solve(prob.denoiser, prob.x_init, prob.grid, prob.solver, prob.conditioning,
                             leaves=prob.leaves, sde_noises=prob.sde_noises, counts=counts,
                             step_callback=step_callback)
            traj.counts = counts.copy()   # the forward's own cost; `counts` goes on counting
            loss, per_sample, a_final, loss_param_grads = _loss_and_cotangent(loss_fn, traj.x0, params)
            leaves = [l.requires_grad_(True) for l in prob.leaves]
            vjp = DenoiserVJP(prob.denoiser, prob.grid, prob.conditioning, leaves, params, counts)
            grads = GradAccumulator(vjp.num_inputs)
            ctx = AdjointContext(traj, vjp, grads, step_callback)
            grad_x = method_obj.backward(ctx, a_final, adjoint_steps)
        grads.add([None] * len(leaves) + loss_param_grads)
        flat = [torch.zeros_like(t) if g is None else g.detach()
                for g, t in zip(grads.values, [*leaves, *params])]
        grad_leaves, grad_params = flat[:len(leaves)], tuple(flat[len(leaves):])
        for l in leaves:
            l.requires_grad_(False)
    return GradientResult(loss=loss, per_sample_loss=per_sample, x0=traj.x0.detach(),
                          grad_x_init=grad_x.detach(),
                          grad_keyframes=prob.conditioning.unflatten(grad_leaves),
                          grad_params=grad_params, counts=counts, trajectory=traj,
                          method=method_obj.name, solver=prob.solver.name)
