"""An Adam loop over the initial noise, the keyframes and θ, on top of `api.gradient`.

The optimised noise is ε with x_init = noise_scale·ε + x_offset (noise_scale defaults to
σ_0 and x_offset to 0: ComfyUI maps its unit noise this way, for a flow model x_offset is
(1 − σ_0)·latent). Each iteration: one `gradient` call at the current iterate (its loss is
recorded and compared with the best so far), the per-iteration callback, then one Adam
step on the chosen leaves (after optional gradient-norm clipping) and optional
renormalisation of ε to its initial norm per sample. After the last iteration the final
iterate is evaluated with a forward pass only, so the best iterate covers it too.

Two ways to treat a batch:
- joint (per_sample=False, the default): the batch is ONE optimisation of Σ_b loss_b: one
  Adam state, one global gradient norm for clipping, one best iterate, one early stop.
- per sample (per_sample=True): every sample is its own optimisation (its own Adam state
  and step count, gradient norm and clipping, best iterate, early stop, stop reason and
  non-finite handling), while the whole batch goes through each network call together
  (one `gradient` call per iteration). A sample that stops keeps its result; it is still
  carried through the batched calls, but nothing of it changes any more. Keyframes shared
  by the batch (batch 1) are expanded to one copy per sample when optimised, so each sample
  optimises its own prompt. θ (params) is shared by the batch and cannot be optimised per
  sample. loss_fn must return one loss per sample, shape (B,), and must not mix samples (nor
  may the denoiser: the gradient of Σ_b loss_b by sample b's rows is then loss_b's own).
  The result equals running the samples one by one (batch-1 runs, each with its sample's
  keyframe rows, loss and seed) up to the round-off of batching the network's arithmetic,
  which Adam's per-element normalisation carries through the iterations. Measured on the
  analytic denoisers (tests/core/test_batched_optimize.py: B = 3, 6 iterations, noise and
  keyframes, clipping, every solver and gradient method, α = 1 and flow): a denoiser
  computing row by row gives bit-identical results in float64 and float32; one with a
  batched matmul differs by at most 8e-14 in float64 and 3e-4 in float32 (noise, x0 and
  keyframes absolutely, at values of order 1; losses and grad norms relatively); the tests
  allow 1e-11 and 2e-3. On the tiny SD1.5 UNet in ComfyUI (tests/inprocess/
  test_batched_sampler.py) the Adjoint Sampler's two batch modes agree to 6e-14 relative
  in float64 and 2e-5 in float32, except that an element whose gradient is pure round-off
  (a few prompt elements) can take Adam's ±lr step the other way. A batch of 1 gives bit
  for bit what per_sample=False gives.

Determinism: the loop has no randomness except the SDE noises, which come from a CPU
torch.Generator seeded with `seed` (so a seed gives the same noises on every device). By
default they are drawn once and held fixed for the whole run (the objective is then a
deterministic function of the leaves, the setting of the adjoint theory, and losses of
different iterations are comparable); `resample_sde_noises=True` draws fresh noises every
iteration from the same seeded generator. `seed` may also be a sequence of B seeds: sample
b's noises then come from its own generator seeded seed[b], exactly the noises a batch-1
run with that seed draws (the Adjoint Sampler seeds sample b with seed + batch_index[b]).
The same inputs and seed give bit-identical results.

Stop reasons: "iterations" (ran them all), "early_stop" (no improvement of the best
loss by more than early_stop_min_delta for early_stop_patience iterations),
"non_finite_loss", "non_finite_gradient".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch

from .api import LossFn, _check_gradient_args, _check_loss_output, _gradient, _prepare, _sample
from .checks import as_bool, as_float, as_int, check_callable, check_tensor, named, shape_str
from .conditioning import ScheduledConditioning
from .coords import AlphaSpec
from .counting import CallCounts
from .memory import check_budget
from .solvers import Denoiser, StepCallback, draw_sde_noises

WHERE = "optimize"


@dataclass
class IterationInfo:
    """What the per-iteration callback receives (after the gradient, before the update).

    Joint mode: loss / grad_norm / best_* are the batch's (Σ of the per-sample losses, the
    global gradient norm). Per-sample mode adds, per sample: `active` (bool (B,): the
    samples still optimising at this iteration; the others have stopped and their entries
    are those of their frozen iterate), `per_sample_grad_norm`, `per_sample_best_loss` and
    `per_sample_best_iteration`; `loss` and `grad_norm` then cover the active samples (Σ of
    their losses, the norm of their joined gradients), `best_loss` is Σ of the per-sample
    best losses (inf while some sample has none yet) and `best_iteration` the samples'
    common best iteration, or −1 when they differ.
    """
    iteration: int
    num_iterations: int
    loss: float
    per_sample_loss: Optional[torch.Tensor]
    grad_norm: float
    x0: torch.Tensor
    noise: torch.Tensor
    best_loss: float
    best_iteration: int
    active: Optional[torch.Tensor] = None
    per_sample_grad_norm: Optional[torch.Tensor] = None
    per_sample_best_loss: Optional[torch.Tensor] = None
    per_sample_best_iteration: Optional[list] = None


@dataclass
class SampleRun:
    """One sample's own optimisation (per-sample mode): its history and how it ended.

    losses[k] / grad_norms[k]: its iterate k, as in OptimizeResult; best_loss is its
    returned iterate's loss (NaN if none was finite, then best_iteration is 0).
    """
    losses: list
    grad_norms: list
    best_iteration: int
    best_loss: float
    stop_reason: str
    iterations_run: int


@dataclass
class OptimizeResult:
    """Best iterate found and the history of the run.

    losses[k] / grad_norms[k]: iterate k (k < iterations_run: gradient evaluations; a last
    entry with grad norm NaN is the final iterate, evaluated forward-only, when the loop
    ran all its iterations). keyframes has the input's structure; params are copies of the
    best θ (the θ tensors themselves are also left at those values).

    Per-sample mode: `samples[b]` is sample b's own run (SampleRun), and the batch's fields
    join them (see `summarize`): noise, x_init, x0, keyframes hold every sample's best
    iterate; per_sample_loss their losses and loss their sum; losses[k] is Σ_b of sample
    b's loss at iterate k (a sample that stopped keeps its last value); grad_norms[k] the
    norm of the joined gradient of the samples still running at k; best_iteration the
    common best iteration or −1; stop_reason the first non-finite stop of a sample, else
    "iterations" if some sample ran them all, else "early_stop"; iterations_run the
    longest sample's. In joint mode `samples` is None.
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
    samples: Optional[list] = None


