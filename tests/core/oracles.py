"""Exact answers for the core tests (adjoint-math.md §5): no network anywhere.

- `GMMDenoiser`: the exact posterior mean D(x, σ, c) of x0 ~ Σ_k π_k N(c + θ_k, s²I) under
  x = α(σ)·x0 + σ·ε. K = 1 with θ = 0 is the Gaussian oracle (D linear in x), whose
  probability-flow map has the closed form `gaussian_flow_map`, also for a piecewise-
  constant schedule of μ. θ (the offsets) is an extra tensor the denoiser closes over.
- `DictCondGMM`: the same with ComfyUI-shaped conditioning {"cross_attn": (B, T, C),
  "pooled_output": (B, P)} mapped nonlinearly to the mean.
- `reference_sampler`: an independent transcription of ComfyUI's sampling loops
  (k_diffusion sample_dpmpp_2m / the η = 1 SDE step, with α), used for autograd
  references and to check the package's forward solvers.
- grids like ComfyUI's (descending, final 0) and a slope fit.
"""
from __future__ import annotations

import math

import torch


def alpha_fn(alpha):
    if alpha is None:
        return lambda s: 1.0
    if alpha == "flow":
        return lambda s: 1.0 - s
    return alpha


class GMMDenoiser:
    def __init__(self, offsets: torch.Tensor, log_weights: torch.Tensor, s: float, alpha=None):
        self.offsets = offsets          # θ: (K, d)
        self.log_weights = log_weights  # (K,)
        self.s2 = s * s
        self.alpha = alpha
        self.calls = 0

    def _alpha(self, sigma):
        return torch.ones_like(sigma) if self.alpha is None else 1.0 - sigma

    def mean(self, x, sigma, mu_center):
        """Posterior mean with component means mu_center[:, None] + offsets (mu_center (B|1, d))."""
        self.calls += 1
        b = x.shape[0]
        xf = x.reshape(b, -1)
        a = self._alpha(sigma)
        mu = mu_center.reshape(mu_center.shape[0], 1, -1) + self.offsets[None]   # (B|1, K, d)
        v = a * a * self.s2 + sigma * sigma
        diff = xf[:, None, :] - a * mu
        logits = self.log_weights - (diff * diff).sum(-1) / (2 * v)
        w = torch.softmax(logits, dim=-1)
        e = mu + (a * self.s2 / v) * diff
        return (w[..., None] * e).sum(1).reshape(x.shape)

    def __call__(self, x, sigma, cond):
        return self.mean(x, sigma, cond)


class DictCondGMM:
    """cond = {"cross_attn": (B|1, T, C), "pooled_output": (B|1, P)} → mean centre (B|1, d)."""

    def __init__(self, gmm: GMMDenoiser, w_tokens: torch.Tensor, w_pooled: torch.Tensor):
        self.gmm = gmm
        self.w_tokens = w_tokens     # (C, d)
        self.w_pooled = w_pooled     # (P, d)

    def __call__(self, x, sigma, cond):
        tokens = torch.tanh(cond["cross_attn"]) @ self.w_tokens        # (B, T, d)
        centre = tokens.mean(1) + cond["pooled_output"] @ self.w_pooled
        return self.gmm.mean(x, sigma, centre)


def make_gmm(d=6, k=3, s=1.0, offset_scale=1.0, alpha=None, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    offsets = offset_scale * torch.randn(k, d, generator=g, dtype=dtype)
    log_w = torch.log_softmax(torch.randn(k, generator=g, dtype=dtype), 0)
    return GMMDenoiser(offsets, log_w, s, alpha)


def make_gaussian(d=6, s=0.5, alpha=None, dtype=torch.float64):
    return GMMDenoiser(torch.zeros(1, d, dtype=dtype), torch.zeros(1, dtype=dtype), s, alpha)


def gaussian_flow_map(x_t, segments, s, alpha=None):
    """Exact probability-flow map of the Gaussian oracle (μ = c), piecewise in the schedule.

    segments: [(σ_from, σ_to, μ), …] covering σ_T → 0 in order. On each segment
    x(σ) − α(σ)μ scales with sqrt(α²s² + σ²).
    """
    a = alpha_fn(alpha)
    x = x_t
    for sig_a, sig_b, mu in segments:
        va = a(sig_a) ** 2 * s * s + sig_a ** 2
        vb = a(sig_b) ** 2 * s * s + sig_b ** 2
        x = a(sig_b) * mu + (x - a(sig_a) * mu) * math.sqrt(vb / va)
    return x


def reference_sampler(model, x, sigmas, cond_at, alpha=None, kind="dpmpp_2m", noises=None,
                      switches=()):
    """ComfyUI's loop written out independently (differentiable)."""
    a = alpha_fn(alpha)
    sig = [float(v) for v in sigmas]

    def lam(v):
        if v == 0:
            return math.inf
        if a(v) == 0:
            return -math.inf
        return math.log(a(v) / v)

    old_denoised = None
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        denoised = model(x, torch.tensor(s, dtype=x.dtype), cond_at(i))
        if t == 0:
            x = a(0.0) * denoised
        else:
            h = lam(t) - lam(s)
            if kind == "sde_dpmpp_1":
                x = (t / s) * math.exp(-h) * x + a(t) * (-math.expm1(-2 * h)) * denoised \
                    + t * math.sqrt(-math.expm1(-2 * h)) * noises[i]
            else:
                if kind == "dpmpp_2m" and old_denoised is not None and i not in switches \
                        and math.isfinite(lam(s) - lam(sig[i - 1])):
                    r = (lam(s) - lam(sig[i - 1])) / h
                    denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
                else:
                    denoised_d = denoised
                x = (t / s) * x - a(t) * math.expm1(-h) * denoised_d
        old_denoised = denoised
    return x


def flow_sigmas(n, sigma_max=0.98, sigma_min=0.02, shift=3.0, dtype=torch.float64):
    """A ComfyUI-like flow grid (shifted linear timesteps), n values then 0."""
    t = torch.linspace(sigma_max, sigma_min, n, dtype=torch.float64)
    sig = shift * t / (1 + (shift - 1) * t)
    return torch.cat([sig, sig.new_zeros(1)]).to(dtype)


def rel_err(a, b):
    if isinstance(a, (list, tuple)):
        num = math.sqrt(sum(float(((x - y) ** 2).sum()) for x, y in zip(a, b)))
        den = math.sqrt(sum(float((y ** 2).sum()) for y in b))
        return num / den
    if isinstance(a, dict):
        return rel_err(list(a.values()), [b[k] for k in a])
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def slope(ns, errors):
    """Least-squares slope of −log(error) against log(N): the measured order."""
    xs = [math.log(n) for n in ns]
    ys = [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return -sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def format_table(title, ns, rows):
    """rows: {label: [errors…]} → aligned text with the fitted slope per row."""
    lines = [title, "  " + "method".ljust(26) + "".join(f"N={n:<10d}" for n in ns) + "slope"]
    for label, errs in rows.items():
        lines.append("  " + label.ljust(26) + "".join(f"{e:<12.3e}" for e in errs)
                     + f"{slope(ns, errs):.3f}")
    return "\n".join(lines)
