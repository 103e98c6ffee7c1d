"""Forward solvers: ComfyUI's loops, the Gaussian closed form, stored SDE noises, validation."""
import math

import pytest
import torch

import adjoint
from adjoint import Position, ScheduledConditioning, Timeline
from oracles import (alpha_fn, flow_sigmas, format_table, gaussian_flow_map, make_gaussian, make_gmm,
                     reference_sampler, rel_err, slope)

F64 = torch.float64
NS = [16, 32, 64, 128]
SOLVERS = ["dpmpp_1", "dpmpp_2m", "sde_dpmpp_1"]


def grid_for(alpha, n=12):
    """ComfyUI-like grids: Karras (σ 10 → 0.05) for α = 1, a shifted linear flow schedule."""
    return adjoint.karras_sigmas(n, 0.05, 10.0) if alpha is None else flow_sigmas(n)


def three_keyframes(batch, d, interpolation, seed=0):
    g = torch.Generator().manual_seed(seed)
    kfs = [torch.randn(batch, d, generator=g, dtype=F64) for _ in range(3)]
    return kfs, Timeline((Position(0.0), Position(0.3), Position(0.7)), interpolation)


@pytest.mark.parametrize("alpha", [None, "flow"])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("interpolation", ["hold", "linear"])
def test_forward_matches_comfyui_loop(alpha, solver, interpolation):
    b, d = 3, 5
    den = make_gmm(d=d, alpha=alpha)
    kfs, tl = three_keyframes(b, d, interpolation)
    sc = ScheduledConditioning(kfs, tl)
    sig = grid_for(alpha)
    n = len(sig) - 1
    g = torch.Generator().manual_seed(1)
    x = float(sig[0]) * torch.randn(b, d, generator=g, dtype=F64)
    noises = [torch.randn(b, d, generator=g, dtype=F64) for _ in range(n - 1)]
    traj = adjoint.sample(den, x, sig, sc, alpha=alpha, solver=solver,
                          sde_noises=noises if solver.startswith("sde") else None)

    def cond_at(i):
        bl = tl.blend_at(i, n)
        return (1 - bl.weight) * kfs[bl.first] + bl.weight * kfs[bl.second]

    ref = reference_sampler(den, x, sig, cond_at, alpha, solver, noises, tl.hard_switches(n))
    assert rel_err(traj.x0, ref) < 1e-13
    assert len(traj.xs) == n and len(traj.denoised) == n
    assert torch.equal(traj.xs[0], x)
    assert traj.counts.forwards == n and traj.counts.forwards_with_grad == 0
    assert torch.equal(traj.denoised[-1] * alpha_fn(alpha)(0.0), traj.x0)   # final step: a pure denoise


def test_2m_restarts_its_history_at_hard_switches():
    kfs, tl = three_keyframes(1, 4, "hold")
    sig = adjoint.karras_sigmas(20, 0.05, 10.0)
    traj = adjoint.sample(make_gmm(d=4), 10 * torch.ones(1, 4, dtype=F64), sig, ScheduledConditioning(kfs, tl))
    orders = [c.order for c in traj.coefficients]
    assert traj.switch_steps == frozenset({6, 14})
    assert orders[0] == 1 and orders[6] == 1 and orders[14] == 1 and orders[-1] == 1
    assert all(o == 2 for i, o in enumerate(orders) if i not in (0, 6, 14, 19))
    assert all(c.d_prev == 0.0 for c in (traj.coefficients[6], traj.coefficients[14]))


