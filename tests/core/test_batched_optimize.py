"""optimize(per_sample=True): every sample its own optimisation, the batch sharing each
network call. The reference is the definition: one batch-1 run per sample, with that
sample's keyframe rows, loss and SDE seed.

Two analytic denoisers: the GMM oracle, whose arithmetic is row by row (batching changes
no operation: batched = one by one bit for bit), and DictCondGMM, whose token matmul is
batched (batching changes the order of its sums: round-off, which Adam's per-element
normalisation carries through the iterations). Measured over the cases below (B = 3,
6 iterations): ≤ 8e-14 in float64, ≤ 3e-4 in float32 (`max_difference`).
"""
import math

import pytest
import torch

import adjoint
from adjoint import Position, ScheduledConditioning, Timeline
from adjoint.optimize import SampleRun, summarize
from oracles import DictCondGMM, make_gmm

F64 = torch.float64
B, D = 3, 4
SEEDS = [11, 12, 13]
TOLERANCE = {F64: 1e-11, torch.float32: 2e-3}      # measured 8e-14 and 3e-4
ODE_METHODS = ["exact", "adjointdeis-1", "adjointdeis-2m"]
CASES = ([(solver, method) for solver in ("dpmpp_1", "dpmpp_2m") for method in ODE_METHODS]
         + [("sde_dpmpp_1", "exact"), ("sde_dpmpp_1", "adjointdeis-sde")])


def randn(*shape, g, dtype):
    return torch.randn(*shape, generator=g, dtype=F64).to(dtype)


def problem(dtype=F64, alpha=None, tokens=True, seed=1):
    """(denoiser, sigmas, ε, targets, conditioning): two linearly blended keyframes, one
    shared by the batch (batch 1) and one per sample (batch B) in every tensor."""
    g = torch.Generator().manual_seed(seed)
    gmm = make_gmm(d=D, seed=3, alpha=alpha, dtype=dtype)
    sigmas = adjoint.karras_sigmas(6, 0.05, 0.9 if alpha == "flow" else 10.0, dtype=dtype)
    eps, targets = randn(B, D, g=g, dtype=dtype), randn(B, D, g=g, dtype=dtype)
    timeline = Timeline((Position(0.0), Position(0.5)), "linear")
    if not tokens:
        return gmm, sigmas, eps, targets, ScheduledConditioning(
            [torch.zeros(1, D, dtype=dtype), randn(B, D, g=g, dtype=dtype)], timeline)
    den = DictCondGMM(gmm, randn(5, D, g=g, dtype=dtype), randn(3, D, g=g, dtype=dtype))
    keyframes = [{"cross_attn": randn(1, 2, 5, g=g, dtype=dtype), "pooled_output": randn(B, 3, g=g, dtype=dtype)}
                 for _ in range(2)]
    return den, sigmas, eps, targets, ScheduledConditioning(keyframes, timeline)


def squared_distance(targets):
    return lambda x0: ((x0 - targets) ** 2).sum(1)


def rows_of(cond, b):
    """Sample b's conditioning alone (as the Adjoint Sampler cuts it): batch-B tensors sliced."""
    return cond.with_leaves([l[b:b + 1] if l.shape[0] == B else l for l in cond.leaves()])


def one_by_one(den, sigmas, eps, targets, cond, losses=None, **kw):
    losses = losses or [squared_distance(targets[b:b + 1]) for b in range(B)]
    return [adjoint.optimize(den, eps[b:b + 1], sigmas, rows_of(cond, b), losses[b], seed=SEEDS[b], **kw)
            for b in range(B)]


def same_run(a: SampleRun, b: SampleRun) -> bool:
    """Equal histories (NaN equal to NaN) and endings."""
    def same(x, y):
        return len(x) == len(y) and all(u == v or (math.isnan(u) and math.isnan(v)) for u, v in zip(x, y))
    return (same(a.losses, b.losses) and same(a.grad_norms, b.grad_norms) and same([a.best_loss], [b.best_loss])
            and (a.best_iteration, a.stop_reason, a.iterations_run) == (b.best_iteration, b.stop_reason,
                                                                        b.iterations_run))


