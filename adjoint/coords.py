"""ComfyUI's sampling coordinates: α(σ), the half log-SNR λ = log(α/σ), and σ grids.

ComfyUI writes every noisy latent as x = α(σ)·x0 + σ·ε. α = 1 for EPS, V_PREDICTION
and EDM models; α = 1 − σ for rectified-flow models (SD3, Flux). The exponential
integrators of `solvers.py` and the adjoints of `adjoints.py` only need, per grid
point, the numbers σ, α(σ) and λ(σ); `Grid` holds them as Python floats (float64),
computed once from the σ tensor ComfyUI's scheduler produces.

λ grows as sampling proceeds (σ falls): λ = +∞ at the final σ = 0, and λ = −∞ at a
flow model's σ = 1 (α = 0). Both infinities are handled explicitly by the solvers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch

AlphaSpec = Union[None, str, Callable[[float], float]]
ALPHA_NAMES = ("flow",)


def resolve_alpha(alpha: AlphaSpec) -> Callable[[float], float]:
    """None → α = 1 (EPS/V/EDM); "flow" → α = 1 − σ; a callable σ → α is used as is."""
    if alpha is None:
        return lambda sigma: 1.0
    if isinstance(alpha, str):
        if alpha == "flow":
            return lambda sigma: 1.0 - sigma
        raise ValueError(f"alpha: unknown name {alpha!r}; use None (α = 1), 'flow' (α = 1 − σ) "
                         "or a callable σ → α")
    if callable(alpha):
        return lambda sigma: float(alpha(sigma))
    raise TypeError(f"alpha must be None, 'flow' or a callable σ → α, got {type(alpha).__name__}")


def half_log_snr(sigma: float, alpha: float) -> float:
    """λ = log(α/σ); +∞ at σ = 0 and −∞ at α = 0 (a flow model's σ = 1)."""
    if sigma == 0.0:
        return math.inf
    if alpha == 0.0:
        return -math.inf
    return math.log(alpha) - math.log(sigma)


@dataclass(frozen=True)
class Grid:
    """The σ grid of one sampling run with α and λ at every point (Python floats).

    Step i goes from sigmas[i] to sigmas[i + 1]; there are num_steps = len(sigmas) − 1
    steps (network evaluations), the last one a pure denoise to σ = 0.
    """
    sigmas: tuple[float, ...]
    alphas: tuple[float, ...]
    lambdas: tuple[float, ...]

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    def h(self, i: int) -> float:
        """λ-length of step i (∞ for the final step to σ = 0)."""
        return self.lambdas[i + 1] - self.lambdas[i]

    def sigma_tensor(self, i: int, like: torch.Tensor) -> torch.Tensor:
        """σ_i as the 0-d tensor the denoiser receives (dtype and device of x)."""
        return torch.tensor(self.sigmas[i], dtype=like.dtype, device=like.device)


def make_grid(sigmas: Union[torch.Tensor, Sequence[float]], alpha: AlphaSpec = None) -> Grid:
    """Validate a ComfyUI σ grid (strictly descending, ending at 0) and tabulate α and λ."""
    if isinstance(sigmas, torch.Tensor):
        if sigmas.ndim != 1:
            raise ValueError(f"sigmas must be a 1-D tensor, got shape {tuple(sigmas.shape)}")
        values = [float(v) for v in sigmas.detach().cpu().double().tolist()]
    else:
        values = [float(v) for v in sigmas]
    if len(values) < 2:
        raise ValueError(f"sigmas needs at least 2 values (one step), got {len(values)}")
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"sigmas must be finite, got {values}")
    if values[-1] != 0.0:
        raise ValueError(f"sigmas must end at 0 (ComfyUI's schedulers append it), "
                         f"got sigmas[-1] = {values[-1]!r}")
    for i in range(1, len(values)):
        if not values[i] < values[i - 1]:
            raise ValueError(f"sigmas must be strictly descending, got sigmas[{i}] = {values[i]!r} "
                             f">= sigmas[{i - 1}] = {values[i - 1]!r}")
    alpha_fn = resolve_alpha(alpha)
    alphas = [alpha_fn(v) for v in values]
    for i, (s, a) in enumerate(zip(values, alphas)):
        if not math.isfinite(a) or a < 0.0 or (a == 0.0 and i != 0):
            raise ValueError(f"alpha(sigmas[{i}] = {s!r}) = {a!r}: α must be positive on the grid "
                             "(α = 0 is allowed only at the first point, a flow model's σ = 1)")
    lambdas = [half_log_snr(s, a) for s, a in zip(values, alphas)]
    return Grid(tuple(values), tuple(alphas), tuple(lambdas))


def sigma_from_lambda(lam: float, alpha: AlphaSpec = None, sigma_hi: float = 1e4) -> float:
    """Invert λ(σ): closed form for α = 1 and flow, bisection in log σ for a callable α."""
    if alpha is None:
        return math.exp(-lam)
    if alpha == "flow":
        return 1.0 / (1.0 + math.exp(lam))
    alpha_fn = resolve_alpha(alpha)
    lo, hi = math.log(1e-12), math.log(sigma_hi)   # λ decreases as σ grows
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        s = math.exp(mid)
        a = alpha_fn(s)
        lam_mid = -math.inf if a <= 0 else math.log(a) - mid
        if lam_mid > lam:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def uniform_lambda_sigmas(num_intervals: int, sigma_max: float, sigma_min: float,
                          alpha: AlphaSpec = None, dtype=torch.float64) -> torch.Tensor:
    """σ grid uniform in λ from sigma_max to sigma_min, then a final 0 (num_intervals + 1 steps).

    The natural grid for exponential integrators; doubling num_intervals nests the grids,
    which the convergence tests use.
    """
    alpha_fn = resolve_alpha(alpha)
    lam0 = half_log_snr(sigma_max, alpha_fn(sigma_max))
    lam1 = half_log_snr(sigma_min, alpha_fn(sigma_min))
    sig = [sigma_max]
    for j in range(1, num_intervals):
        sig.append(sigma_from_lambda(lam0 + (lam1 - lam0) * j / num_intervals, alpha))
    sig += [sigma_min, 0.0]
    return torch.tensor(sig, dtype=dtype)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                  dtype=torch.float64) -> torch.Tensor:
    """Karras et al. (2022) grid as ComfyUI's `get_sigmas_karras` builds it: n values, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sig = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sig, sig.new_zeros([1])]).to(dtype)
