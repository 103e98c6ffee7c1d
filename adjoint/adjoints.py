"""Gradient methods: walk a recorded trajectory backwards, one VJP per backward step.

Notation (adjoint-math.md §3): a = ∂L/∂x, J = ∂D/∂x, K = ∂D/∂(keyframes, θ). Every
backward step costs one `DenoiserVJP` call: one backward through the graph of D at a
stored point, after which that graph is freed. The graph is recomputed there (a network
forward with grad), or was kept from the forward pass by `GraphKeeper` when a memory
budget allows (memory.py): the same graph, so the same gradient, one forward fewer.
Nothing else is expensive and nothing else holds a graph.

- `ExactDiscreteAdjoint` ("exact", the default): the transpose of the step the forward
  solver actually took, x_{i+1} = A·x_i + B·D_i + C·D_{i−1} + E·ξ_i. The cotangent of D_i
  collects B_i·a_{i+1} from its own step and C_{i+1}·a_{i+2} from the next (2M), and one
  VJP at (x_i, σ_i, c_i) is applied to their sum:
      a_i = A_i·a_{i+1} + J_iᵀ(B_i·a_{i+1} + C_{i+1}·a_{i+2}),   g_c += K_iᵀ(same).
  This is the gradient of the sample actually produced, to round-off, for every solver
  (SDE included, with its stored noises), at N forwards-with-grad + N VJPs.

- `AdjointDEIS1`, `AdjointDEIS2M` (probability-flow ODE) and `AdjointDEISSDE`
  (diffusion SDE with the noise path fixed): exponential integrators for the continuous
  adjoint equations, moved to ComfyUI's coordinates. The linear part is exact under
  u = σ·a, leaving integrals of e^{−λ}·V with V = α²Jᵀa (state) and e^{−λ}·W with
  W = (α²/σ)Kᵀa (keyframes, θ), evaluated at the cleaner end t of each interval:
      AdjointDEIS-1:  a_s = (σ_t/σ_s)·a_t + (α_t²/α_s)(1 − e^{−h})·J_tᵀa_t
                      g_c += α_t(e^{h} − 1)·K_tᵀa_t
      AdjointDEIS-2M: V, W linear in λ through t and the previous (cleaner) point r:
                      ∫ e^{−λ}(V_t + (λ − λ_t)ΔV) = (e^{−λ_s} − e^{−λ_t})V_t − e^{−λ_s}φ(h)ΔV,
                      φ(h) = h − 1 + e^{−h}, ΔV = (V_r − V_t)/(λ_r − λ_t); no extra network call.
      AdjointDEIS-SDE (Thm 3.1 of the paper: with the noise fixed the adjoint is an ODE
                      whose model term is twice the probability-flow one; the SDE's linear
                      part has the extra factor e^{−h}, so the weights become 2e^{−2λ}
                      with V = α²Jᵀa and W = (α³/σ²)Kᵀa frozen at t):
                      a_s = (σ_t/σ_s)e^{−h}·a_t + (α_t²/α_s)(1 − e^{−2h})·J_tᵀa_t
                      g_c += α_t(e^{2h} − 1)·K_tᵀa_t
  The σ = 0 end is degenerate for these formulas (h = ∞), so the final denoise step is
  always handled by its exact VJP (§3d); likewise the first step of a flow model that
  starts at σ = 1 (α = 0, λ = −∞).

  Kept graphs (memory budget): a method names the forward steps whose evaluation
  (x_i, σ_i, c_i) its backward differentiates (`graph_steps`); only those are kept. For
  `exact` that is every step; for the continuous methods the points of their adjoint grid
  that are evaluated with the step's own conditioning (not a switch's left limit), the
  final step, and step 0 when it starts at α = 0. A kept graph is used once: the
  continuous methods evaluate step N − 1 twice and recompute it the second time.

  Adjoint grid (M = adjoint_steps < N): the continuous methods step on a *subsequence*
  of the forward grid (every (N−1)/(M−1)-th stored point, rounded, always including the
  keyframe hard-switch steps), so the states they need are the stored forward states
  themselves: no interpolation and no backward re-solve is needed, and M VJPs are
  spent (one more per forced switch point). M > N is refused.

  Scheduled conditioning: on the interval (s, t) of forward steps p..q−1 the network is
  evaluated at (x_q, σ_q) with the conditioning that is active just *before* t: c_q, or
  c_{q−1} when q is a hard switch (the left limit of the càdlàg schedule). AdjointDEIS-2M
  restarts its history (a first-order step) at every switch, like the forward 2M solver.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .conditioning import ScheduledConditioning
from .coords import Grid
from .counting import CallCounts
from .memory import GraphAllowance, measuring
from .solvers import Denoiser, Solver, StepCallback, Trajectory


def forward_with_grad(denoiser: Denoiser, grid: Grid, conditioning: ScheduledConditioning,
                      leaves: Sequence[torch.Tensor], x: torch.Tensor, point: int, cond_step: int):
    """D at grid point `point` with conditioning step `cond_step`, recording its graph (call
    under grad mode): returns (D, the leaf x_in it was evaluated at)."""
    x_in = x.detach().requires_grad_(True)
    cond = conditioning.at(cond_step, grid.num_steps, leaves)
    d = denoiser(x_in, grid.sigma_tensor(point, x_in), cond)
    if isinstance(d, torch.Tensor) and not d.requires_grad:
        raise RuntimeError(
            "the denoiser's output does not depend on x, the conditioning or params through "
            "autograd; is it running under torch.no_grad() or torch.inference_mode()?")
    return d, x_in


@dataclass
class StepGraph:
    """Forward step i's D_i with its autograd graph, kept for the backward pass."""
    d: torch.Tensor
    x_in: torch.Tensor


