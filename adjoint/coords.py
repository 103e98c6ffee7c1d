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
import numbers
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from .checks import as_float, as_int, check_dtype_arg, named

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
    raise TypeError(f"alpha: must be None, 'flow' or a callable σ → α, got {type(alpha).__name__}")


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
    with named("make_grid"):
        return _make_grid(sigmas, alpha)


def _make_grid(sigmas, alpha: AlphaSpec) -> Grid:
    """make_grid without the function-name prefix (sample/gradient/optimize add their own)."""
    if isinstance(sigmas, torch.Tensor):
        if sigmas.ndim != 1:
            raise ValueError(f"sigmas: must be a 1-D tensor, got shape {tuple(sigmas.shape)}")
        if sigmas.is_complex() or sigmas.dtype == torch.bool:
            raise TypeError(f"sigmas: must be real numbers, got dtype {sigmas.dtype}")
        values = [float(v) for v in sigmas.detach().cpu().double().tolist()]
    elif isinstance(sigmas, (str, bytes)) or not isinstance(sigmas, Iterable):
        raise TypeError(f"sigmas: must be a 1-D tensor or a sequence of numbers, got {type(sigmas).__name__}")
    else:
        values = []
        for i, v in enumerate(sigmas):
            if isinstance(v, bool) or not (isinstance(v, numbers.Real)
                                           or (isinstance(v, torch.Tensor) and v.numel() == 1)):
                raise TypeError(f"sigmas: sigmas[{i}] is not a number ({type(v).__name__} {v!r})")
            values.append(float(v))
    if len(values) < 2:
        raise ValueError(f"sigmas: needs at least 2 values (one step), got {len(values)}")
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"sigmas: must be finite, got {values}")
    if values[-1] != 0.0:
        raise ValueError(f"sigmas: must end at 0 (ComfyUI's schedulers append it), "
                         f"got sigmas[-1] = {values[-1]!r}")
    for i in range(1, len(values)):
        if not values[i] < values[i - 1]:
            raise ValueError(f"sigmas: must be strictly descending, got sigmas[{i}] = {values[i]!r} "
                             f">= sigmas[{i - 1}] = {values[i - 1]!r}")
    alpha_fn = resolve_alpha(alpha)
    alphas = [_alpha_at(alpha_fn, v) for v in values]
    for i, (s, a) in enumerate(zip(values, alphas)):
        if not math.isfinite(a) or a < 0.0 or (a == 0.0 and i != 0):
            raise ValueError(f"alpha: alpha(sigmas[{i}] = {s!r}) = {a!r}: α must be positive on the grid "
                             "(α = 0 is allowed only at the first point, a flow model's σ = 1)")
    lambdas = [half_log_snr(s, a) for s, a in zip(values, alphas)]
    return Grid(tuple(values), tuple(alphas), tuple(lambdas))


def _alpha_at(alpha_fn: Callable[[float], float], sigma: float) -> float:
    """α(σ) from a resolved α, naming `alpha` when a user callable fails or returns a non-number."""
    try:
        return alpha_fn(sigma)
    except (TypeError, ValueError, ArithmeticError) as e:
        raise ValueError(f"alpha: alpha({sigma!r}) failed: {type(e).__name__}: {e}") from e


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


def _grid_bounds(where: str, steps, sigma_min, sigma_max):
    """Check the grid helpers' common arguments: steps ≥ 1 and 0 < sigma_min < sigma_max, finite."""
    if steps is None:
        raise TypeError("steps: missing (the number of sampling steps, len(sigmas) − 1)")
    if sigma_min is None or sigma_max is None:
        missing = " and ".join(n for n, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)) if v is None)
        raise TypeError(f"{missing}: missing; the call is {where}(steps, sigma_min, sigma_max, ...)")
    steps = as_int("steps", steps, minimum=1)
    sigma_min = as_float("sigma_min", sigma_min, above=0.0)
    sigma_max = as_float("sigma_max", sigma_max, above=0.0)
    if not sigma_min < sigma_max:
        raise ValueError(f"sigma_min: must be < sigma_max, got sigma_min = {sigma_min!r}, "
                         f"sigma_max = {sigma_max!r}; the call is {where}(steps, sigma_min, sigma_max, ...)")
    return steps, sigma_min, sigma_max


def _deprecated(message: str):
    # stacklevel 3: the caller of the public grid helper
    warnings.warn(message, DeprecationWarning, stacklevel=3)