def _gaussian_case(alpha, scheduled, s=0.5, d=4, b=2):
    g = torch.Generator().manual_seed(7)
    smax, smin = (10.0, 0.05) if alpha is None else (0.98, 0.05)
    mus = [torch.randn(b, d, generator=g, dtype=F64) for _ in range(2 if scheduled else 1)]
    tl = Timeline((Position(0.0), Position(0.5))) if scheduled else Timeline.constant()
    x = smax * torch.randn(b, d, generator=g, dtype=F64)
    # the switch of a 50 % keyframe sits at the λ midpoint of every uniform-λ grid with even N
    grid = adjoint.make_grid(adjoint.uniform_lambda_sigmas(3, smin, smax, alpha), alpha)
    sig_mid = grid.sigmas[1]
    segments = ([(smax, sig_mid, mus[0]), (sig_mid, smin, mus[1])] if scheduled else [(smax, smin, mus[0])])
    return make_gaussian(d=d, s=s, alpha=alpha), x, mus, tl, segments, (smax, smin), s


def gaussian_sample(den, x, mus, segments, s, alpha, smin):
    """The continuous problem the solvers discretise: the exact flow map σ_max → σ_min, then
    the final step's exact denoise D(x, σ_min) (a pure denoise, as in every ComfyUI sampler)."""
    return den(gaussian_flow_map(x, segments, s, alpha), torch.tensor(smin, dtype=x.dtype), mus[-1])


@pytest.mark.parametrize("alpha", [None, "flow"])
@pytest.mark.parametrize("scheduled", [False, True])
def test_gaussian_closed_form_flow_map_is_reproduced(alpha, scheduled):
    """x0 of the solvers → the exact flow map, at order 1 (DPM-Solver++(1)) and 2 (2M)."""
    den, x, mus, tl, segments, (smax, smin), s = _gaussian_case(alpha, scheduled)
    exact = gaussian_sample(den, x, mus, segments, s, alpha, smin)
    rows = {}
    for solver in ["dpmpp_1", "dpmpp_2m"]:
        rows[solver] = [rel_err(adjoint.sample(den, x, adjoint.uniform_lambda_sigmas(n + 1, smin, smax, alpha),
                                               ScheduledConditioning(mus, tl), alpha=alpha, solver=solver).x0,
                                exact) for n in NS]
    print("\n" + format_table(f"Gaussian flow map, x0 rel. error (alpha={alpha}, scheduled={scheduled})",
                              NS, rows))
    for errs in rows.values():
        assert all(b < a for a, b in zip(errs, errs[1:]))
    assert 0.8 <= slope(NS, rows["dpmpp_1"]) <= 1.2
    assert 1.6 <= slope(NS, rows["dpmpp_2m"]) <= 2.4    # pre-asymptotic at N = 16 for flow + switch
    assert rows["dpmpp_2m"][-1] < 1e-4


def test_sde_noises_are_stored_and_reproduce_the_trajectory():
    den = make_gmm(d=4)
    sig = adjoint.karras_sigmas(10, 0.05, 10.0)
    c = torch.zeros(1, 4, dtype=F64)
    x = 10 * torch.ones(2, 4, dtype=F64)
    t1 = adjoint.sample(den, x, sig, c, solver="sde_dpmpp_1", generator=torch.Generator().manual_seed(3))
    assert len(t1.sde_noises) == 9
    t2 = adjoint.sample(den, x, sig, c, solver="sde_dpmpp_1", sde_noises=t1.sde_noises)
    t3 = adjoint.sample(den, x, sig, c, solver="sde_dpmpp_1", generator=torch.Generator().manual_seed(3))
    for t in (t2, t3):
        assert torch.equal(t.x0, t1.x0) and all(torch.equal(a, b) for a, b in zip(t.xs, t1.xs))
    t4 = adjoint.sample(den, x, sig, c, solver="sde_dpmpp_1", generator=torch.Generator().manual_seed(4))
    assert not torch.equal(t4.x0, t1.x0)
    assert adjoint.sample(den, x, sig, c, solver="dpmpp_2m").sde_noises is None