class DenoiserVJP:
    """One VJP through D at a stored point: through the graph kept from the forward pass
    for that step, if there is one (it is used once, then freed), else through a network
    forward with grad made here; the graph dies on return.

    Differentiates with respect to x, the keyframe leaves (through the blend of the step
    requested) and the extra parameters θ. Returns (Jᵀv, [Kᵀv per leaf, (∂D/∂θ)ᵀv per θ])
    with None where the step does not depend on a leaf.
    """

    def __init__(self, denoiser: Denoiser, grid: Grid, conditioning: ScheduledConditioning,
                 leaves: Sequence[torch.Tensor], params: Sequence[torch.Tensor], counts: CallCounts,
                 kept: Optional[dict] = None):
        self.denoiser = denoiser
        self.grid = grid
        self.conditioning = conditioning
        self.leaves = list(leaves)
        self.params = list(params)
        self.counts = counts
        self.kept = {} if kept is None else kept   # step → StepGraph, from GraphKeeper

    @property
    def num_inputs(self) -> int:
        return len(self.leaves) + len(self.params)

    def __call__(self, x: torch.Tensor, point: int, cond_step: int, cotangent: torch.Tensor):
        kept = self.kept.pop(point, None) if cond_step == point else None
        with torch.enable_grad():
            if kept is None:
                d, x_in = forward_with_grad(self.denoiser, self.grid, self.conditioning, self.leaves,
                                            x, point, cond_step)
                self.counts.forwards_with_grad += 1
            else:
                d, x_in = kept.d, kept.x_in
            grads = torch.autograd.grad(d, [x_in, *self.leaves, *self.params],
                                        grad_outputs=cotangent.to(d.dtype), allow_unused=True)
            self.counts.vjps += 1
        gx = grads[0] if grads[0] is not None else torch.zeros_like(x)
        return gx, list(grads[1:])