def uniform_lambda_sigmas(steps: Optional[int] = None, sigma_min: Optional[float] = None,
                          sigma_max: Optional[float] = None, alpha: AlphaSpec = None,
                          dtype: torch.dtype = torch.float64, *,
                          num_intervals: Optional[int] = None) -> torch.Tensor:
    """σ grid for `steps` sampling steps, uniform in λ from sigma_max down to sigma_min, then 0.

    Same conventions as `karras_sigmas`: bounds in the order (sigma_min, sigma_max) and
    `steps` = len(sigmas) − 1 = N, the number of network evaluations, counting the final
    denoise to σ = 0; so the steps − 1 λ-intervals from sigma_max to sigma_min are followed
    by the final step to 0 (steps = 1 gives [sigma_max, 0]). The natural grid for exponential
    integrators; doubling steps − 1 nests the grids, which the convergence tests use.

    Deprecated call forms (they still work, with a DeprecationWarning, and give the grids
    they always gave): the former order ``uniform_lambda_sigmas(num_intervals, sigma_max,
    sigma_min, alpha)`` (detected by the second argument being larger than the third; its
    count was λ-intervals, i.e. steps = num_intervals + 1) and ``num_intervals=`` by keyword.
    A count given positionally with both bounds by keyword is read as `steps`.
    """
    where = "uniform_lambda_sigmas"
    with named(where):
        if num_intervals is not None:
            if steps is not None:
                raise TypeError("num_intervals: give steps or the deprecated num_intervals, not both")
            intervals = as_int("num_intervals", num_intervals, minimum=1)
            _deprecated(f"{where}(num_intervals=n, ...) is deprecated: pass steps=n + 1 "
                        f"(steps = len(sigmas) − 1 counts the final denoise, as in karras_sigmas)")
            steps = intervals + 1
        elif _is_real(sigma_min) and _is_real(sigma_max) and float(sigma_min) > float(sigma_max):
            # the former order (num_intervals, sigma_max, sigma_min): sigma_min would be the larger
            intervals = as_int("num_intervals", steps, minimum=1)
            _deprecated(f"{where}(n, sigma_max, sigma_min, ...) is deprecated: the order is now "
                        f"{where}(steps, sigma_min, sigma_max, ...) with steps = n + 1 = len(sigmas) − 1 "
                        "(counting the final denoise, as in karras_sigmas)")
            steps, sigma_min, sigma_max = intervals + 1, sigma_max, sigma_min
        steps, sigma_min, sigma_max = _grid_bounds(where, steps, sigma_min, sigma_max)
        dtype = check_dtype_arg("dtype", dtype)
        alpha_fn = resolve_alpha(alpha)
        a_max, a_min = _alpha_at(alpha_fn, sigma_max), _alpha_at(alpha_fn, sigma_min)
        if not (math.isfinite(a_max) and a_max > 0.0 and math.isfinite(a_min) and a_min > 0.0):
            raise ValueError(f"alpha: α must be positive at both bounds, got alpha({sigma_max!r}) = {a_max!r}, "
                             f"alpha({sigma_min!r}) = {a_min!r} (for a flow model starting at σ = 1, "
                             "build the grid below 1 and prepend 1.0)")
    lam0 = half_log_snr(sigma_max, a_max)
    lam1 = half_log_snr(sigma_min, a_min)
    sig = [sigma_max]
    intervals = steps - 1
    if intervals >= 1:
        for j in range(1, intervals):
            sig.append(sigma_from_lambda(lam0 + (lam1 - lam0) * j / intervals, alpha))
        sig.append(sigma_min)
    sig.append(0.0)
    return torch.tensor(sig, dtype=dtype)


def karras_sigmas(steps: Optional[int] = None, sigma_min: Optional[float] = None,
                  sigma_max: Optional[float] = None, rho: float = 7.0,
                  dtype: torch.dtype = torch.float64, *, n: Optional[int] = None) -> torch.Tensor:
    """Karras et al. (2022) grid as ComfyUI's `get_sigmas_karras` builds it: `steps` values
    from sigma_max down to sigma_min, then 0.

    Same conventions as `uniform_lambda_sigmas`: bounds in the order (sigma_min,
    sigma_max), `steps` = len(sigmas) − 1 = N counting the final denoise. The former
    keyword ``n=`` still works, with a DeprecationWarning.
    """
    where = "karras_sigmas"
    with named(where):
        if n is not None:
            if steps is not None:
                raise TypeError("n: give steps or the deprecated n, not both")
            _deprecated(f"{where}(n=...) is deprecated: the count is called steps (= len(sigmas) − 1)")
            steps = n
        steps, sigma_min, sigma_max = _grid_bounds(where, steps, sigma_min, sigma_max)
        rho = as_float("rho", rho, above=0.0)
        dtype = check_dtype_arg("dtype", dtype)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sig = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sig, sig.new_zeros([1])]).to(dtype)


def _is_real(v) -> bool:
    return (isinstance(v, numbers.Real) and not isinstance(v, bool)) or (
        isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_complex())