def max_difference(batched, singles) -> float:
    """Largest difference between the batched run and the one-by-one runs: noise, x0 and
    keyframes absolutely (their values are O(1)), losses and grad norms relatively; the
    stop reasons, best iterations and iterations run must agree exactly."""
    worst = 0.0
    for b, one in enumerate(singles):
        run = batched.samples[b]
        assert (run.stop_reason, run.best_iteration, run.iterations_run) == \
               (one.stop_reason, one.best_iteration, one.iterations_run)
        assert len(run.losses) == len(one.losses)
        pairs = [(batched.noise[b:b + 1], one.noise), (batched.x0[b:b + 1], one.x0)]
        pairs += [(l[b:b + 1] if l.shape[0] == B else l, lo) for l, lo in zip(batched.cond.leaves(), one.cond.leaves())]
        worst = max([worst] + [float((x.double() - y.double()).abs().max()) for x, y in pairs])
        for ours, theirs in ((run.losses, one.losses), (run.grad_norms[:one.iterations_run], one.grad_norms)):
            worst = max([worst] + [abs(x - y) / abs(y) for x, y in zip(ours, theirs) if math.isfinite(y)])
    return worst


@pytest.mark.parametrize("solver, method", CASES)
@pytest.mark.parametrize("alpha", [None, "flow"])
def test_batch_equals_one_by_one_on_every_solver_and_method(solver, method, alpha):
    den, sigmas, eps, targets, cond = problem(alpha=alpha)
    kw = dict(alpha=alpha, solver=solver, method=method, iterations=6, lr=0.1, optimize_keyframes=True,
              renormalize_noise=True, max_grad_norm=2.0)
    batched = adjoint.optimize(den, eps, sigmas, cond, squared_distance(targets), per_sample=True, seed=SEEDS, **kw)
    singles = one_by_one(den, sigmas, eps, targets, cond, **kw)
    assert max_difference(batched, singles) <= TOLERANCE[F64]
    assert batched.x0.shape == eps.shape and len(batched.samples) == B
    # one gradient call per iteration for the whole batch, then the final forward pass
    assert batched.counts == singles[0].counts


@pytest.mark.parametrize("method", ["adjointdeis-1", "adjointdeis-2m"])
def test_fewer_adjoint_steps_batch_equals_one_by_one(method):
    den, sigmas, eps, targets, cond = problem()
    kw = dict(method=method, adjoint_steps=4, iterations=4, lr=0.1, optimize_keyframes=True)
    batched = adjoint.optimize(den, eps, sigmas, cond, squared_distance(targets), per_sample=True, seed=SEEDS, **kw)
    assert max_difference(batched, one_by_one(den, sigmas, eps, targets, cond, **kw)) <= TOLERANCE[F64]


@pytest.mark.parametrize("solver, method", [("dpmpp_2m", "exact"), ("dpmpp_1", "adjointdeis-2m"),
                                            ("sde_dpmpp_1", "adjointdeis-sde")])
def test_float32_batch_equals_one_by_one_to_its_round_off(solver, method):
    den, sigmas, eps, targets, cond = problem(torch.float32)
    kw = dict(solver=solver, method=method, iterations=6, lr=0.1, optimize_keyframes=True,
              renormalize_noise=True, max_grad_norm=2.0)
    batched = adjoint.optimize(den, eps, sigmas, cond, squared_distance(targets), per_sample=True, seed=SEEDS, **kw)
    difference = max_difference(batched, one_by_one(den, sigmas, eps, targets, cond, **kw))
    # The batched matmul may round differently from one row at a time, or not at all: which,
    # depends on the CPU's kernels (0.0 on an AMD EPYC here, round-off on CI's machine).
    assert difference <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("solver", ["dpmpp_2m", "sde_dpmpp_1"])
