"""The gradient methods compared, all on the same denoiser D, σ grid, schedule and loss.

Each returns a `Grad`: the loss of the sample, ∂L/∂x_T, ∂L/∂(each keyframe), and (ours
only) the core's own call counts. Network calls are counted independently at D
(workload.NetCounter).

ours      `adjoint.gradient(..., solver="dpmpp_2m", method=...)`: exact, adjointdeis-1,
          adjointdeis-2m, the latter two also with M = ⌈N/2⌉ adjoint steps; exact also
          with a memory budget (`memory_budget=`: the graphs of k of the N steps kept).
plain     one sampling pass, `adjoint.sample`: N network forwards without a graph (the
          unit of the budget rows' "× plain pass").
naive     torch autograd through the whole sampling loop: `adjoint.solvers.solve` (the same
          DPM-Solver++(2M) steps) run with grad, then one backward.
checkpoint the same loop with every network call wrapped in
          `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)` (the DNO / DITTO
          approach): activations are recomputed during the backward, step by step.
odeint    torchdiffeq.odeint_adjoint on the probability-flow ODE dx/dσ = (x − D(x, σ, c(σ)))/σ
          from σ_0 = σ_max to σ_{N−1} = σ_min with method="euler" on exactly our σ grid
          (options grid_constructor; the adjoint pass uses the same grid), adjoint_params =
          the two keyframes, then the final denoise x_0 = D(x(σ_min)) by plain autograd.
          Euler in σ on this ODE *is* DDIM = DPM-Solver++(1), so its forward is our
          dpmpp_1 sampler step for step. Two ways of calling it:
            "backsolve": t = [σ_max, σ_min]: the classic adjoint (AdjointDPM, neural ODEs);
                         x is re-solved backwards alongside the adjoint, O(1) memory;
            "stored":    t = the whole grid: torchdiffeq restarts every backward interval
                         from the forward state it stored there (no backsolve drift).
          c(σ) is the schedule's value at the grid step whose σ it is (the steps' own
          conditioning; the Euler steps only ever evaluate at grid points).
floor     N network forwards + N forwards with grad + N VJPs of the same D, nothing else.
greedy    (guidance only) see `greedy_gradient`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

import adjoint
from adjoint.solvers import apply_step, get_solver, solve


@dataclass
class Grad:
    loss: float
    grad_x: torch.Tensor
    grad_kf: list
    core_counts: Optional[dict] = None
    kept_steps: Optional[int] = None       # graphs kept from the forward pass (ours, with a budget)


def adjoint_steps_half(n: int) -> int:
    return max(2, math.ceil(n / 2))


def ours(wl, prob, method: str, half: bool = False, solver: str = "dpmpp_2m", memory_budget=0) -> Grad:
    m = adjoint_steps_half(prob.num_steps) if half else None
    res = adjoint.gradient(wl.denoiser, prob.x_init, prob.sigmas, prob.schedule, prob.loss_fn,
                           solver=solver, method=method, adjoint_steps=m, memory_budget=memory_budget)
    c = res.counts
    return Grad(float(res.loss), res.grad_x_init, list(res.grad_keyframes),
                {"forwards": c.forwards, "forwards_with_grad": c.forwards_with_grad, "vjps": c.vjps},
                kept_steps=len(res.kept_graphs.steps))


def step_graph_mb(wl, prob) -> float:
    """One step's graph as the core measures it (the largest of a call keeping them all)."""
    res = adjoint.gradient(wl.denoiser, prob.x_init, prob.sigmas, prob.schedule, prob.loss_fn,
                           memory_budget=1e9)
    return max(res.kept_graphs.step_mb)


def plain_pass(wl, prob) -> Grad:
    """One sampling pass: N forwards, no graph, no gradient."""
    traj = adjoint.sample(wl.denoiser, prob.x_init, prob.sigmas, prob.schedule)
    return Grad(float(prob.loss_fn(traj.x0).sum()), torch.zeros_like(prob.x_init),
                [torch.zeros(1)], {"forwards": traj.counts.forwards, "forwards_with_grad": 0, "vjps": 0})


def _autograd_through_loop(wl, prob, denoiser, solver="dpmpp_2m") -> Grad:
    grid = adjoint.make_grid(prob.sigmas)
    x = prob.x_init.detach().clone().requires_grad_(True)
    leaves = [l.detach().clone().requires_grad_(True) for l in prob.schedule.leaves()]
    with torch.enable_grad():
        traj = solve(denoiser, x, grid, get_solver(solver), prob.schedule, leaves=leaves)
        loss = prob.loss_fn(traj.x0).sum()
        grads = torch.autograd.grad(loss, [x, *leaves])
    return Grad(float(loss), grads[0], list(grads[1:]))


def naive(wl, prob) -> Grad:
    return _autograd_through_loop(wl, prob, wl.denoiser)


def checkpointed(wl, prob) -> Grad:
    from torch.utils.checkpoint import checkpoint
    d = wl.denoiser

    def ckpt_denoiser(x, sigma, cond):
        return checkpoint(d, x, sigma, cond, use_reentrant=False)
    return _autograd_through_loop(wl, prob, ckpt_denoiser)


def _sigma_grid_constructor(sigmas: list):
    """torchdiffeq grid_constructor: our σ points between t[0] and t[-1], in t's sign and order.

    torchdiffeq negates time (and wraps the constructor) for decreasing t, in the forward
    and again in the adjoint pass, so t can arrive as ±σ in either order.
    """
    def construct(func, y0, t):
        a, b = float(t[0]), float(t[-1])
        s = -1.0 if a < 0 or b < 0 else 1.0
        lo, hi = min(a, b), max(a, b)
        tol = 1e-6 * max(abs(lo), abs(hi))
        inner = sorted((s * v for v in sigmas if lo + tol < s * v < hi - tol), reverse=a > b)
        # exact endpoints (torchdiffeq asserts grid[0] == t[0] and grid[-1] == t[-1])
        return torch.tensor([a, *inner, b], dtype=t.dtype, device=t.device)
    return construct