def test_flow_grid_starting_at_sigma_one():
    """Flux/SD3 schedules start at σ = 1 exactly (α = 0, λ = −∞): the first step is a pure prediction."""
    d = 4
    den = make_gmm(d=d, alpha="flow")
    sig = torch.cat([torch.linspace(1.0, 0.05, 10, dtype=F64), torch.zeros(1, dtype=F64)])
    x = torch.randn(2, d, dtype=F64, generator=torch.Generator().manual_seed(0))
    c = torch.zeros(1, d, dtype=F64)
    for solver in ["dpmpp_1", "dpmpp_2m"]:
        traj = adjoint.sample(den, x, sig, c, alpha="flow", solver=solver)
        ref = reference_sampler(den, x, sig, lambda i: c, "flow", solver)
        assert torch.isfinite(traj.x0).all() and rel_err(traj.x0, ref) < 1e-13
        assert traj.coefficients[1].order == 1     # no 2M step across λ = −∞


def test_float32_follows_the_inputs():
    den64 = make_gmm(d=4)
    den32 = make_gmm(d=4, dtype=torch.float32)
    sig = adjoint.karras_sigmas(12, 0.05, 10.0, dtype=torch.float32)
    x = 10 * torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    c = torch.zeros(1, 4)
    t32 = adjoint.sample(den32, x, sig, c)
    t64 = adjoint.sample(den64, x.double(), sig, c.double())
    assert t32.x0.dtype == torch.float32
    assert rel_err(t32.x0.double(), t64.x0) < 1e-5


def test_grids_look_like_comfyui():
    for sig in (adjoint.karras_sigmas(8, 0.03, 14.6), adjoint.uniform_lambda_sigmas(9, 0.03, 14.6),
                adjoint.uniform_lambda_sigmas(9, 0.02, 0.98, "flow"), flow_sigmas(8)):
        assert sig[-1] == 0 and bool((sig[1:] < sig[:-1]).all())
    g = adjoint.make_grid(adjoint.uniform_lambda_sigmas(9, 0.02, 0.98, "flow"), "flow")
    hs = [g.h(i) for i in range(7)]
    assert max(hs) - min(hs) < 1e-12
    assert g.lambdas[-1] == math.inf and g.num_steps == 9


def test_step_callback_and_inference_mode_inputs():
    den = make_gmm(d=4)
    sig = adjoint.karras_sigmas(5, 0.05, 10.0)
    calls = []
    with torch.inference_mode():
        x = 10 * torch.ones(1, 4, dtype=F64)
        c = torch.zeros(1, 4, dtype=F64)
        traj = adjoint.sample(den, x, sig, c, step_callback=lambda *a: calls.append(a))
        res = adjoint.gradient(den, x, sig, c, lambda x0: (x0 ** 2).sum())
    assert calls == [("forward", i, 5) for i in range(1, 6)]
    assert torch.isfinite(traj.x0).all() and torch.isfinite(res.grad_x_init).all()


def test_validation_errors_name_the_argument():
    den = make_gmm(d=4)
    x = torch.ones(2, 4, dtype=F64)
    c = torch.zeros(1, 4, dtype=F64)
    with pytest.raises(ValueError, match="strictly descending"):
        adjoint.sample(den, x, torch.tensor([10.0, 5.0, 6.0, 0.0]), c)
    with pytest.raises(ValueError, match="must end at 0"):
        adjoint.sample(den, x, torch.tensor([10.0, 5.0, 1.0]), c)
    with pytest.raises(ValueError, match="1-D"):
        adjoint.sample(den, x, torch.ones(2, 2), c)
    with pytest.raises(ValueError, match="alpha"):
        adjoint.sample(den, x, torch.tensor([2.0, 0.5, 0.0]), c, alpha="flow")
    with pytest.raises(ValueError, match="alpha: unknown name"):
        adjoint.sample(den, x, torch.tensor([2.0, 0.5, 0.0]), c, alpha="vp")
    with pytest.raises(ValueError, match=r"solver: unknown solver 'euler'; valid names: dpmpp_1, ddim, dpmpp_2m"):
        adjoint.sample(den, x, torch.tensor([2.0, 0.5, 0.0]), c, solver="euler")
    sig = torch.tensor([2.0, 1.0, 0.5, 0.0], dtype=F64)
    with pytest.raises(ValueError, match="sde_noises: need one noise per step"):
        adjoint.sample(den, x, sig, c, solver="sde_dpmpp_1", sde_noises=[torch.zeros_like(x)])
    with pytest.raises(ValueError, match=r"sde_noises\[1\] has shape"):
        adjoint.sample(den, x, sig, c, solver="sde_dpmpp_1", sde_noises=[torch.zeros_like(x), torch.zeros(3)])
    with pytest.raises(ValueError, match="takes no noises"):
        adjoint.sample(den, x, sig, c, solver="dpmpp_2m", sde_noises=[torch.zeros_like(x)] * 2)
    with pytest.raises(ValueError, match=r"keyframe 1 has batch 3 .* x_init has batch 2"):
        adjoint.sample(den, x, sig, ScheduledConditioning([c, torch.zeros(3, 4, dtype=F64)],
                                                          Timeline((Position(0.0), Position(0.5)))))
    with pytest.raises(ValueError, match="denoiser returned"):
        adjoint.sample(lambda x, s, c: x[:1], x, sig, c)
    with pytest.raises(TypeError, match="cond must be"):
        adjoint.sample(den, x, sig, [c])