def test_row_by_row_denoiser_gives_one_by_one_bit_for_bit(dtype, solver):
    den, sigmas, eps, targets, cond = problem(dtype, tokens=False)
    kw = dict(solver=solver, iterations=5, lr=0.1, optimize_keyframes=True, renormalize_noise=True,
              max_grad_norm=1.0, resample_sde_noises=True)
    batched = adjoint.optimize(den, eps, sigmas, cond, squared_distance(targets), per_sample=True, seed=SEEDS, **kw)
    assert max_difference(batched, one_by_one(den, sigmas, eps, targets, cond, **kw)) == 0.0


def test_a_batch_of_one_is_bit_for_bit_the_joint_optimisation():
    den, sigmas, eps, targets, cond = problem()
    kw = dict(solver="sde_dpmpp_1", iterations=5, lr=0.1, optimize_keyframes=True, renormalize_noise=True,
              max_grad_norm=1.5, seed=4)
    cond = rows_of(cond, 1)
    per_sample = adjoint.optimize(den, eps[1:2], sigmas, cond, squared_distance(targets[1:2]), per_sample=True, **kw)
    joint = adjoint.optimize(den, eps[1:2], sigmas, cond, squared_distance(targets[1:2]), **kw)
    assert per_sample.losses == joint.losses and per_sample.grad_norms[:-1] == joint.grad_norms[:-1]
    assert (per_sample.best_iteration, per_sample.stop_reason, per_sample.iterations_run, per_sample.loss) == \
           (joint.best_iteration, joint.stop_reason, joint.iterations_run, joint.loss)
    assert torch.equal(per_sample.noise, joint.noise) and torch.equal(per_sample.x0, joint.x0)
    assert all(torch.equal(a, b) for a, b in zip(per_sample.cond.leaves(), joint.cond.leaves()))
    assert joint.samples is None and per_sample.samples[0].losses == joint.losses


def test_a_seed_per_sample_draws_each_sample_its_batch_of_one_noises():
    den, sigmas, eps, targets, cond = problem(tokens=False)
    loss = squared_distance(targets)
    # iteration 0 is the starting point: its losses show the SDE noises each sample got
    seen = []
    adjoint.optimize(den, eps, sigmas, cond, loss, solver="sde_dpmpp_1", iterations=1, seed=SEEDS,
                     callback=seen.append)
    for b in range(B):
        alone = adjoint.gradient(den, float(sigmas[0]) * eps[b:b + 1], sigmas, rows_of(cond, b),
                                 squared_distance(targets[b:b + 1]), solver="sde_dpmpp_1",
                                 generator=torch.Generator().manual_seed(SEEDS[b]))
        assert float(seen[0].per_sample_loss[b]) == alone.loss
    # one integer seed: one generator for the whole batch, in both modes alike
    joint, per_sample = [], []
    adjoint.optimize(den, eps, sigmas, cond, loss, solver="sde_dpmpp_1", iterations=1, seed=5, callback=joint.append)
    adjoint.optimize(den, eps, sigmas, cond, loss, solver="sde_dpmpp_1", iterations=1, seed=5, per_sample=True,
                     callback=per_sample.append)
    assert torch.equal(joint[0].per_sample_loss, per_sample[0].per_sample_loss)
    assert not torch.equal(joint[0].per_sample_loss, seen[0].per_sample_loss)