@dataclass
class BatchSummary:
    """The batch's scalar fields joined from its samples' runs (see OptimizeResult)."""
    losses: list
    grad_norms: list
    best_iteration: int
    loss: float
    stop_reason: str
    iterations_run: int


def summarize(samples: Sequence[SampleRun]) -> BatchSummary:
    """The batch's losses, grad norms, best iteration, loss, stop reason and iterations
    run from its samples' own runs (a batch of 1 gives that sample's own fields)."""
    longest = max(len(s.losses) for s in samples)
    losses = [sum(s.losses[min(k, len(s.losses) - 1)] for s in samples) for k in range(longest)]
    grad_norms = [math.hypot(*(s.grad_norms[k] for s in samples if k < len(s.grad_norms)))
                  for k in range(longest)]
    best = {s.best_iteration for s in samples}
    reasons = [s.stop_reason for s in samples]
    stop_reason = next((r for r in reasons if r.startswith("non_finite")),
                       "iterations" if "iterations" in reasons else "early_stop")
    return BatchSummary(losses=losses, grad_norms=grad_norms,
                        best_iteration=best.pop() if len(best) == 1 else -1,
                        loss=sum(s.best_loss for s in samples), stop_reason=stop_reason,
                        iterations_run=max(s.iterations_run for s in samples))


