"""Forward exponential-integrator samplers in ComfyUI's coordinates, and the trajectory record.

Step i goes from s = σ_i (noisier) to t = σ_{i+1} (cleaner), h = λ_t − λ_s > 0, with the
data-prediction denoiser D_i = D(x_i, σ_i, c_i). Every step of every solver here is
*linear* in (x_i, D_i, D_{i−1}, ξ_i) with scalar coefficients:

    x_{i+1} = A·x_i + B·D_i + C·D_{i−1} + E·ξ_i

so a solver is just a rule for (A, B, C, E) (`StepCoefficients`); the forward loop
applies it and the exact discrete adjoint (adjoints.py) transposes it. Coefficients are
computed in float64 Python floats whatever the tensors' dtype.

- DPM-Solver++(1) = DDIM = DEIS-1:  A = σ_t/σ_s, B = α_t·(1 − e^{−h}).
- DPM-Solver++(2M), r = h_prev/h:   B = α_t(1 − e^{−h})(1 + 1/(2r)), C = −α_t(1 − e^{−h})/(2r);
  first order at step 0, at the final step, and at keyframe hard switches (the D_{i−1}
  term would straddle a jump in c and lose an order).
- SDE-DPM-Solver++(1) (ComfyUI's dpmpp_sde family, η = 1): A = (σ_t/σ_s)e^{−h},
  B = α_t(1 − e^{−2h}), E = s·σ_t·sqrt(1 − e^{−2h}) with s the noise's own scale (1 unless
  the model's noise is scaled: x = α·x0 + σ·s·ε); the noises ξ_i are stored, so the
  trajectory is a deterministic function of (x_T, ξ, c).
- The last step to σ = 0 (h = ∞) is a pure denoise for all of them: x_N = α(0)·D_{N−1}.

`solve` runs the loop under whatever grad mode is active (the public `sample` runs it
under no_grad; the tests run it with grad to get the autograd reference) and records
the states x_i (latents only), the D values and the coefficients actually used.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .checks import check_finite
from .conditioning import ScheduledConditioning
from .coords import Grid
from .counting import CallCounts

Denoiser = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]
StepCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class StepCoefficients:
    """x_{i+1} = x·x_i + d·D_i + d_prev·D_{i−1} + noise·ξ_i ; order is 1 or 2."""
    x: float
    d: float
    d_prev: float = 0.0
    noise: float = 0.0
    order: int = 1


def final_denoise(grid: Grid, i: int) -> StepCoefficients:
    """Step to σ = 0: h = ∞, so σ_t/σ_s = 0 and 1 − e^{−h} = 1: x_N = α(0)·D."""
    return StepCoefficients(x=0.0, d=grid.alphas[i + 1])


def dpmpp_1_coefficients(grid: Grid, i: int) -> StepCoefficients:
    """DPM-Solver++(1): x_t = (σ_t/σ_s)·x_s + α_t·(1 − e^{−h})·D_s."""
    s, t = grid.sigmas[i], grid.sigmas[i + 1]
    if t == 0.0:
        return final_denoise(grid, i)
    h = grid.h(i)
    return StepCoefficients(x=t / s, d=grid.alphas[i + 1] * -math.expm1(-h))


def dpmpp_2m_coefficients(grid: Grid, i: int, reset_history: bool) -> StepCoefficients:
    """DPM-Solver++(2M): D_s replaced by (1 + 1/(2r))·D_s − (1/(2r))·D_prev, r = h_prev/h."""
    if i == 0 or reset_history or grid.sigmas[i + 1] == 0.0:
        return dpmpp_1_coefficients(grid, i)
    h, h_prev = grid.h(i), grid.h(i - 1)
    if not math.isfinite(h_prev):       # previous step started at λ = −∞ (flow σ = 1): 1/(2r) = 0
        return dpmpp_1_coefficients(grid, i)
    r = h_prev / h
    first = dpmpp_1_coefficients(grid, i)
    return StepCoefficients(x=first.x, d=first.d * (1.0 + 1.0 / (2.0 * r)),
                            d_prev=-first.d / (2.0 * r), order=2)


def sde_dpmpp_1_coefficients(grid: Grid, i: int, noise_scale: float = 1.0) -> StepCoefficients:
    """SDE-DPM-Solver++(1): x_t = (σ_t/σ_s)e^{−h}·x_s + α_t(1 − e^{−2h})·D_s + s·σ_t·sqrt(1 − e^{−2h})·ξ.

    s is the noise's own scale (x = α·x0 + σ·s·ε; s = 1 except for flow models trained with
    scaled noise, e.g. HiDream-O1's 8): it shifts λ by −log s, so h and the other two
    coefficients are unchanged, and only the injected noise grows by s.
    """
    s, t = grid.sigmas[i], grid.sigmas[i + 1]
    if t == 0.0:
        return final_denoise(grid, i)
    h = grid.h(i)
    one_minus_e2h = -math.expm1(-2.0 * h)
    return StepCoefficients(x=(t / s) * math.exp(-h), d=grid.alphas[i + 1] * one_minus_e2h,
                            noise=noise_scale * t * math.sqrt(one_minus_e2h))


class Solver:
    """A forward solver: its name and its rule for the step coefficients."""
    name: str = ""
    stochastic: bool = False

    def coefficients(self, grid: Grid, i: int, reset_history: bool) -> StepCoefficients:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class DPMSolverPP1(Solver):
    name = "dpmpp_1"

    def coefficients(self, grid, i, reset_history):
        return dpmpp_1_coefficients(grid, i)


class DPMSolverPP2M(Solver):
    name = "dpmpp_2m"

    def coefficients(self, grid, i, reset_history):
        return dpmpp_2m_coefficients(grid, i, reset_history)


class SDEDPMSolverPP1(Solver):
    """noise_scale: the noise's own scale s (x = α·x0 + σ·s·ε), 1 for almost every model."""
    name = "sde_dpmpp_1"
    stochastic = True

    def __init__(self, noise_scale: float = 1.0):
        if isinstance(noise_scale, bool) or not isinstance(noise_scale, numbers.Real):
            raise TypeError(f"SDEDPMSolverPP1: noise_scale must be a real number, got {type(noise_scale).__name__}")
        if not (math.isfinite(noise_scale) and noise_scale >= 0.0):
            raise ValueError(f"SDEDPMSolverPP1: noise_scale must be finite and ≥ 0, got {noise_scale}")
        self.noise_scale = float(noise_scale)

    def coefficients(self, grid, i, reset_history):
        return sde_dpmpp_1_coefficients(grid, i, self.noise_scale)

    def __repr__(self):
        return f"SDEDPMSolverPP1(noise_scale={self.noise_scale})" if self.noise_scale != 1.0 else "SDEDPMSolverPP1()"