def test_each_sample_stops_early_on_its_own_and_keeps_its_result():
    """Sample 0's loss is scaled so far down that its improvements never exceed
    early_stop_min_delta: it stops after `patience` iterations; the others run on."""
    den, sigmas, eps, targets, cond = problem(tokens=False)
    weights = torch.tensor([1e-6, 1.0, 1.0], dtype=F64)
    losses = [lambda x0, b=b: weights[b] * squared_distance(targets[b:b + 1])(x0) for b in range(B)]
    kw = dict(iterations=8, lr=0.1, early_stop_patience=2, early_stop_min_delta=1e-3)
    seen = []
    batched = adjoint.optimize(den, eps, sigmas, cond, lambda x0: weights * squared_distance(targets)(x0),
                               per_sample=True, seed=SEEDS, callback=seen.append, **kw)
    stopped, running = batched.samples[0], batched.samples[1]
    assert (stopped.stop_reason, stopped.iterations_run) == ("early_stop", 3)
    assert stopped.best_loss == min(stopped.losses) == stopped.losses[stopped.best_iteration]
    assert (running.stop_reason, running.iterations_run, len(running.losses)) == ("iterations", 8, 9)
    assert max_difference(batched, one_by_one(den, sigmas, eps, targets, cond, losses, **kw)) == 0.0
    # sample 0 took Adam steps until it stopped, and its noise never changed afterwards
    assert not torch.equal(seen[2].noise[0], eps[0])
    assert all(torch.equal(info.noise[0], seen[3].noise[0]) for info in seen[3:])
    assert [info.active.tolist() for info in seen] == [[True] * 3] * 3 + [[False, True, True]] * 5
    # the batch's fields join the samples' (summarize)
    assert batched.stop_reason == "iterations" and batched.iterations_run == 8 and batched.best_iteration == -1
    assert batched.losses[5] == stopped.losses[-1] + batched.samples[1].losses[5] + batched.samples[2].losses[5]
    assert batched.loss == sum(s.best_loss for s in batched.samples)


def test_each_sample_clips_its_own_gradient():
    """Sample 0's gradient is always far above max_grad_norm, sample 1's far below: per
    sample, only sample 0's steps are clipped; jointly, the global norm clips both."""
    den, sigmas, eps, targets, cond = problem(tokens=False)
    weights = torch.tensor([1e3, 1e-3, 1.0], dtype=F64)
    loss = lambda x0: weights * squared_distance(targets)(x0)
    kw = dict(iterations=5, lr=0.2, seed=SEEDS)
    clipped = adjoint.optimize(den, eps, sigmas, cond, loss, per_sample=True, max_grad_norm=1.0, **kw)
    free = adjoint.optimize(den, eps, sigmas, cond, loss, per_sample=True, **kw)
    joint = adjoint.optimize(den, eps, sigmas, cond, loss, max_grad_norm=1.0, **kw)
    joint_free = adjoint.optimize(den, eps, sigmas, cond, loss, **kw)
    assert min(clipped.samples[0].grad_norms[:5]) > 10 and max(clipped.samples[1].grad_norms[:5]) < 0.1
    assert not torch.equal(clipped.noise[0], free.noise[0])
    assert torch.equal(clipped.noise[1], free.noise[1])
    assert not torch.equal(joint.noise[1], joint_free.noise[1])


class NaNGradientOfRow(torch.autograd.Function):
    """The identity, whose gradient is NaN in one row."""

    @staticmethod
    def forward(ctx, x0, row):
        ctx.row = row
        return x0.clone()

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        grad[ctx.row] = math.nan
        return grad, None