class GraphKeeper:
    """The denoiser as `gradient`'s forward solve calls it: keeps graphs within the budget.

    Step i (the solve calls steps in order) runs with grad when the backward will need its
    graph (`steps`) and the allowance admits another graph: its conditioning is built again
    from the keyframe leaves inside the graph, the graph is measured (memory.measuring) and
    kept in `graphs` if it fits, and D_i comes back detached. Every other step is the plain
    forward the solve asked for (all of them at budget 0). Counts what it runs: a step run
    with grad is a forward with grad, kept or not.
    """

    def __init__(self, denoiser: Denoiser, grid: Grid, conditioning: ScheduledConditioning,
                 leaves: Sequence[torch.Tensor], params: Sequence[torch.Tensor], counts: CallCounts,
                 steps: frozenset, allowance: GraphAllowance):
        self.denoiser = denoiser
        self.grid = grid
        self.conditioning = conditioning
        self.leaves = list(leaves)
        self.params = list(params)
        self.counts = counts
        self.steps = steps
        self.allowance = allowance
        self.graphs: dict[int, StepGraph] = {}
        self.kept_steps: list[int] = []
        self.next_step = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond):
        i = self.next_step
        self.next_step += 1
        if i in self.steps and self.allowance.admits_next():
            return self.forward_kept(x, i)
        self.counts.forwards += 1
        return self.denoiser(x, sigma, cond)

    def forward_kept(self, x: torch.Tensor, i: int):
        with torch.enable_grad(), measuring(x.device, [x, *self.leaves, *self.params]) as meter:
            d, x_in = forward_with_grad(self.denoiser, self.grid, self.conditioning, self.leaves, x, i, i)
        self.counts.forwards_with_grad += 1
        if not isinstance(d, torch.Tensor) or d.shape != x.shape:
            return d                     # the solve names the denoiser's mistake
        if meter.measurable and self.allowance.charge(meter.nbytes):
            self.graphs[i] = StepGraph(d, x_in)
            self.kept_steps.append(i)
        else:
            self.allowance.closed = True
        return d.detach()


class GradAccumulator:
    """Running sums of the keyframe-leaf and θ gradients (None until something arrives)."""

    def __init__(self, n: int):
        self.values: list[Optional[torch.Tensor]] = [None] * n

    def add(self, grads: Sequence[Optional[torch.Tensor]], scale: float = 1.0):
        for j, g in enumerate(grads):
            if g is None or scale == 0.0:
                continue
            g = g if scale == 1.0 else scale * g
            self.values[j] = g if self.values[j] is None else self.values[j] + g


@dataclass
class AdjointContext:
    """Everything a gradient method needs; the method returns ∂L/∂x_init and fills `grads`."""
    trajectory: Trajectory
    vjp: DenoiserVJP
    grads: GradAccumulator
    step_callback: Optional[StepCallback] = None

    def progress(self, done: int, total: int):
        if self.step_callback is not None:
            self.step_callback("backward", done, total)


def _scaled_sum(terms):
    """Σ c·v over (c, v) pairs, skipping zero coefficients and None vectors."""
    out = None
    for c, v in terms:
        if v is None or c == 0.0:
            continue
        out = c * v if out is None else out + c * v
    return out