def _per_sample_renorm(eps: torch.Tensor, target_norms: torch.Tensor) -> None:
    """Rescale every sample of ε in place to its target norm (the Gaussian shell)."""
    scale = target_norms / _norms(eps).clamp_min(torch.finfo(eps.dtype).tiny)
    eps.mul_(scale.reshape(-1, *([1] * (eps.ndim - 1))))


def _norms(eps: torch.Tensor) -> torch.Tensor:
    """The norm of every sample of a batch, shape (B,)."""
    return torch.linalg.vector_norm(eps.reshape(eps.shape[0], -1), dim=1)


def _grad_norm(grads: Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))


def _rows(t: torch.Tensor, rows: Optional[slice]) -> torch.Tensor:
    """The rows of a batched tensor (a view), or the whole tensor when rows is None."""
    return t if rows is None else t[rows]


# ---------------------------------------------------------------------------------------
# the settings, checked
# ---------------------------------------------------------------------------------------
@dataclass
class _Settings:
    iterations: int
    optimize_noise: bool
    optimize_keyframes: bool
    optimize_params: bool
    renormalize_noise: bool
    resample_sde_noises: bool
    per_sample: bool
    lr: float
    betas: tuple
    max_grad_norm: Optional[float]
    early_stop_patience: Optional[int]
    early_stop_min_delta: float
    seed: Union[int, tuple]
    noise_scale: Optional[float]
    callback: Optional[Callable]
    memory_budget: object


def _check_settings(noise, x_offset, *, iterations, optimize_noise, optimize_keyframes, optimize_params,
                    renormalize_noise, resample_sde_noises, per_sample, lr, betas, max_grad_norm,
                    early_stop_patience, early_stop_min_delta, seed, noise_scale, callback,
                    memory_budget) -> _Settings:
    """The loop's own arguments (the sampling ones are `_prepare`'s), each by name."""
    with named(WHERE):
        s = _Settings(
            iterations=as_int("iterations", iterations, minimum=1),
            optimize_noise=as_bool("optimize_noise", optimize_noise),
            optimize_keyframes=as_bool("optimize_keyframes", optimize_keyframes),
            optimize_params=as_bool("optimize_params", optimize_params),
            renormalize_noise=as_bool("renormalize_noise", renormalize_noise),
            resample_sde_noises=as_bool("resample_sde_noises", resample_sde_noises),
            per_sample=as_bool("per_sample", per_sample),
            lr=as_float("lr", lr, above=0.0),
            betas=_check_betas(betas),
            max_grad_norm=None if max_grad_norm is None else as_float("max_grad_norm", max_grad_norm, above=0.0),
            early_stop_patience=None if early_stop_patience is None else
            as_int("early_stop_patience", early_stop_patience, minimum=1),
            early_stop_min_delta=as_float("early_stop_min_delta", early_stop_min_delta, minimum=0.0),
            seed=_check_seed(seed),
            noise_scale=None if noise_scale is None else as_float("noise_scale", noise_scale, minimum=0.0),
            callback=check_callable("callback", callback, optional=True, signature="callback(info)"),
            memory_budget=check_budget(memory_budget))
        if x_offset is not None:
            check_tensor("x_offset", x_offset, shape=noise.shape if isinstance(noise, torch.Tensor) else None,
                         shape_of="the noise's")
        if s.per_sample and s.optimize_params:
            raise ValueError("per_sample: θ (params) is shared by the whole batch and cannot be optimised "
                             "per sample; use per_sample=False to optimise it jointly with the batch, or "
                             "optimize_params=False")
    return s


