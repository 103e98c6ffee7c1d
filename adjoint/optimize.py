"""An Adam loop over the initial noise, the keyframes and θ, on top of `api.gradient`.

The optimised noise is ε with x_init = noise_scale·ε + x_offset (noise_scale defaults to
σ_0 and x_offset to 0: ComfyUI maps its unit noise this way, for a flow model x_offset is
(1 − σ_0)·latent). Each iteration: one `gradient` call at the current iterate (its loss is
recorded and compared with the best so far), the per-iteration callback, then one Adam
step on the chosen leaves (after optional global-norm clipping) and optional
renormalisation of ε to its initial norm per sample. After the last iteration the final
iterate is evaluated with a forward pass only, so the best iterate covers it too.

Determinism: the loop has no randomness except the SDE noises, which come from a CPU
torch.Generator seeded with `seed` (so a seed gives the same noises on every device). By default they are drawn once and held fixed for
the whole run (the objective is then a deterministic function of the leaves, the setting
of the adjoint theory, and losses of different iterations are comparable);
`resample_sde_noises=True` draws fresh noises every iteration from the same seeded
generator. The same inputs and seed give bit-identical results.

Stop reasons: "iterations" (ran them all), "early_stop" (no improvement of the best
loss by more than early_stop_min_delta for early_stop_patience iterations),
"non_finite_loss", "non_finite_gradient".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .api import LossFn, _check_gradient_args, _gradient, _prepare, _sample
from .checks import as_bool, as_float, as_int, check_callable, check_tensor, named
from .conditioning import ScheduledConditioning
from .coords import AlphaSpec
from .counting import CallCounts
from .solvers import Denoiser, StepCallback, draw_sde_noises


@dataclass
class IterationInfo:
    """What the per-iteration callback receives (after the gradient, before the update)."""
    iteration: int
    num_iterations: int
    loss: float
    per_sample_loss: Optional[torch.Tensor]
    grad_norm: float
    x0: torch.Tensor
    noise: torch.Tensor
    best_loss: float
    best_iteration: int


@dataclass
class OptimizeResult:
    """Best iterate found and the history of the run.

    losses[k] / grad_norms[k]: iterate k (k < iterations_run: gradient evaluations; a last
    entry with grad norm NaN is the final iterate, evaluated forward-only, when the loop
    ran all its iterations). keyframes has the input's structure; params are copies of the
    best θ (the θ tensors themselves are also left at those values).
    """
    noise: torch.Tensor
    x_init: torch.Tensor
    keyframes: list
    cond: ScheduledConditioning
    params: tuple
    x0: torch.Tensor
    loss: float
    per_sample_loss: Optional[torch.Tensor]
    best_iteration: int
    losses: list = field(default_factory=list)
    grad_norms: list = field(default_factory=list)
    stop_reason: str = "iterations"
    iterations_run: int = 0
    counts: CallCounts = field(default_factory=CallCounts)


def _per_sample_renorm(eps: torch.Tensor, target_norms: torch.Tensor) -> None:
    """Rescale every sample of ε in place to its target norm (the Gaussian shell)."""
    norms = torch.linalg.vector_norm(eps.reshape(eps.shape[0], -1), dim=1)
    scale = target_norms / norms.clamp_min(torch.finfo(eps.dtype).tiny)
    eps.mul_(scale.reshape(-1, *([1] * (eps.ndim - 1))))


def optimize(denoiser: Denoiser, noise: torch.Tensor, sigmas, cond, loss_fn: LossFn, *,
             noise_scale: Optional[float] = None, x_offset: Optional[torch.Tensor] = None,
             alpha: AlphaSpec = None, solver="dpmpp_2m", method="exact",
             adjoint_steps: Optional[int] = None, params: Sequence[torch.Tensor] = (),
             optimize_noise: bool = True, optimize_keyframes: bool = False,
             optimize_params: bool = False, iterations: int = 20, lr: float = 0.05,
             betas: tuple = (0.9, 0.999), renormalize_noise: bool = False,
             max_grad_norm: Optional[float] = None, early_stop_patience: Optional[int] = None,
             early_stop_min_delta: float = 0.0, seed: int = 0, resample_sde_noises: bool = False,
             callback: Optional[Callable[[IterationInfo], None]] = None,
             step_callback: Optional[StepCallback] = None) -> OptimizeResult:
    """Minimise Σ loss_fn(x0) over ε (and/or keyframes, θ) with Adam; see the module docstring.

    Every argument is checked before the first network call; errors read
    "optimize: <argument>: …". x_offset must have the noise's shape (it is converted to the
    noise's dtype and device); floating-point keyframes may have another dtype than the
    noise (the denoiser sees them in the noise's dtype; they are optimised and returned
    in their own).
    """
    where = "optimize"
    with named(where):
        iterations = as_int("iterations", iterations, minimum=1)
        optimize_noise = as_bool("optimize_noise", optimize_noise)
        optimize_keyframes = as_bool("optimize_keyframes", optimize_keyframes)
        optimize_params = as_bool("optimize_params", optimize_params)
        renormalize_noise = as_bool("renormalize_noise", renormalize_noise)
        resample_sde_noises = as_bool("resample_sde_noises", resample_sde_noises)
        lr = as_float("lr", lr, above=0.0)
        betas = _check_betas(betas)
        if max_grad_norm is not None:
            max_grad_norm = as_float("max_grad_norm", max_grad_norm, above=0.0)
        if early_stop_patience is not None:
            early_stop_patience = as_int("early_stop_patience", early_stop_patience, minimum=1)
        early_stop_min_delta = as_float("early_stop_min_delta", early_stop_min_delta, minimum=0.0)
        seed = as_int("seed", seed)
        check_callable("callback", callback, optional=True, signature="callback(info)")
        if noise_scale is not None:
            noise_scale = as_float("noise_scale", noise_scale, minimum=0.0)
        if x_offset is not None:
            check_tensor("x_offset", x_offset, shape=noise.shape if isinstance(noise, torch.Tensor) else None,
                         shape_of="the noise's")
    with torch.inference_mode(False):
        # validate everything (types, shapes, dtypes, names, ranges) before the first network call
        prob = _prepare(where, denoiser, noise, sigmas, cond, alpha, solver, None, None, step_callback,
                        draw_noises=False, x_name="noise")
        grid, conditioning, solver_obj = prob.grid, prob.conditioning, prob.solver
        _, params = _check_gradient_args(where, loss_fn, method, adjoint_steps, params, solver_obj,
                                         grid.num_steps)
        noise_scale = grid.sigmas[0] if noise_scale is None else noise_scale
        eps = prob.x_init                  # the noise's copy
        offset = torch.zeros_like(eps) if x_offset is None else x_offset.detach().to(eps, copy=True)
        leaves = [l.detach().clone() for l in conditioning.leaves()]
        with named(where):
            if not ((optimize_noise) or (optimize_keyframes and leaves) or (optimize_params and params)):
                raise ValueError("nothing to optimise: set optimize_noise, optimize_keyframes (with "
                                 "floating-point keyframes) or optimize_params (with params)")
        generator = torch.Generator(device="cpu").manual_seed(seed)   # same noises on any device
        fixed_noises = draw_sde_noises(eps, grid.num_steps, generator) if solver_obj.stochastic else None
        initial_norms = torch.linalg.vector_norm(eps.reshape(eps.shape[0], -1), dim=1)

        trainable = []
        if optimize_noise:
            trainable.append(eps)
        if optimize_keyframes:
            trainable += leaves
        if optimize_params:
            trainable += list(params)
        opt = torch.optim.Adam(trainable, lr=lr, betas=betas, foreach=False)

        def noises_for_iteration():
            if not solver_obj.stochastic:
                return None
            return draw_sde_noises(eps, grid.num_steps, generator) if resample_sde_noises else fixed_noises

        def snapshot():
            return (eps.clone(), [l.clone() for l in leaves], tuple(p.detach().clone() for p in params))

        result = OptimizeResult(noise=eps.clone(), x_init=noise_scale * eps + offset, keyframes=[],
                                cond=conditioning, params=(), x0=torch.empty(0), loss=math.inf,
                                per_sample_loss=None, best_iteration=-1)
        best_state = None
        first_state = None      # the starting iterate, returned if no loss was ever finite
        best_loss, best_iteration = math.inf, -1
        reference_loss, last_improvement = math.inf, 0
        counts = CallCounts()

        def consider(k, loss_value, per_sample, x0):
            nonlocal best_state, best_loss, best_iteration
            if loss_value < best_loss:
                best_loss, best_iteration = loss_value, k
                best_state = snapshot() + (x0.clone(), per_sample)

        stop_reason = "iterations"
        k = 0
        for k in range(iterations):
            current = conditioning.with_leaves(leaves)
            res = _gradient(where, denoiser, noise_scale * eps + offset, sigmas, current, loss_fn, alpha=alpha,
                            solver=solver_obj, method=method, adjoint_steps=adjoint_steps, params=params,
                            sde_noises=noises_for_iteration(), generator=None, step_callback=step_callback,
                            checked=True)
            counts = counts + res.counts
            loss_value = float(res.loss)
            grads = []
            if optimize_noise:
                grads.append(noise_scale * res.grad_x_init)
            if optimize_keyframes:
                grads += [g for g in _flatten_like(current, res.grad_keyframes)]
            if optimize_params:
                grads += list(res.grad_params)
            grad_norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
            result.losses.append(loss_value)
            result.grad_norms.append(grad_norm)
            if first_state is None:
                first_state = snapshot() + (res.x0.clone(), res.per_sample_loss)
            if not math.isfinite(loss_value):
                stop_reason = "non_finite_loss"
                break
            consider(k, loss_value, res.per_sample_loss, res.x0)
            if loss_value < reference_loss - early_stop_min_delta:
                reference_loss, last_improvement = loss_value, k
            if callback is not None:
                callback(IterationInfo(iteration=k, num_iterations=iterations, loss=loss_value,
                                       per_sample_loss=res.per_sample_loss, grad_norm=grad_norm,
                                       x0=res.x0, noise=eps.clone(), best_loss=best_loss,
                                       best_iteration=best_iteration))
            if not math.isfinite(grad_norm):
                stop_reason = "non_finite_gradient"
                break
            if early_stop_patience is not None and k - last_improvement >= early_stop_patience:
                stop_reason = "early_stop"
                break
            scale = 1.0
            if max_grad_norm is not None and grad_norm > max_grad_norm:
                scale = max_grad_norm / grad_norm
            with torch.no_grad():
                for t, g in zip(trainable, grads):
                    t.grad = (g * scale).to(t.dtype)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if optimize_noise and renormalize_noise:
                    _per_sample_renorm(eps, initial_norms)
        else:
            # the final iterate, forward only, so the best covers it as well
            traj = _sample(where, denoiser, noise_scale * eps + offset, sigmas, conditioning.with_leaves(leaves),
                           alpha=alpha, solver=solver_obj, sde_noises=noises_for_iteration(), generator=None,
                           step_callback=step_callback, checked=True)
            counts = counts + traj.counts
            with torch.no_grad():
                out = loss_fn(traj.x0)
            loss_value = float(out.sum())
            per_sample = out.detach() if out.ndim == 1 else None
            result.losses.append(loss_value)
            result.grad_norms.append(math.nan)
            if math.isfinite(loss_value):
                consider(iterations, loss_value, per_sample, traj.x0)

        result.stop_reason = stop_reason
        result.iterations_run = k + 1
        result.counts = counts
        if best_state is None:          # not one finite loss: hand back the starting iterate
            best_state, best_loss, best_iteration = first_state, math.nan, 0
        if best_state is not None:
            b_eps, b_leaves, b_params, b_x0, b_per_sample = best_state
            with torch.no_grad():
                for p, v in zip(params, b_params):
                    p.copy_(v)
            result.noise = b_eps
            result.x_init = noise_scale * b_eps + offset
            result.cond = conditioning.with_leaves(b_leaves)
            result.keyframes = result.cond.keyframes
            result.params = b_params
            result.x0 = b_x0
            result.loss = best_loss
            result.per_sample_loss = b_per_sample
            result.best_iteration = best_iteration
        else:
            result.keyframes = conditioning.keyframes
            result.params = tuple(p.detach().clone() for p in params)
    return result


def _check_betas(betas) -> tuple:
    """Adam's (β1, β2), each in [0, 1)."""
    if isinstance(betas, (str, bytes, torch.Tensor)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise TypeError(f"betas: must be a pair (beta1, beta2), got {betas!r}")
    return tuple(as_float(f"betas[{j}]", b, minimum=0.0, below=1.0) for j, b in enumerate(betas))


def _flatten_like(conditioning: ScheduledConditioning, grad_keyframes: list) -> list:
    """The keyframe gradients in the order of conditioning.leaves()."""
    flat = []
    for kf, g in zip(conditioning.keyframes, grad_keyframes):
        if isinstance(kf, torch.Tensor):
            flat.append(g)
        else:
            flat += list(g.values())
    return flat