class GradientMethod:
    name: str = ""

    def supports(self, solver: Solver) -> bool:
        return True

    def validate_adjoint_steps(self, num_steps: int, adjoint_steps: Optional[int]) -> None:
        """Raise ValueError before any network call if adjoint_steps cannot be honoured."""

    def graph_steps(self, num_steps: int, adjoint_steps: Optional[int], switches: frozenset,
                    first_point_degenerate: bool) -> frozenset:
        """The forward steps i whose evaluation (x_i, σ_i, c_i) the backward differentiates:
        the graphs worth keeping under a memory budget."""
        return frozenset(range(num_steps))

    def backward(self, ctx: AdjointContext, a_final: torch.Tensor,
                 adjoint_steps: Optional[int] = None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class ExactDiscreteAdjoint(GradientMethod):
    """The transpose of every forward step, in reverse order: the gradient of the sample produced."""
    name = "exact"

    def validate_adjoint_steps(self, num_steps, adjoint_steps):
        if adjoint_steps is not None and adjoint_steps != num_steps:
            raise ValueError(f"adjoint_steps: the exact adjoint always takes the forward's {num_steps} "
                             f"steps; got {adjoint_steps} (use a continuous method for fewer)")

    def backward(self, ctx, a_final, adjoint_steps=None):
        traj = ctx.trajectory
        n = traj.num_steps
        self.validate_adjoint_steps(n, adjoint_steps)
        a = a_final                # ∂L/∂x_{i+1}
        d_cotangent_next = None    # C_{i+1}·a_{i+2}: what step i+1 sends back to D_i
        for done, i in enumerate(reversed(range(n)), start=1):
            co = traj.coefficients[i]
            cot = co.d * a if d_cotangent_next is None else co.d * a + d_cotangent_next
            gx, gp = ctx.vjp(traj.xs[i], i, i, cot)
            ctx.grads.add(gp)
            d_cotangent_next = co.d_prev * a if co.d_prev != 0.0 else None
            a = gx if co.x == 0.0 else co.x * a + gx
            ctx.progress(done, n)
        return a


def phi_linear(h: float) -> float:
    """φ(h) = h − 1 + e^{−h} (≈ h²/2), by series where the direct form cancels."""
    if h < 1e-2:
        return h * h * (0.5 - h * (1.0 / 6.0 - h * (1.0 / 24.0 - h * (1.0 / 120.0 - h / 720.0))))
    return h + math.expm1(-h)


def adjoint_points(num_steps: int, adjoint_steps: Optional[int], switches: frozenset,
                   first_point_degenerate: bool) -> list[int]:
    """Forward-grid indices 0 = q_0 < … < q_m = N−1 the continuous adjoint steps between.

    adjoint_steps = M counts backward steps including the exact final denoise, so
    m = M − 1 continuous intervals are spread evenly (rounded) over the N − 1 forward
    intervals; hard-switch steps (and index 1 when the grid starts at α = 0) are added.
    """
    n = num_steps
    if n < 2:
        if adjoint_steps not in (None, 1):
            raise ValueError(f"adjoint_steps: a 1-step sampler has 1 backward step, got {adjoint_steps}")
        return [0]
    m_total = n if adjoint_steps is None else int(adjoint_steps)
    if not 2 <= m_total <= n:
        raise ValueError(f"adjoint_steps must be between 2 and the number of sampling steps {n} "
                         f"(it counts the final denoise step), got {adjoint_steps}")
    m = m_total - 1
    points = {(2 * j * (n - 1) + m) // (2 * m) for j in range(m + 1)}
    points |= {s for s in switches if 0 < s < n}
    if first_point_degenerate:
        points.add(1)
    return sorted(points)


class _ContinuousAdjoint(GradientMethod):
    """Shared walk of AdjointDEIS-1/-2M/-SDE over the adjoint grid (see module docstring)."""
    order = 1
    sde = False

    def supports(self, solver):
        return solver.stochastic == self.sde

    def validate_adjoint_steps(self, num_steps, adjoint_steps):
        adjoint_points(num_steps, adjoint_steps, frozenset(), False)

    def graph_steps(self, num_steps, adjoint_steps, switches, first_point_degenerate):
        points = adjoint_points(num_steps, adjoint_steps, switches, first_point_degenerate)
        steps = {num_steps - 1}                      # the exact final denoise
        for p, q in zip(points, points[1:]):
            if p == 0 and first_point_degenerate:
                steps.add(0)                         # the exact first step from α = 0
            elif q not in switches:                  # at a switch: c's left limit, not c_q
                steps.add(q)
        return frozenset(steps)

    def backward(self, ctx, a_final, adjoint_steps=None):
        traj = ctx.trajectory
        grid = traj.grid
        n = traj.num_steps
        switches = traj.switch_steps
        points = adjoint_points(n, adjoint_steps, switches, grid.alphas[0] == 0.0)
        total = len(points)   # the final denoise + one step per interval
        done = 0

        # The σ = 0 end: the exact VJP of the final denoise x_N = α(0)·D(x_{N−1}).
        co = traj.coefficients[n - 1]
        gx, gp = ctx.vjp(traj.xs[n - 1], n - 1, n - 1, co.d * a_final)
        ctx.grads.add(gp)
        a = gx
        done += 1
        ctx.progress(done, total)

        previous = None   # (λ_r, V_r, W_r) of the cleaner point, for the 2M extrapolation
        for j in reversed(range(len(points) - 1)):
            p, q = points[j], points[j + 1]
            if grid.alphas[p] == 0.0:
                # λ_s = −∞ (flow model at σ = 1): take the exact transpose of forward step p = 0.
                co = traj.coefficients[p]
                gx, gp = ctx.vjp(traj.xs[p], p, p, co.d * a)
                ctx.grads.add(gp)
                a = gx if co.x == 0.0 else co.x * a + gx
                previous = None
            else:
                cond_step = q - 1 if q in switches else q     # left limit of c(λ) at t
                gx, gp = ctx.vjp(traj.xs[q], q, cond_step, a)
                restart = q == n - 1 or q in switches
                a, previous = self.step(ctx, grid, p, q, a, gx, gp, None if restart else previous)
            done += 1
            ctx.progress(done, total)
        return a

    def step(self, ctx, grid, p, q, a_t, jta, kta, previous):
        raise NotImplementedError


class AdjointDEIS1(_ContinuousAdjoint):
    """First-order exponential integrator for the probability-flow adjoint (V, W frozen at t)."""
    name = "adjointdeis-1"

    def step(self, ctx, grid, p, q, a_t, jta, kta, previous):
        sig_s, sig_t = grid.sigmas[p], grid.sigmas[q]
        al_s, al_t = grid.alphas[p], grid.alphas[q]
        h = grid.lambdas[q] - grid.lambdas[p]
        # a_s = (σ_t/σ_s)·a_t + (α_t²/α_s)(1 − e^{−h})·J_tᵀa_t
        a_s = (sig_t / sig_s) * a_t + (al_t ** 2 / al_s) * -math.expm1(-h) * jta
        # keyframes and θ: g += α_t(e^{h} − 1)·K_tᵀa_t
        ctx.grads.add(kta, al_t * math.expm1(h))
        return a_s, None


class AdjointDEIS2M(_ContinuousAdjoint):
    """Multistep second order: V = α²Jᵀa and W = (α²/σ)Kᵀa linear in λ through t and r."""
    name = "adjointdeis-2m"
    order = 2

    def step(self, ctx, grid, p, q, a_t, jta, kta, previous):
        sig_s, sig_t = grid.sigmas[p], grid.sigmas[q]
        al_t = grid.alphas[q]
        lam_s, lam_t = grid.lambdas[p], grid.lambdas[q]
        h = lam_t - lam_s
        v_t = al_t ** 2 * jta                                  # V_t = α_t²·J_tᵀa_t
        w_t = [None if g is None else (al_t ** 2 / sig_t) * g for g in kta]   # W_t
        e_s = math.exp(-lam_s)                                 # e^{−λ_s} = σ_s/α_s
        # ∫_{λ_s}^{λ_t} e^{−λ}·f dλ = wt·f_t + wr·f_r (f constant if no previous point)
        wt, wr = e_s * -math.expm1(-h), 0.0
        if previous is not None:
            lam_r, v_r, w_r = previous
            slope = e_s * phi_linear(h) / (lam_r - lam_t)      # weight of ΔV·(λ_r − λ_t)
            wt, wr = wt + slope, -slope
        # a_s = (σ_t/σ_s)·a_t + ∫ e^{−λ}V dλ / σ_s
        terms = [(sig_t / sig_s, a_t), (wt / sig_s, v_t)]
        if previous is not None:
            terms.append((wr / sig_s, v_r))
        a_s = _scaled_sum(terms)
        ctx.grads.add(w_t, wt)
        if previous is not None:
            ctx.grads.add(w_r, wr)
        return a_s, (lam_t, v_t, w_t)


class AdjointDEISSDE(_ContinuousAdjoint):
    """First-order adjoint of SDE-DPM-Solver++ with its noise path fixed (twice the ODE's model term)."""
    name = "adjointdeis-sde"
    sde = True

    def step(self, ctx, grid, p, q, a_t, jta, kta, previous):
        sig_s, sig_t = grid.sigmas[p], grid.sigmas[q]
        al_s, al_t = grid.alphas[p], grid.alphas[q]
        h = grid.lambdas[q] - grid.lambdas[p]
        # a_s = (σ_t/σ_s)e^{−h}·a_t + (α_t²/α_s)(1 − e^{−2h})·J_tᵀa_t
        a_s = (sig_t / sig_s) * math.exp(-h) * a_t + (al_t ** 2 / al_s) * -math.expm1(-2 * h) * jta
        # keyframes and θ: g += α_t(e^{2h} − 1)·K_tᵀa_t
        ctx.grads.add(kta, al_t * math.expm1(2 * h))
        return a_s, None


METHODS: dict[str, type[GradientMethod]] = {
    "exact": ExactDiscreteAdjoint,
    "adjointdeis-1": AdjointDEIS1,
    "adjointdeis-2m": AdjointDEIS2M,
    "adjointdeis-sde": AdjointDEISSDE,
}


def get_method(method) -> GradientMethod:
    """A GradientMethod instance from its name, or as is."""
    if isinstance(method, GradientMethod):
        return method
    if isinstance(method, str) and method in METHODS:
        return METHODS[method]()
    raise ValueError(f"method: unknown gradient method {method!r}; valid names: {', '.join(METHODS)}")
