"""Gradient methods against exact answers: autograd through the whole sampler (to round-off),
the Gaussian closed form, and the continuous gradient of a GMM (measured orders)."""
import gc
import math
import weakref

import pytest
import torch

import adjoint
from adjoint import Position, ScheduledConditioning, Timeline, slerp
from oracles import (DictCondGMM, flow_sigmas, format_table, gaussian_flow_map, make_gaussian, make_gmm,
                     reference_sampler, rel_err, slope)

F64 = torch.float64
NS = [16, 32, 64, 128]
NS_HALF = [32, 64, 128, 256]      # M = N/2 + 1 backward steps: the same M range as NS
SOLVERS = ["dpmpp_1", "dpmpp_2m", "sde_dpmpp_1"]
COND_KINDS = ["constant", "hold", "linear", "slerp_dict"]


def grid_for(alpha, n=12):
    return adjoint.karras_sigmas(n, 0.05, 10.0) if alpha is None else flow_sigmas(n)


# ---------------------------------------------------------------------------------------
# exact discrete adjoint == autograd through the whole sampler
# ---------------------------------------------------------------------------------------
def build_case(alpha, kind, solver, sigmas, b=3, d=5, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=F64).to(dtype)
    gmm = make_gmm(d=d, alpha=alpha, seed=seed, dtype=dtype)
    theta = gmm.offsets.clone().requires_grad_(True)     # θ: closed over by the denoiser
    gmm.offsets = theta
    den = gmm
    if kind == "constant":
        kfs, tl = [rnd(b, d)], Timeline.constant()
    elif kind in ("hold", "linear"):
        kfs = [rnd(b, d), rnd(1, d), rnd(b, d)]          # batch-b and shared keyframes mixed
        tl = Timeline((Position(0.0), Position(0.3), Position(0.7)), kind)
    else:
        den = DictCondGMM(gmm, rnd(4, d), rnd(3, d))
        kfs = [{"cross_attn": rnd(1, 6, 4), "pooled_output": rnd(b, 3)} for _ in range(3)]
        tl = Timeline((Position(0.0), Position(0.3), Position(0.7)), "slerp")
    n = len(sigmas) - 1
    x = float(sigmas[0]) * rnd(b, d) + (0.3 * rnd(b, d) if alpha == "flow" else 0)
    noises = [rnd(b, d) for _ in range(n - 1)] if solver.startswith("sde") else None
    target = rnd(b, d)
    loss_fn = lambda x0: ((x0 - target) ** 2).sum(1) + torch.sin(3 * x0).sum(1)
    return den, theta, kfs, tl, x, noises, loss_fn


def autograd_reference(den, theta, kfs, tl, x, sigmas, loss_fn, alpha, solver, noises):
    """Backprop through an independent transcription of ComfyUI's loop (the whole graph)."""
    n = len(sigmas) - 1
    xl = x.clone().requires_grad_(True)
    if isinstance(kfs[0], dict):
        kl = [{k: v.clone().requires_grad_(True) for k, v in kf.items()} for kf in kfs]
        flat = [v for kf in kl for v in kf.values()]
    else:
        kl = [k.clone().requires_grad_(True) for k in kfs]
        flat = kl

    def cond_at(i):
        bl = tl.blend_at(i, n)
        a, b = kl[bl.first], kl[bl.second]
        if bl.first == bl.second or bl.weight == 0:
            return a
        if isinstance(a, dict):
            return {k: slerp(a[k], b[k], bl.weight) for k in a}
        return (1 - bl.weight) * a + bl.weight * b

    x0 = reference_sampler(den, xl, sigmas, cond_at, alpha, solver, noises, tl.hard_switches(n))
    grads = torch.autograd.grad(loss_fn(x0).sum(), [xl, *flat, theta])
    gk = grads[1:-1]
    if isinstance(kfs[0], dict):
        it = iter(gk)
        gk = [{k: next(it) for k in kf} for kf in kfs]
    return x0.detach(), grads[0], list(gk), grads[-1]