def test_a_non_finite_sample_stops_alone_and_keeps_its_best():
    den, sigmas, eps, targets, cond = problem(tokens=False)
    distance = squared_distance(targets)
    calls = {"n": 0}

    def nan_loss_for_sample_1_from_call_3(x0):
        calls["n"] += 1
        factor = torch.ones(B, dtype=F64)
        factor[1] = math.nan if calls["n"] >= 3 else 1.0
        return distance(x0) * factor

    kw = dict(iterations=6, lr=0.1, per_sample=True, seed=SEEDS)
    res = adjoint.optimize(den, eps, sigmas, cond, nan_loss_for_sample_1_from_call_3, **kw)
    clean_seen = []
    clean = adjoint.optimize(den, eps, sigmas, cond, distance, callback=clean_seen.append, **kw)
    bad = res.samples[1]
    assert (bad.stop_reason, bad.iterations_run, len(bad.losses)) == ("non_finite_loss", 3, 3)
    assert math.isnan(bad.losses[-1]) and bad.losses[:2] == clean.samples[1].losses[:2]
    assert bad.best_iteration == 1 and bad.best_loss == clean.samples[1].losses[1]   # the loss had fallen
    assert torch.equal(res.noise[1], clean_seen[1].noise[1])                         # its iterate 1
    for b in (0, 2):                    # the others run on exactly as without sample 1's trouble
        assert same_run(res.samples[b], clean.samples[b]) and torch.equal(res.noise[b], clean.noise[b])
    assert res.stop_reason == "non_finite_loss" and math.isfinite(res.loss)

    res = adjoint.optimize(den, eps, sigmas, cond, lambda x0: distance(NaNGradientOfRow.apply(x0, 2)), **kw)
    bad = res.samples[2]
    assert (bad.stop_reason, bad.iterations_run, bad.best_iteration) == ("non_finite_gradient", 1, 0)
    assert math.isnan(bad.grad_norms[0]) and bad.best_loss == clean.samples[2].losses[0]
    assert torch.equal(res.noise[2], eps[2])           # never stepped
    assert same_run(res.samples[0], clean.samples[0]) and res.stop_reason == "non_finite_gradient"

    # a sample without one finite loss hands back its start, loss NaN
    res = adjoint.optimize(den, eps, sigmas, cond, lambda x0: distance(x0) * torch.tensor([1, math.nan, 1]), **kw)
    assert res.samples[1].best_iteration == 0 and math.isnan(res.samples[1].best_loss)
    assert torch.equal(res.noise[1], eps[1]) and math.isnan(float(res.per_sample_loss[1]))
    assert same_run(res.samples[0], clean.samples[0])


def test_every_sample_optimises_its_own_copy_of_a_shared_prompt():
    den, sigmas, eps, targets, cond = problem()
    before = [l.clone() for l in cond.leaves()]
    kw = dict(optimize_noise=False, optimize_keyframes=True, iterations=4, lr=0.1)
    res = adjoint.optimize(den, eps, sigmas, cond, squared_distance(targets), per_sample=True, seed=SEEDS, **kw)
    shared = res.keyframes[0]["cross_attn"]
    assert shared.shape == (B, 2, 5) and not torch.equal(shared[0], shared[1])
    assert max_difference(res, one_by_one(den, sigmas, eps, targets, cond, **kw)) <= TOLERANCE[F64]
    assert all(torch.equal(a, b) for a, b in zip(cond.leaves(), before))       # the caller's are untouched
    assert torch.equal(res.noise, eps)
    # not optimised: the keyframes come back as they were, shared ones shared
    res = adjoint.optimize(den, eps, sigmas, cond, squared_distance(targets), per_sample=True, iterations=2)
    assert all(torch.equal(a, b) for a, b in zip(res.cond.leaves(), before))


def test_callback_sees_every_sample_once_per_iteration():
    den, sigmas, eps, targets, cond = problem(tokens=False)
    seen = []
    res = adjoint.optimize(den, eps, sigmas, cond, squared_distance(targets), per_sample=True, iterations=3,
                           callback=seen.append)
    assert [info.iteration for info in seen] == [0, 1, 2]
    for k, info in enumerate(seen):
        assert info.noise.shape == eps.shape and info.x0.shape == eps.shape and info.active.all()
        assert info.per_sample_grad_norm.tolist() == [s.grad_norms[k] for s in res.samples]
        assert info.per_sample_loss.tolist() == [s.losses[k] for s in res.samples]
        assert info.loss == sum(s.losses[k] for s in res.samples)
        assert info.grad_norm == math.hypot(*(s.grad_norms[k] for s in res.samples))
        assert info.per_sample_best_iteration == [k] * B and info.best_iteration == k   # the losses fall