SOLVERS: dict[str, type[Solver]] = {
    "dpmpp_1": DPMSolverPP1,
    "ddim": DPMSolverPP1,
    "dpmpp_2m": DPMSolverPP2M,
    "sde_dpmpp_1": SDEDPMSolverPP1,
}


def get_solver(solver) -> Solver:
    """A Solver instance from a name ("dpmpp_1"/"ddim", "dpmpp_2m", "sde_dpmpp_1") or as is."""
    if isinstance(solver, Solver):
        return solver
    if isinstance(solver, str) and solver in SOLVERS:
        return SOLVERS[solver]()
    raise ValueError(f"solver: unknown solver {solver!r}; valid names: {', '.join(SOLVERS)}")


def apply_step(co: StepCoefficients, x: torch.Tensor, d: torch.Tensor,
               d_prev: Optional[torch.Tensor], noise: Optional[torch.Tensor]) -> torch.Tensor:
    """x_{i+1} from the coefficients (terms with a zero coefficient are skipped)."""
    out = co.d * d if co.x == 0.0 else co.x * x + co.d * d
    if co.d_prev != 0.0:
        out = out + co.d_prev * d_prev
    if co.noise != 0.0:
        out = out + co.noise * noise
    return out


@dataclass
class Trajectory:
    """What a forward solve leaves behind: latents only, no graph.

    xs[i] is the state at which step i evaluated the denoiser (x_0 = x_init, …,
    x_{N−1}); denoised[i] = D_i; coefficients[i] the step actually taken; sde_noises the
    N − 1 noises of a stochastic solver (None for ODE solvers); x0 the final sample.
    """
    xs: list
    denoised: list
    coefficients: list
    x0: torch.Tensor
    grid: Grid
    solver: str
    switch_steps: frozenset
    sde_noises: Optional[list] = None
    counts: CallCounts = field(default_factory=CallCounts)

    @property
    def num_steps(self) -> int:
        return len(self.xs)

    @property
    def sigmas(self) -> tuple:
        return self.grid.sigmas