@pytest.mark.parametrize("alpha", [None, "flow"])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("kind", COND_KINDS)
def test_exact_equals_autograd_through_the_sampler(alpha, solver, kind):
    sig = grid_for(alpha)
    den, theta, kfs, tl, x, noises, loss_fn = build_case(alpha, kind, solver, sig)
    res = adjoint.gradient(den, x, sig, ScheduledConditioning(kfs, tl), loss_fn, alpha=alpha,
                           solver=solver, params=(theta,), sde_noises=noises)
    x0, gx, gk, gth = autograd_reference(den, theta, kfs, tl, x, sig, loss_fn, alpha, solver, noises)
    assert rel_err(res.x0, x0) < 1e-12
    assert rel_err(res.grad_x_init, gx) < 1e-10
    assert len(res.grad_keyframes) == len(kfs)
    for got, want in zip(res.grad_keyframes, gk):
        if isinstance(want, dict):
            assert set(got) == set(want)
            for key in want:
                assert rel_err(got[key], want[key]) < 1e-10
        else:
            assert got.shape == want.shape and rel_err(got, want) < 1e-10
    assert rel_err(res.grad_params[0], gth) < 1e-10
    n = len(sig) - 1
    assert (res.counts.forwards, res.counts.forwards_with_grad, res.counts.vjps) == (n, n, n)


@pytest.mark.parametrize("solver", SOLVERS)
def test_exact_equals_autograd_in_float32(solver):
    sig = grid_for(None).float()
    den, theta, kfs, tl, x, noises, loss_fn = build_case(None, "linear", solver, sig, dtype=torch.float32)
    res = adjoint.gradient(den, x, sig, ScheduledConditioning(kfs, tl), loss_fn, solver=solver,
                           params=(theta,), sde_noises=noises)
    x0, gx, gk, gth = autograd_reference(den, theta, kfs, tl, x, sig, loss_fn, None, solver, noises)
    assert res.grad_x_init.dtype == torch.float32
    assert rel_err(res.grad_x_init, gx) < 1e-4
    assert rel_err(res.grad_keyframes, gk) < 1e-4
    assert rel_err(res.grad_params[0], gth) < 1e-4


@pytest.mark.parametrize("solver,method", [("dpmpp_2m", "adjointdeis-1"), ("dpmpp_2m", "adjointdeis-2m"),
                                           ("sde_dpmpp_1", "adjointdeis-sde")])
def test_continuous_methods_in_float32(solver, method):
    sig64 = grid_for("flow", 16)
    grads = []
    for dtype in (torch.float32, F64):
        den, theta, kfs, tl, x, noises, loss_fn = build_case("flow", "hold", solver, sig64.to(dtype), dtype=dtype)
        res = adjoint.gradient(den, x, sig64.to(dtype), ScheduledConditioning(kfs, tl), loss_fn, alpha="flow",
                               solver=solver, method=method, params=(theta,), sde_noises=noises, adjoint_steps=9)
        assert res.grad_x_init.dtype == dtype and res.grad_params[0].dtype == dtype
        grads.append(res)
    assert rel_err(grads[0].grad_x_init.double(), grads[1].grad_x_init) < 1e-4
    assert rel_err([g.double() for g in grads[0].grad_keyframes], grads[1].grad_keyframes) < 1e-4