def test_sde_noise_scale_scales_only_the_injected_noise():
    """x = α·x0 + σ·s·ε (a flow model trained with scaled noise, s = 8): λ shifts by −log s, so
    only the SDE's noise coefficient grows by s, and a zero denoiser keeps std(x_i) = s·σ_i."""
    sig = flow_sigmas(8)
    grid = adjoint.make_grid(sig, "flow")
    plain, scaled = adjoint.SDEDPMSolverPP1(), adjoint.SDEDPMSolverPP1(noise_scale=8.0)
    for i in range(grid.num_steps):
        a, b = plain.coefficients(grid, i, False), scaled.coefficients(grid, i, False)
        assert (a.x, a.d, a.d_prev) == (b.x, b.d, b.d_prev) and b.noise == 8.0 * a.noise
    x = 8.0 * float(sig[0]) * torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    traj = adjoint.sample(lambda x, sigma, c: torch.zeros_like(x), x, sig, torch.zeros(1, 1, dtype=F64),
                          alpha="flow", solver=scaled, generator=torch.Generator().manual_seed(1))
    for xi, sigma in zip(traj.xs, traj.sigmas):
        assert abs(float(xi.std()) / (8.0 * sigma) - 1.0) < 0.03
    assert repr(scaled) == "SDEDPMSolverPP1(noise_scale=8.0)" and repr(plain) == "SDEDPMSolverPP1()"
    with pytest.raises(ValueError, match=r"noise_scale must be finite and ≥ 0, got -1"):
        adjoint.SDEDPMSolverPP1(noise_scale=-1.0)


def test_lambda_form_2m_is_the_more_accurate_integrator_on_flow_models():
    """The README's advice: on a flow model (α = 1 − σ) DPM-Solver++(2M) in λ = log(α/σ) has a
    smaller error than the same solver in ComfyUI's α = 1 coordinates at 8–32 steps; both
    converge to the same ODE solution (measured on the GMM oracle, shift-3 flow grid)."""
    den = make_gmm(alpha="flow", seed=1)
    cond = torch.zeros(1, 6, dtype=torch.float64)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def x0(n, alpha):
        sig = flow_sigmas(n)
        return adjoint.sample(den, x * sig[0], sig, cond, alpha=alpha, solver="dpmpp_2m").x0

    ref = x0(2048, "flow")
    errors = {n: (rel_err(x0(n, "flow"), ref), rel_err(x0(n, None), ref)) for n in (8, 16, 32, 128)}
    print("\nflow 2M relative error, λ-form vs ComfyUI form:",
          {n: f"{a:.3g} / {b:.3g}" for n, (a, b) in errors.items()})
    for n in (8, 16, 32):
        assert errors[n][0] < errors[n][1], (n, errors[n])
    assert errors[128][0] < 1e-3 and errors[128][1] < 1e-3