def check_sde_noises(noises: Sequence[torch.Tensor], x: torch.Tensor, num_steps: int) -> list:
    """N − 1 finite floating-point tensors shaped like x, converted to x's dtype and device."""
    if isinstance(noises, torch.Tensor):
        if noises.ndim != x.ndim + 1:
            raise TypeError(f"sde_noises: must be a list of {num_steps - 1} tensors shaped like x_init "
                            f"{tuple(x.shape)} (or one tensor stacking them), got a tensor of shape "
                            f"{tuple(noises.shape)}")
        noises = list(noises.unbind(0))
    try:
        noises = list(noises)
    except TypeError:
        raise TypeError(f"sde_noises: must be a list of tensors, got {type(noises).__name__}") from None
    if len(noises) != num_steps - 1:
        raise ValueError(f"sde_noises: need one noise per step before the final denoise, "
                         f"{num_steps - 1} for {num_steps} steps; got {len(noises)}")
    for j, n in enumerate(noises):
        if not isinstance(n, torch.Tensor) or not n.is_floating_point():
            got = f"dtype {n.dtype}" if isinstance(n, torch.Tensor) else type(n).__name__
            raise TypeError(f"sde_noises: sde_noises[{j}] must be a floating-point tensor, got {got}")
        if tuple(n.shape) != tuple(x.shape):
            raise ValueError(f"sde_noises: sde_noises[{j}] has shape {tuple(n.shape)}, x_init has {tuple(x.shape)}")
        check_finite(f"sde_noises: sde_noises[{j}]", n)
    return [n.to(dtype=x.dtype, device=x.device) for n in noises]


def draw_sde_noises(x: torch.Tensor, num_steps: int,
                    generator: Optional[torch.Generator]) -> list:
    """N − 1 standard normal noises shaped like x, in step order, from `generator`.

    Drawn on the generator's device (CPU generators give the same noises for a CUDA x
    as for a CPU one) and moved to x's device.
    """
    device = x.device if generator is None else generator.device
    return [torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)
            for _ in range(num_steps - 1)]


def solve(denoiser: Denoiser, x_init: torch.Tensor, grid: Grid, solver: Solver,
          conditioning: ScheduledConditioning, *, leaves: Optional[Sequence[torch.Tensor]] = None,
          sde_noises: Optional[list] = None, counts: Optional[CallCounts] = None,
          step_callback: Optional[StepCallback] = None) -> Trajectory:
    """Run the sampler from x_init over the grid, recording the trajectory.

    Runs in the caller's grad mode; with grad enabled and leaves requiring grad it is an
    ordinary differentiable torch program (the autograd reference of the tests).
    """
    n = grid.num_steps
    counts = CallCounts() if counts is None else counts
    switches = conditioning.switch_steps(n)
    if solver.stochastic and sde_noises is None:
        raise ValueError("sde_noises: a stochastic solver needs its noises")
    xs, ds, coeffs = [], [], []
    x, d_prev = x_init, None
    for i in range(n):
        cond = conditioning.at(i, n, leaves)
        d = denoiser(x, grid.sigma_tensor(i, x), cond)
        if torch.is_grad_enabled():
            counts.forwards_with_grad += 1
        else:
            counts.forwards += 1
        if not isinstance(d, torch.Tensor) or d.shape != x.shape:
            got = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
            raise ValueError(f"denoiser returned {got} for x of shape {tuple(x.shape)}; "
                             "it must return an x0 estimate shaped like x")
        co = solver.coefficients(grid, i, reset_history=i in switches)
        noise = sde_noises[i] if co.noise != 0.0 else None
        xs.append(x.detach())
        ds.append(d.detach())
        coeffs.append(co)
        x = apply_step(co, x, d, d_prev, noise)
        d_prev = d
        if step_callback is not None:
            step_callback("forward", i + 1, n)
    return Trajectory(xs=xs, denoised=ds, coefficients=coeffs, x0=x, grid=grid, solver=solver.name,
                      switch_steps=switches, sde_noises=sde_noises, counts=counts)