def test_exact_on_a_flow_grid_starting_at_sigma_one():
    sig = torch.cat([torch.linspace(1.0, 0.05, 10, dtype=F64), torch.zeros(1, dtype=F64)])
    for solver in SOLVERS:
        den, theta, kfs, tl, x, noises, loss_fn = build_case("flow", "hold", solver, sig)
        sc = ScheduledConditioning(kfs, tl)
        res = adjoint.gradient(den, x, sig, sc, loss_fn, alpha="flow", solver=solver, params=(theta,),
                               sde_noises=noises)
        _, gx, gk, gth = autograd_reference(den, theta, kfs, tl, x, sig, loss_fn, "flow", solver, noises)
        assert rel_err(res.grad_x_init, gx) < 1e-10 and rel_err(res.grad_keyframes, gk) < 1e-10
        methods = ["adjointdeis-sde"] if solver.startswith("sde") else ["adjointdeis-1", "adjointdeis-2m"]
        for method in methods:
            r = adjoint.gradient(den, x, sig, sc, loss_fn, alpha="flow", solver=solver, method=method,
                                 params=(theta,), sde_noises=noises)
            assert torch.isfinite(r.grad_x_init).all() and torch.isfinite(r.grad_params[0]).all()
            assert all(torch.isfinite(g).all() for g in r.grad_keyframes)


def test_loss_that_uses_params_adds_its_own_gradient():
    sig = grid_for(None, 6)
    den, theta, kfs, tl, x, _, _ = build_case(None, "constant", "dpmpp_2m", sig)
    w = torch.tensor(0.7, dtype=F64, requires_grad=True)
    loss_fn = lambda x0: w * (x0 ** 2).sum(1)
    res = adjoint.gradient(den, x, sig, kfs[0], loss_fn, params=(theta, w))
    x0, _, _, _ = autograd_reference(den, theta, kfs, tl, x, sig, loss_fn, None, "dpmpp_2m", None)
    assert rel_err(res.grad_params[1], (x0 ** 2).sum()) < 1e-12
    assert w.requires_grad


# ---------------------------------------------------------------------------------------
# cost, memory, callbacks, results
# ---------------------------------------------------------------------------------------
class CountVJP(torch.autograd.Function):
    """Identity whose backward counts: an independent count of backward passes through D."""
    count = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        CountVJP.count += 1
        return g


def test_exact_costs_n_forwards_n_forwards_with_grad_and_n_vjps():
    gmm = make_gmm(d=4)

    def den(x, s, c):
        return CountVJP.apply(gmm(x, s, c))

    c = torch.zeros(1, 4, dtype=F64)
    x = 10 * torch.ones(2, 4, dtype=F64)
    for n in (5, 17):
        gmm.calls, CountVJP.count = 0, 0
        res = adjoint.gradient(den, x, adjoint.karras_sigmas(n, 0.05, 10.0), c, lambda x0: (x0 ** 2).sum(1))
        assert (res.counts.forwards, res.counts.forwards_with_grad, res.counts.vjps) == (n, n, n)
        assert res.trajectory.counts.forwards == n and res.trajectory.counts.vjps == 0
        assert gmm.calls == 2 * n and CountVJP.count == n        # counted by the denoiser itself


def test_continuous_methods_cost_adjoint_steps_vjps():
    gmm = make_gmm(d=4)
    c = torch.zeros(1, 4, dtype=F64)
    x = 10 * torch.ones(2, 4, dtype=F64)
    sig = adjoint.karras_sigmas(21, 0.05, 10.0)
    for method in ("adjointdeis-1", "adjointdeis-2m"):
        for m in (None, 11, 6, 2):
            res = adjoint.gradient(gmm, x, sig, c, lambda x0: (x0 ** 2).sum(1), method=method, adjoint_steps=m)
            want = 21 if m is None else m
            assert res.counts.forwards == 21 and res.counts.vjps == want == res.counts.forwards_with_grad
    # a hard switch off the adjoint grid is added to it (one more VJP)
    kfs = [c, c + 1]
    sc = ScheduledConditioning(kfs, Timeline((Position(0.0), Position(7, "step"))))
    res = adjoint.gradient(gmm, x, sig, sc, lambda x0: (x0 ** 2).sum(1), method="adjointdeis-2m", adjoint_steps=11)
    assert res.counts.vjps == 12