def _check_betas(betas) -> tuple:
    """Adam's (β1, β2), each in [0, 1)."""
    if isinstance(betas, (str, bytes, torch.Tensor)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise TypeError(f"betas: must be a pair (beta1, beta2), got {betas!r}")
    return tuple(as_float(f"betas[{j}]", b, minimum=0.0, below=1.0) for j, b in enumerate(betas))


def _check_seed(seed) -> Union[int, tuple]:
    """An integer, or a sequence of integers (one per sample; its length is checked later)."""
    if isinstance(seed, (list, tuple)):
        if not seed:
            raise ValueError("seed: an empty sequence; give one integer or one per sample")
        return tuple(as_int(f"seed[{j}]", s) for j, s in enumerate(seed))
    return as_int("seed", seed)


def _check_seed_count(seed, batch: int) -> None:
    if isinstance(seed, tuple) and len(seed) != batch:
        raise ValueError(f"seed: {len(seed)} seeds for a batch of {batch}; give one integer or one "
                         f"seed per sample")


def _per_sample_leaves(names: list, leaves: list, batch: int) -> list:
    """One copy of every keyframe tensor per sample: batch-1 tensors expanded, batch-B kept."""
    out = []
    for name, leaf in zip(names, leaves):
        if leaf.ndim < 2:
            raise ValueError(f"cond: {name} has no batch dimension (shape {shape_str(leaf.shape)}); "
                             "per_sample=True optimises one copy of every keyframe per sample, which "
                             f"needs keyframe tensors shaped (1 or {batch}, ...); add the batch "
                             "dimension, or use per_sample=False")
        out.append(leaf.expand(batch, *leaf.shape[1:]).clone() if leaf.shape[0] != batch else leaf)
    return out


# ---------------------------------------------------------------------------------------
# the problem being optimised, and its SDE noises
# ---------------------------------------------------------------------------------------
class _SDENoises:
    """The SDE solver's noises, from one generator for the batch or one per sample (seed a
    sequence), drawn once and held, or redrawn every iteration."""

    def __init__(self, stochastic: bool, eps: torch.Tensor, num_steps: int, seed, resample: bool):
        self.stochastic, self.resample = stochastic, resample
        self.eps, self.num_steps = eps, num_steps
        seeds = seed if isinstance(seed, tuple) else (seed,)
        self.per_sample = isinstance(seed, tuple)
        # CPU generators: the same noises on every device
        self.generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        self.fixed = self._draw() if stochastic else None

    def _draw(self) -> list:
        if not self.per_sample:
            return draw_sde_noises(self.eps, self.num_steps, self.generators[0])
        own = [draw_sde_noises(self.eps[b:b + 1], self.num_steps, g) for b, g in enumerate(self.generators)]
        return [torch.cat(step) for step in zip(*own)]

    def for_iteration(self) -> Optional[list]:
        if not self.stochastic:
            return None
        return self._draw() if self.resample else self.fixed


class _Problem:
    """What every iteration evaluates: the current iterate (ε, keyframes, θ), the network
    calls on it, and the call counts."""

    def __init__(self, denoiser, sigmas, loss_fn, settings: _Settings, *, x_offset, alpha, solver, method,
                 adjoint_steps, params, cond, noise, step_callback):
        self.denoiser, self.sigmas, self.loss_fn, self.settings = denoiser, sigmas, loss_fn, settings
        self.alpha, self.method, self.adjoint_steps = alpha, method, adjoint_steps
        self.step_callback = step_callback
        # validate everything (types, shapes, dtypes, names, ranges) before the first network call
        prob = _prepare(WHERE, denoiser, noise, sigmas, cond, alpha, solver, None, None, step_callback,
                        draw_noises=False, x_name="noise")
        self.grid, self.conditioning, self.solver = prob.grid, prob.conditioning, prob.solver
        _, self.params = _check_gradient_args(WHERE, loss_fn, method, adjoint_steps, params, self.solver,
                                              self.grid.num_steps)
        self.eps = prob.x_init                  # the noise's copy
        self.batch = self.eps.shape[0]
        self.noise_scale = self.grid.sigmas[0] if settings.noise_scale is None else settings.noise_scale
        self.offset = torch.zeros_like(self.eps) if x_offset is None else x_offset.detach().to(self.eps, copy=True)
        with named(WHERE):
            _check_seed_count(settings.seed, self.batch)
            self.leaves = self._keyframe_leaves()
            self._check_something_to_optimise()
        self.sde = _SDENoises(self.solver.stochastic, self.eps, self.grid.num_steps, settings.seed,
                              settings.resample_sde_noises)
        self.counts = CallCounts()

    def _keyframe_leaves(self) -> list:
        """Copies of the keyframe tensors, one per sample where each sample optimises its own."""
        leaves = [l.detach().clone() for l in self.conditioning.leaves()]
        if self.settings.per_sample and self.settings.optimize_keyframes:
            return _per_sample_leaves(self.conditioning.leaf_names(), leaves, self.batch)
        return leaves

    def _check_something_to_optimise(self) -> None:
        s = self.settings
        if not (s.optimize_noise or (s.optimize_keyframes and self.leaves) or (s.optimize_params and self.params)):
            raise ValueError("nothing to optimise: set optimize_noise, optimize_keyframes (with "
                             "floating-point keyframes) or optimize_params (with params)")

    def x_init(self) -> torch.Tensor:
        return self.noise_scale * self.eps + self.offset

    def cond(self, leaves=None) -> ScheduledConditioning:
        return self.conditioning.with_leaves(self.leaves if leaves is None else leaves)

    def trainable(self) -> list:
        """The optimised tensors, in the order of `trainable_grads`."""
        s = self.settings
        return (([self.eps] if s.optimize_noise else []) + (list(self.leaves) if s.optimize_keyframes else [])
                + (list(self.params) if s.optimize_params else []))

    def gradient(self):
        res = _gradient(WHERE, self.denoiser, self.x_init(), self.sigmas, self.cond(), self.loss_fn,
                        alpha=self.alpha, solver=self.solver, method=self.method,
                        adjoint_steps=self.adjoint_steps, params=self.params,
                        sde_noises=self.sde.for_iteration(), generator=None, step_callback=self.step_callback,
                        checked=True, memory_budget=self.settings.memory_budget)
        self.counts = self.counts + res.counts
        if self.settings.per_sample and res.per_sample_loss is None:
            raise ValueError(f"{WHERE}: loss_fn: per_sample=True needs one loss per sample, shape "
                             f"({self.batch},), but it returned a scalar; return the per-sample losses "
                             "(e.g. ((x0 - target) ** 2).flatten(1).mean(1)), or use per_sample=False")
        return res

    def trainable_grads(self, res) -> list:
        """∂loss/∂(each trainable tensor), ε's through x_init = noise_scale·ε + offset."""
        s = self.settings
        grads = [self.noise_scale * res.grad_x_init] if s.optimize_noise else []
        if s.optimize_keyframes:
            grads += _flatten_like(self.conditioning, res.grad_keyframes)
        if s.optimize_params:
            grads += list(res.grad_params)
        return grads

    def forward_only(self):
        """(x0, Σ loss, per-sample losses or None) of the current iterate, without gradients."""
        traj = _sample(WHERE, self.denoiser, self.x_init(), self.sigmas, self.cond(), alpha=self.alpha,
                       solver=self.solver, sde_noises=self.sde.for_iteration(), generator=None,
                       step_callback=self.step_callback, checked=True)
        self.counts = self.counts + traj.counts
        with torch.no_grad():
            out = self.loss_fn(traj.x0)
        if self.settings.per_sample:
            with named(WHERE):
                _check_loss_output(out, self.batch)
        return traj.x0, float(out.sum()), (out.detach() if out.ndim == 1 else None)


# ---------------------------------------------------------------------------------------
# one optimisation: the whole batch (joint) or one sample's rows (per sample)
# ---------------------------------------------------------------------------------------
class _Track:
    """An Adam state, gradient clipping, best iterate and stop rule over some rows of the
    problem's tensors: all of them (rows None, the joint mode) or sample b's (rows b:b+1).
    Everything it changes is a view of those rows, so a stopped track changes nothing."""

    def __init__(self, problem: _Problem, rows: Optional[slice]):
        s = problem.settings
        self.settings, self.rows = s, rows
        self.noise = _rows(problem.eps, rows)
        self.initial_norms = _norms(self.noise)      # of these rows alone, as a batch-1 run has them
        # a per-sample track owns its keyframe rows only when they are optimised (then they
        # are per sample); θ belongs to the joint track alone
        self.leaves = [_rows(l, rows) for l in problem.leaves] if rows is None or s.optimize_keyframes else []
        self.params = problem.params if rows is None else ()
        self.trainable = [_rows(t, rows) for t in problem.trainable()]
        self.adam = torch.optim.Adam(self.trainable, lr=s.lr, betas=s.betas, foreach=False)
        self.losses, self.grad_norms = [], []
        self.first = None            # the starting iterate, returned if no loss was ever finite
        self.best, self.best_loss, self.best_iteration = None, math.inf, -1
        self.reference_loss, self.last_improvement = math.inf, 0
        self.stop_reason, self.iterations_run = None, 0
        self.grads = None            # this iteration's gradients of the rows, until the step

    @property
    def active(self) -> bool:
        return self.stop_reason is None

    def _own(self, total: float, per_sample: Optional[torch.Tensor]):
        """This track's loss and per-sample losses out of the batch's."""
        if self.rows is None:
            return total, per_sample
        return float(per_sample[self.rows.start]), per_sample[self.rows].clone()

    def _snapshot(self, x0: torch.Tensor, per_sample) -> tuple:
        return (self.noise.clone(), [l.clone() for l in self.leaves], tuple(p.detach().clone() for p in self.params),
                _rows(x0, self.rows).clone(), per_sample)

    def _stop(self, reason: str, iterations_run: int) -> None:
        self.stop_reason, self.iterations_run = reason, iterations_run
        self.grads = None

    def _consider(self, k: int, loss: float, x0: torch.Tensor, per_sample) -> None:
        if loss < self.best_loss:
            self.best_loss, self.best_iteration = loss, k
            self.best = self._snapshot(x0, per_sample)

    def record(self, k: int, res, grads: list) -> None:
        """Iterate k's loss and gradient norm; the best iterate; stop on a non-finite loss."""
        loss, per_sample = self._own(float(res.loss), res.per_sample_loss)
        self.grads = [_rows(g, self.rows) for g in grads]
        self.losses.append(loss)
        self.grad_norms.append(_grad_norm(self.grads))
        if self.first is None:
            self.first = self._snapshot(res.x0, per_sample)
        if not math.isfinite(loss):
            self._stop("non_finite_loss", k + 1)
            return
        self._consider(k, loss, res.x0, per_sample)
        if loss < self.reference_loss - self.settings.early_stop_min_delta:
            self.reference_loss, self.last_improvement = loss, k

    def update(self, k: int) -> None:
        """Stop on a non-finite gradient or on patience; otherwise one Adam step."""
        patience = self.settings.early_stop_patience
        if not math.isfinite(self.grad_norms[-1]):
            self._stop("non_finite_gradient", k + 1)
        elif patience is not None and k - self.last_improvement >= patience:
            self._stop("early_stop", k + 1)
        else:
            self._adam_step()

    def _adam_step(self) -> None:
        s, grad_norm = self.settings, self.grad_norms[-1]
        scale = 1.0
        if s.max_grad_norm is not None and grad_norm > s.max_grad_norm:
            scale = s.max_grad_norm / grad_norm
        with torch.no_grad():
            for t, g in zip(self.trainable, self.grads):
                t.grad = (g * scale).to(t.dtype)
            self.adam.step()
            self.adam.zero_grad(set_to_none=True)
            if s.optimize_noise and s.renormalize_noise:
                _per_sample_renorm(self.noise, self.initial_norms)
        self.grads = None

    def finish(self, iterations: int, x0: torch.Tensor, total: float, per_sample) -> None:
        """Ran every iteration: the final iterate (forward only) is the last candidate."""
        loss, per_sample = self._own(total, per_sample)
        self.losses.append(loss)
        self.grad_norms.append(math.nan)
        if math.isfinite(loss):
            self._consider(iterations, loss, x0, per_sample)
        self._stop("iterations", iterations)

    def outcome(self) -> tuple:
        """(snapshot, loss, iteration) of the best iterate; the start (loss NaN) if none was finite."""
        if self.best is None:
            return self.first, math.nan, 0
        return self.best, self.best_loss, self.best_iteration

    def run(self) -> SampleRun:
        _, loss, iteration = self.outcome()
        return SampleRun(losses=self.losses, grad_norms=self.grad_norms, best_iteration=iteration,
                         best_loss=loss, stop_reason=self.stop_reason, iterations_run=self.iterations_run)


# ---------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------
def optimize(denoiser: Denoiser, noise: torch.Tensor, sigmas, cond, loss_fn: LossFn, *,
             noise_scale: Optional[float] = None, x_offset: Optional[torch.Tensor] = None,
             alpha: AlphaSpec = None, solver="dpmpp_2m", method="exact",
             adjoint_steps: Optional[int] = None, params: Sequence[torch.Tensor] = (),
             optimize_noise: bool = True, optimize_keyframes: bool = False,
             optimize_params: bool = False, iterations: int = 20, lr: float = 0.05,
             betas: tuple = (0.9, 0.999), renormalize_noise: bool = False,
             max_grad_norm: Optional[float] = None, early_stop_patience: Optional[int] = None,
             early_stop_min_delta: float = 0.0, seed: Union[int, Sequence[int]] = 0,
             resample_sde_noises: bool = False, per_sample: bool = False, memory_budget=0,
             callback: Optional[Callable[[IterationInfo], None]] = None,
             step_callback: Optional[StepCallback] = None) -> OptimizeResult:
    """Minimise Σ loss_fn(x0) over ε (and/or keyframes, θ) with Adam; see the module docstring.

    per_sample: optimise every sample of the batch on its own, the batch sharing each
    network call (loss_fn must return shape (B,); not with optimize_params); the result
    equals one-by-one runs to round-off (module docstring) and carries `samples`.
    seed: an integer, or one per sample (sample b's SDE noises from its own generator).
    memory_budget: the gradient's (`gradient`): "auto", megabytes of kept network graphs, or
    0 = recompute every step's graph.

    Every argument is checked before the first network call; errors read
    "optimize: <argument>: …". x_offset must have the noise's shape (it is converted to the
    noise's dtype and device); floating-point keyframes may have another dtype than the
    noise (the denoiser sees them in the noise's dtype; they are optimised and returned
    in their own).
    """
    settings = _check_settings(noise, x_offset, iterations=iterations, optimize_noise=optimize_noise,
                               optimize_keyframes=optimize_keyframes, optimize_params=optimize_params,
                               renormalize_noise=renormalize_noise, resample_sde_noises=resample_sde_noises,
                               per_sample=per_sample, lr=lr, betas=betas, max_grad_norm=max_grad_norm,
                               early_stop_patience=early_stop_patience,
                               early_stop_min_delta=early_stop_min_delta, seed=seed, noise_scale=noise_scale,
                               callback=callback, memory_budget=memory_budget)
    with torch.inference_mode(False):
        problem = _Problem(denoiser, sigmas, loss_fn, settings, x_offset=x_offset, alpha=alpha, solver=solver,
                           method=method, adjoint_steps=adjoint_steps, params=params, cond=cond, noise=noise,
                           step_callback=step_callback)
        if settings.per_sample:
            tracks = [_Track(problem, slice(b, b + 1)) for b in range(problem.batch)]
        else:
            tracks = [_Track(problem, None)]
        _run_iterations(problem, tracks)
        return _per_sample_result(problem, tracks) if settings.per_sample else _joint_result(problem, tracks[0])


def _run_iterations(problem: _Problem, tracks: list) -> None:
    """The Adam iterations until every track has stopped, then the final forward-only pass
    for the tracks that ran them all."""
    settings = problem.settings
    for k in range(settings.iterations):
        res = problem.gradient()
        grads = problem.trainable_grads(res)
        running = [t for t in tracks if t.active]
        for t in running:
            t.record(k, res, grads)
        if not any(t.active for t in running):
            return
        if settings.callback is not None:
            settings.callback(_iteration_info(problem, tracks, k, res, grads))
        for t in running:
            if t.active:
                t.update(k)
        if not any(t.active for t in tracks):
            return
    x0, total, per_sample = problem.forward_only()
    for t in tracks:
        if t.active:
            t.finish(settings.iterations, x0, total, per_sample)


def _iteration_info(problem: _Problem, tracks: list, k: int, res, grads: list) -> IterationInfo:
    info = IterationInfo(iteration=k, num_iterations=problem.settings.iterations, loss=float(res.loss),
                         per_sample_loss=res.per_sample_loss, grad_norm=tracks[0].grad_norms[-1], x0=res.x0,
                         noise=problem.eps.clone(), best_loss=tracks[0].best_loss,
                         best_iteration=tracks[0].best_iteration)
    if not problem.settings.per_sample:
        return info
    # per sample: the scalars cover the samples still running, the per-sample fields all
    # (a stopped sample's: this pass at its frozen iterate)
    active = [t.active for t in tracks]
    norms = [_grad_norm([g[t.rows] for g in grads]) for t in tracks]
    best_iterations = [t.best_iteration for t in tracks]
    info.active = torch.tensor(active)
    info.per_sample_grad_norm = torch.tensor(norms, dtype=torch.float64)
    info.per_sample_best_loss = torch.tensor([t.best_loss for t in tracks], dtype=torch.float64)
    info.per_sample_best_iteration = best_iterations
    info.loss = sum(t.losses[-1] for t in tracks if t.active)
    info.grad_norm = math.hypot(*(n for n, a in zip(norms, active) if a))
    info.best_loss = sum(t.best_loss for t in tracks)
    info.best_iteration = best_iterations[0] if len(set(best_iterations)) == 1 else -1
    return info


# ---------------------------------------------------------------------------------------
# the results
# ---------------------------------------------------------------------------------------
def _joint_result(problem: _Problem, track: _Track) -> OptimizeResult:
    (noise, leaves, params, x0, per_sample), loss, iteration = track.outcome()
    with torch.no_grad():
        for p, v in zip(problem.params, params):
            p.copy_(v)                   # θ is left at its best values
    cond = problem.cond(leaves)
    return OptimizeResult(noise=noise, x_init=problem.noise_scale * noise + problem.offset,
                          keyframes=cond.keyframes, cond=cond, params=params, x0=x0, loss=loss,
                          per_sample_loss=per_sample, best_iteration=iteration, losses=track.losses,
                          grad_norms=track.grad_norms, stop_reason=track.stop_reason,
                          iterations_run=track.iterations_run, counts=problem.counts)


def _per_sample_result(problem: _Problem, tracks: list) -> OptimizeResult:
    """Every sample's best iterate, joined along the batch."""
    bests = [t.outcome()[0] for t in tracks]
    noise = torch.cat([b[0] for b in bests])
    if problem.settings.optimize_keyframes:
        leaves = [torch.cat([b[1][j] for b in bests]) for j in range(len(problem.leaves))]
    else:
        leaves = [l.clone() for l in problem.leaves]
    cond = problem.cond(leaves)
    runs = [t.run() for t in tracks]
    summary = summarize(runs)
    return OptimizeResult(noise=noise, x_init=problem.noise_scale * noise + problem.offset,
                          keyframes=cond.keyframes, cond=cond,
                          params=tuple(p.detach().clone() for p in problem.params),
                          x0=torch.cat([b[3] for b in bests]), loss=summary.loss,
                          per_sample_loss=torch.cat([b[4] for b in bests]), best_iteration=summary.best_iteration,
                          losses=summary.losses, grad_norms=summary.grad_norms, stop_reason=summary.stop_reason,
                          iterations_run=summary.iterations_run, counts=problem.counts, samples=runs)


def _flatten_like(conditioning: ScheduledConditioning, grad_keyframes: list) -> list:
    """The keyframe gradients in the order of conditioning.leaves()."""
    flat = []
    for kf, g in zip(conditioning.keyframes, grad_keyframes):
        if isinstance(kf, torch.Tensor):
            flat.append(g)
        else:
            flat += list(g.values())
    return flat