def odeint(wl, prob, variant: str = "backsolve") -> Grad:
    from torchdiffeq import odeint_adjoint
    n = prob.num_steps
    sig = [float(s) for s in prob.sigmas[:-1]]          # σ_0 … σ_{N−1} (> 0)
    x = prob.x_init.detach().clone().requires_grad_(True)
    leaves = [l.detach().clone().requires_grad_(True) for l in prob.schedule.leaves()]
    sched = prob.schedule
    d = wl.denoiser

    def step_of(sigma: float) -> int:
        i = min(range(n), key=lambda j: abs(sig[j] - sigma))
        if abs(sig[i] - sigma) > 1e-5 * sig[i]:
            raise RuntimeError(f"odeint evaluated off the grid at σ = {sigma}")
        return i

    def func(t, y):
        sigma = abs(float(t))
        c = sched.at(step_of(sigma), n, leaves)
        s = torch.as_tensor(sigma, dtype=y.dtype, device=y.device)
        return (y - d(y, s, c)) / s

    dtype = prob.x_init.dtype
    if variant == "backsolve":
        t = torch.tensor([sig[0], sig[-1]], dtype=dtype)
        options = {"grid_constructor": _sigma_grid_constructor(sig)}
    elif variant == "stored":
        t = torch.tensor(sig, dtype=dtype)
        options = None
    else:
        raise ValueError(variant)
    with torch.enable_grad():
        ys = odeint_adjoint(func, x, t, method="euler", options=options, adjoint_params=tuple(leaves))
        x_last = ys[-1]
        x0 = d(x_last, torch.tensor(sig[-1], dtype=dtype), sched.at(n - 1, n, leaves))  # final denoise
        loss = prob.loss_fn(x0).sum()
        grads = torch.autograd.grad(loss, [x, *leaves])
    return Grad(float(loss), grads[0], list(grads[1:]))


def floor(wl, prob) -> Grad:
    """N forwards + N forwards with grad + N VJPs (w.r.t. x and the conditioning) of D."""
    n = prob.num_steps
    x = prob.x_init.detach().clone()
    c = prob.schedule.leaves()[0].detach().clone()
    sig = [torch.tensor(float(s), dtype=x.dtype) for s in prob.sigmas[:-1]]
    d = wl.denoiser
    with torch.no_grad():
        for i in range(n):
            d(x, sig[i], c)
    v = torch.ones_like(x)
    xg, cg = x.requires_grad_(True), c.requires_grad_(True)
    for i in range(n):
        with torch.enable_grad():
            out = d(xg, sig[i], cg)
            gx, gc = torch.autograd.grad(out, [xg, cg], v)
    return Grad(float("nan"), gx, [gc])


def greedy_gradient(wl, prob, solver: str = "dpmpp_2m"):
    """The greedy one-step baseline (posterior / universal-guidance style), precisely:

    run the sampler; at every step i evaluate D_i = x̂0(x_i) with a graph, take the loss of
    that x0 prediction, ℓ_i = loss(x̂0(x_i)), and its gradient g_i = ∂ℓ_i/∂x_i (one
    forward-with-grad + one VJP per step; the graph dies right away), then step the sampler
    with D_i detached. The gradient on x_T is G = Σ_i g_i, i.e. ∂x_i/∂x_T ≈ I
    (no backpropagation through the trajectory). The last step's x̂0 is the sample itself,
    so ℓ_{N−1} is the true loss and g_{N−1} its exact gradient w.r.t. x_{N−1}.
    Cost: N forwards with grad + N VJPs (no separate sampling pass).
    Returns (loss of the sample, G).
    """
    grid = adjoint.make_grid(prob.sigmas)
    solver_obj = get_solver(solver)
    n = grid.num_steps
    switches = prob.schedule.switch_steps(n)
    x = prob.x_init.detach().clone()
    d_prev = None
    total = torch.zeros_like(x)
    loss = None
    for i in range(n):
        cond = prob.schedule.at(i, n)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            d = wl.denoiser(xg, grid.sigma_tensor(i, xg), cond)
            li = prob.loss_fn(d).sum()
            (g,) = torch.autograd.grad(li, [xg])
        total += g
        loss = float(li)
        d = d.detach()
        co = solver_obj.coefficients(grid, i, reset_history=i in switches)
        x = apply_step(co, x, d, d_prev, None)
        d_prev = d
    return loss, total


def run_method(wl, prob, name: str) -> Grad:
    if name == "exact":
        return ours(wl, prob, "exact")
    if name in ("adjointdeis-1", "adjointdeis-2m"):
        return ours(wl, prob, name)
    if name in ("adjointdeis-1 M=N/2", "adjointdeis-2m M=N/2"):
        return ours(wl, prob, name.split()[0], half=True)
    if name == "naive autograd":
        return naive(wl, prob)
    if name == "checkpoint":
        return checkpointed(wl, prob)
    if name == "odeint_adjoint":
        return odeint(wl, prob, "backsolve")
    if name == "odeint_adjoint stored":
        return odeint(wl, prob, "stored")
    if name == "floor":
        return floor(wl, prob)
    raise ValueError(name)


OURS = ["exact", "adjointdeis-1", "adjointdeis-2m", "adjointdeis-1 M=N/2", "adjointdeis-2m M=N/2"]
PEERS = ["naive autograd", "checkpoint", "odeint_adjoint", "odeint_adjoint stored"]
ALL_METHODS = OURS + PEERS + ["floor"]