class SavedTensorCounter:
    """Counts tensors saved for backward that are still alive (via saved_tensors_hooks)."""

    def __init__(self):
        self.live = 0
        self.peak = 0

    def _release(self):
        self.live -= 1

    def pack(self, t):
        box = _Box(t)
        self.live += 1
        self.peak = max(self.peak, self.live)
        weakref.finalize(box, self._release)
        return box

    @staticmethod
    def unpack(box):
        return box.t


class _Box:
    def __init__(self, t):
        self.t = t


@pytest.mark.parametrize("solver,method", [("dpmpp_2m", "exact"), ("sde_dpmpp_1", "exact"),
                                           ("dpmpp_2m", "adjointdeis-2m"), ("sde_dpmpp_1", "adjointdeis-sde")])
def test_at_most_one_step_graph_is_alive(solver, method):
    """Saved tensors alive at the peak do not grow with N: one step's graph at a time."""
    gmm = make_gmm(d=4)
    kfs = [torch.zeros(1, 4, dtype=F64), torch.ones(1, 4, dtype=F64)]
    sc = ScheduledConditioning(kfs, Timeline((Position(0.0), Position(0.5)), "linear"))
    theta = gmm.offsets.clone().requires_grad_(True)
    gmm.offsets = theta
    peaks = []
    for n in (4, 24):
        counter = SavedTensorCounter()
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
            res = adjoint.gradient(gmm, 10 * torch.ones(2, 4, dtype=F64), adjoint.karras_sigmas(n, 0.05, 10.0), sc,
                                   lambda x0: (x0 ** 2).sum(1), solver=solver, method=method, params=(theta,),
                                   generator=torch.Generator().manual_seed(0))
        gc.collect()
        assert counter.live == 0                      # nothing kept after the call
        peaks.append(counter.peak)
        assert res.grad_x_init.grad_fn is None and not res.grad_x_init.requires_grad
    assert peaks[0] == peaks[1] > 0


def test_step_callback_phases_and_interrupt():
    gmm = make_gmm(d=4)
    theta = gmm.offsets.clone()          # does not require grad: gradient() switches it on and off
    gmm.offsets = theta
    kf = torch.zeros(1, 4, dtype=F64)
    sig = adjoint.karras_sigmas(6, 0.05, 10.0)
    calls = []
    res = adjoint.gradient(gmm, 10 * torch.ones(1, 4, dtype=F64), sig, kf, lambda x0: (x0 ** 2).sum(),
                           params=(theta,), step_callback=lambda *a: calls.append(a))
    assert calls == [("forward", i, 6) for i in range(1, 7)] + [("backward", i, 6) for i in range(1, 7)]
    assert not theta.requires_grad and not kf.requires_grad
    assert res.per_sample_loss is None and isinstance(res.loss, float)   # a float since issue 12

    class Interrupted(Exception):
        pass

    def interrupt(phase, done, total):
        if phase == "backward" and done == 3:
            raise Interrupted

    counter = SavedTensorCounter()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        with pytest.raises(Interrupted):
            adjoint.gradient(gmm, 10 * torch.ones(1, 4, dtype=F64), sig, kf, lambda x0: (x0 ** 2).sum(),
                             params=(theta,), step_callback=interrupt)
    gc.collect()
    assert counter.live == 0 and not theta.requires_grad
    again = adjoint.gradient(gmm, 10 * torch.ones(1, 4, dtype=F64), sig, kf, lambda x0: (x0 ** 2).sum(),
                             params=(theta,))
    assert torch.equal(again.grad_x_init, res.grad_x_init)