def test_summarize_joins_the_samples_runs():
    runs = [SampleRun([4.0, 3.0, 2.0, 2.5], [1.0, 2.0, 2.0, math.nan], 2, 2.0, "iterations", 3),
            SampleRun([5.0, 6.0], [3.0, 4.0], 0, 5.0, "early_stop", 2)]
    s = summarize(runs)
    assert s.losses == [9.0, 9.0, 8.0, 8.5]           # a stopped sample keeps its last loss
    assert s.grad_norms[:3] == [math.hypot(1, 3), math.hypot(2, 4), 2.0] and math.isnan(s.grad_norms[3])
    assert (s.best_iteration, s.loss, s.stop_reason, s.iterations_run) == (-1, 7.0, "iterations", 3)
    runs.append(SampleRun([math.nan], [math.nan], 0, math.nan, "non_finite_loss", 1))
    assert summarize(runs).stop_reason == "non_finite_loss"
    assert summarize(runs[1:2]).stop_reason == "early_stop" and summarize(runs[1:2]).best_iteration == 0


@pytest.mark.parametrize("change, exc, pattern", [
    (dict(optimize_params=True), ValueError,
     r"per_sample: θ \(params\) is shared by the whole batch and cannot be optimised per sample; use "
     r"per_sample=False"),
    (dict(cond=torch.zeros(D, dtype=F64), optimize_keyframes=True), ValueError,
     r"cond: keyframe 0 has no batch dimension \(shape \(4,\)\); per_sample=True optimises one copy"),
    (dict(seed=[1, 2]), ValueError, r"seed: 2 seeds for a batch of 3; give one integer or one seed per sample"),
    (dict(seed=[1, "2", 3]), TypeError, r"seed\[1\]: must be an integer, got str"),
    (dict(seed=[]), ValueError, r"seed: an empty sequence"),
    (dict(per_sample="yes"), TypeError, r"per_sample: must be True or False, got str"),
])
def test_refusals_name_the_argument_before_any_network_call(change, exc, pattern):
    den, sigmas, eps, targets, cond = problem(tokens=False)
    gmm = den
    calls = gmm.calls
    kw = dict(per_sample=True, iterations=2, params=(gmm.offsets,))
    kw.update(change)
    cond = kw.pop("cond", cond)
    with pytest.raises(exc, match="^optimize: " + pattern):
        adjoint.optimize(den, eps, sigmas, cond, squared_distance(targets), **kw)
    assert gmm.calls == calls


def test_a_scalar_loss_is_refused_per_sample():
    den, sigmas, eps, targets, cond = problem(tokens=False)
    with pytest.raises(ValueError, match=r"^optimize: loss_fn: per_sample=True needs one loss per sample, shape "
                                         r"\(3,\), but it returned a scalar; .* or use per_sample=False$"):
        adjoint.optimize(den, eps, sigmas, cond, lambda x0: squared_distance(targets)(x0).sum(), per_sample=True)


@pytest.mark.parametrize("per_sample", [False, True])
def test_memory_budget_reaches_the_gradient(per_sample):
    """Kept graphs spare the plain forwards of the gradient passes, and change nothing else."""
    den, sigmas, eps, targets, cond = problem()
    kw = dict(per_sample=per_sample, seed=SEEDS, iterations=3, optimize_keyframes=True)
    recomputed = adjoint.optimize(den, eps, sigmas, cond, squared_distance(targets), **kw)
    kept = adjoint.optimize(den, eps, sigmas, cond, squared_distance(targets), memory_budget=100, **kw)
    n = len(sigmas) - 1
    assert (recomputed.counts.forwards, kept.counts.forwards) == (4 * n, n)     # 3 iterations + the final pass
    assert kept.counts.vjps == recomputed.counts.vjps == 3 * n
    assert kept.losses == recomputed.losses and torch.equal(kept.noise, recomputed.noise)
    with pytest.raises(ValueError, match=r'^optimize: memory_budget: must be "auto", 0 \(recompute every step\)'):
        adjoint.optimize(den, eps, sigmas, cond, squared_distance(targets), memory_budget="lots", **kw)