def test_misuse_errors():
    gmm = make_gmm(d=4)
    c = torch.zeros(1, 4, dtype=F64)
    x = torch.ones(2, 4, dtype=F64)
    sig = adjoint.karras_sigmas(6, 0.05, 10.0)
    loss = lambda x0: (x0 ** 2).sum(1)
    with pytest.raises(ValueError, match="method: unknown gradient method 'adjoint'; valid names: exact, "
                                         "adjointdeis-1, adjointdeis-2m, adjointdeis-sde"):
        adjoint.gradient(gmm, x, sig, c, loss, method="adjoint")
    with pytest.raises(ValueError, match="'adjointdeis-1' does not apply to the stochastic solver"):
        adjoint.gradient(gmm, x, sig, c, loss, solver="sde_dpmpp_1", method="adjointdeis-1")
    with pytest.raises(ValueError, match="'adjointdeis-sde' does not apply to the deterministic solver"):
        adjoint.gradient(gmm, x, sig, c, loss, method="adjointdeis-sde")
    with pytest.raises(ValueError, match="adjoint_steps: the exact adjoint always takes the forward's 6"):
        adjoint.gradient(gmm, x, sig, c, loss, adjoint_steps=3)
    for m in (1, 7):
        with pytest.raises(ValueError, match="adjoint_steps must be between 2 and"):
            adjoint.gradient(gmm, x, sig, c, loss, method="adjointdeis-2m", adjoint_steps=m)
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar or a per-sample tensor of shape \(2,\)"):
        adjoint.gradient(gmm, x, sig, c, lambda x0: x0)
    with pytest.raises(ValueError, match="does not depend on x0"):
        adjoint.gradient(gmm, x, sig, c, lambda x0: torch.zeros(2, dtype=F64))
    with pytest.raises(RuntimeError, match="does not depend on x, the conditioning or params"):
        adjoint.gradient(lambda x, s, cc: gmm(x, s, cc).detach(), x, sig, c, loss)


# ---------------------------------------------------------------------------------------
# convergence to the continuous gradient
# ---------------------------------------------------------------------------------------
def _problem(alpha, scheduled, oracle, seed=1, b=2, d=6):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=F64)
    smax, smin = (10.0, 0.05) if alpha is None else (0.98, 0.05)
    den = make_gmm(d=d, alpha=alpha, seed=seed) if oracle == "gmm" else make_gaussian(d=d, s=0.5, alpha=alpha)
    kfs = [rnd(b, d) for _ in range(2 if scheduled else 1)]
    # a 50 % switch falls on the λ midpoint of every uniform-λ grid with an even number of intervals
    tl = Timeline((Position(0.0), Position(0.5))) if scheduled else Timeline.constant()
    eps = rnd(b, d)
    target = rnd(b, d)
    loss_fn = lambda x0: ((x0 - target) ** 2).sum(1) + torch.sin(x0).sum(1)
    return den, kfs, tl, smax * eps, loss_fn, (smax, smin)


def _grad(problem, alpha, n, method="exact", solver="dpmpp_2m", adjoint_steps=None, sde_noises=None):
    den, kfs, tl, x, loss_fn, (smax, smin) = problem
    sig = adjoint.uniform_lambda_sigmas(n + 1, smin, smax, alpha)     # n λ-intervals + the final denoise
    return adjoint.gradient(den, x, sig, ScheduledConditioning(kfs, tl), loss_fn, alpha=alpha, solver=solver,
                            method=method, adjoint_steps=adjoint_steps, sde_noises=sde_noises)


_REFERENCES = {}


def gmm_reference(alpha, scheduled, n_ref=2048):
    """The continuous gradient: the exact discrete gradient of a 2M solve with 2048 λ-intervals
    (its own error is ~(128/2048)² = 1/256 of the 2M error at N = 128). Cached per session."""
    key = (alpha, scheduled, n_ref)
    if key not in _REFERENCES:
        _REFERENCES[key] = _grad(_problem(alpha, scheduled, "gmm"), alpha, n_ref)
    return _REFERENCES[key]


def _convergence_rows(problem, alpha, ref_x, ref_k):
    rows_x, rows_k = {}, {}
    runs = [("exact dpmpp_1", "exact", "dpmpp_1", NS, False), ("exact dpmpp_2m", "exact", "dpmpp_2m", NS, False),
            ("adjointdeis-1", "adjointdeis-1", "dpmpp_2m", NS, False),
            ("adjointdeis-2m", "adjointdeis-2m", "dpmpp_2m", NS, False),
            ("adjointdeis-1 M=N/2+1", "adjointdeis-1", "dpmpp_2m", NS_HALF, True),
            ("adjointdeis-2m M=N/2+1", "adjointdeis-2m", "dpmpp_2m", NS_HALF, True)]
    for label, method, solver, ns, half in runs:
        res = [_grad(problem, alpha, n, method, solver, n // 2 + 1 if half else None) for n in ns]
        rows_x[label] = [rel_err(r.grad_x_init, ref_x) for r in res]
        rows_k[label] = [rel_err(r.grad_keyframes, ref_k) for r in res]
    return rows_x, rows_k


def _report_and_check(title, rows_x, rows_k, pre_asymptotic=()):
    """Print the tables; assert the measured orders (least-squares slope over the 4 N).

    pre_asymptotic: (label, "x" | "k") rows whose third-order term is still large at N = 16
    (a keyframe switch); there the slope of the finest pair must be in range and the fit
    in a wider one.
    """
    print(f"\n{title}: relative error of dL/dx_init (the M=N/2+1 rows run twice the column's N, "
          "so their M = column N + 1)")
    print(format_table("", NS, rows_x))
    print(f"{title}: relative error of dL/d(keyframes)")
    print(format_table("", NS, rows_k))
    for which, rows in (("x", rows_x), ("k", rows_k)):
        for label, errs in rows.items():
            ns = NS_HALF if "M=" in label else NS
            s = slope(ns, errs)
            lo, hi = (0.8, 1.2) if label.startswith(("adjointdeis-1", "exact dpmpp_1")) else (1.7, 2.3)
            if label.startswith("exact dpmpp_2m"):
                # reported for comparison (the note's §6); its small N = 16 error can be
                # pre-asymptotic, so only the finest pair is held to the order
                assert all(b < a for a, b in zip(errs, errs[1:])), (label, which, errs)
                assert 1.7 <= slope(ns[-2:], errs[-2:]) <= 2.3, (label, which, errs)
                continue
            if (label, which) in pre_asymptotic:
                finest = slope(ns[-2:], errs[-2:])
                assert lo <= finest <= hi and lo <= s <= hi + 0.2, (label, which, s, finest)
            else:
                assert lo <= s <= hi, (label, which, s)


@pytest.mark.parametrize("alpha", [None, "flow"])
@pytest.mark.parametrize("scheduled", [False, True])
def test_continuous_adjoints_converge_on_the_gmm(alpha, scheduled):
    """AdjointDEIS-1 at order 1, AdjointDEIS-2M at order 2, for x_init and the keyframes."""
    ref = gmm_reference(alpha, scheduled)
    rows_x, rows_k = _convergence_rows(_problem(alpha, scheduled, "gmm"), alpha, ref.grad_x_init,
                                       ref.grad_keyframes)
    _report_and_check(f"GMM, alpha={alpha}, {'two keyframes' if scheduled else 'constant cond'}",
                      rows_x, rows_k)


@pytest.mark.parametrize("alpha", [None, "flow"])
@pytest.mark.parametrize("scheduled", [False, True])
def test_gradients_converge_to_the_gaussian_closed_form(alpha, scheduled):
    """Against the closed-form gradient of the Gaussian flow map (+ the exact final denoise)."""
    problem = _problem(alpha, scheduled, "gaussian")
    den, kfs, tl, x, loss_fn, (smax, smin) = problem
    sig_mid = adjoint.make_grid(adjoint.uniform_lambda_sigmas(3, smin, smax, alpha), alpha).sigmas[1]
    xl = x.clone().requires_grad_(True)
    kl = [k.clone().requires_grad_(True) for k in kfs]
    segments = [(smax, sig_mid, kl[0]), (sig_mid, smin, kl[1])] if scheduled else [(smax, smin, kl[0])]
    x0 = den(gaussian_flow_map(xl, segments, 0.5, alpha), torch.tensor(smin, dtype=F64), kl[-1])
    grads = torch.autograd.grad(loss_fn(x0).sum(), [xl, *kl])
    rows_x, rows_k = _convergence_rows(problem, alpha, grads[0], list(grads[1:]))
    # With a switch this linear oracle has a large third-order term: for α = 1 the 2M x_init
    # error times N² still moves by ~40 % between N = 16 and 32 (it settles at N ≥ 256).
    relaxed = {("adjointdeis-2m", "x"), ("adjointdeis-2m M=N/2+1", "x")} if scheduled else set()
    _report_and_check(f"Gaussian closed form, alpha={alpha}, {'two keyframes' if scheduled else 'constant cond'}",
                      rows_x, rows_k, relaxed)


def _nested_sde_noises(fine_noises, fine_grid, n_coarse):
    """Coarse-step noises of the same Brownian path: the fine steps' noise terms propagated by
    the exact linear part of the SDE to the coarse step's end, renormalised to unit variance."""
    k = len(fine_noises) // n_coarse
    out = []
    for j in range(n_coarse):
        end = (j + 1) * k
        acc = 0.0
        for i in range(j * k, end):
            t, h = fine_grid.sigmas[i + 1], fine_grid.h(i)
            term = t * math.sqrt(-math.expm1(-2 * h)) * fine_noises[i]
            acc = acc + (fine_grid.sigmas[end] / t) * math.exp(-(fine_grid.lambdas[end] - fine_grid.lambdas[i + 1])) * term
        big_h = fine_grid.lambdas[end] - fine_grid.lambdas[j * k]
        out.append(acc / (fine_grid.sigmas[end] * math.sqrt(-math.expm1(-2 * big_h))))
    return out


@pytest.mark.parametrize("scheduled", [False, True])
def test_sde_adjoint_converges_at_first_order(scheduled):
    """AdjointDEIS-SDE on one Brownian path, refined by nesting: against the exact discrete
    gradient of the same SDE solve (x_init and keyframes), and for the keyframes against a
    2048-interval exact solve of the same path (the pathwise continuous gradient)."""
    alpha, n_ref = None, 2048
    problem = _problem(alpha, scheduled, "gmm", seed=2, b=4)
    smax, smin = problem[-1]
    fine_grid = adjoint.make_grid(adjoint.uniform_lambda_sigmas(n_ref + 1, smin, smax, alpha), alpha)
    g = torch.Generator().manual_seed(11)
    fine = [torch.randn(problem[3].shape, generator=g, dtype=F64) for _ in range(n_ref)]
    ref = _grad(problem, alpha, n_ref, "exact", "sde_dpmpp_1", sde_noises=fine)
    rows = {"sde vs exact, x_init": [], "sde vs exact, keyframes": [], "sde vs fine, keyframes": [],
            "exact vs fine, keyframes": []}
    for n in NS:
        noises = _nested_sde_noises(fine, fine_grid, n)
        ex = _grad(problem, alpha, n, "exact", "sde_dpmpp_1", sde_noises=noises)
        sd = _grad(problem, alpha, n, "adjointdeis-sde", "sde_dpmpp_1", sde_noises=noises)
        rows["sde vs exact, x_init"].append(rel_err(sd.grad_x_init, ex.grad_x_init))
        rows["sde vs exact, keyframes"].append(rel_err(sd.grad_keyframes, ex.grad_keyframes))
        rows["sde vs fine, keyframes"].append(rel_err(sd.grad_keyframes, ref.grad_keyframes))
        rows["exact vs fine, keyframes"].append(rel_err(ex.grad_keyframes, ref.grad_keyframes))
    print("\n" + format_table(f"SDE (alpha=1, {'two keyframes' if scheduled else 'constant cond'}), "
                              "relative differences", NS, rows))
    for label in ("sde vs exact, x_init", "sde vs exact, keyframes", "sde vs fine, keyframes"):
        assert 0.8 <= slope(NS, rows[label]) <= 1.2, label
