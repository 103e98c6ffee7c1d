"""The public Python API (issue 12): every bad argument is refused by name before any network
call, the grid helpers share one convention (the old call forms still work, with a
DeprecationWarning, and give the grids they gave), the result types are consistent, and the
documented keyframe timing rule is what the sampler does."""
import math
import warnings

import pytest
import torch

import adjoint
from adjoint import Position, ScheduledConditioning, Timeline

F64 = torch.float64
SHAPE = (2, 4, 8, 8)


class CountingDenoiser:
    """The exact posterior mean of x0 ~ N(cond, 0.5² I) for α = 1, counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, cond):
        self.calls += 1
        return cond + 0.25 / (0.25 + sigma ** 2) * (x - cond)


def problem(dtype=F64):
    g = torch.Generator().manual_seed(0)
    sig = adjoint.karras_sigmas(5, 0.05, 10.0)
    noise = torch.randn(*SHAPE, generator=g, dtype=F64).to(dtype)
    cond = torch.zeros(1, *SHAPE[1:], dtype=dtype)
    target = torch.ones(1, *SHAPE[1:], dtype=dtype)
    loss = lambda x0: ((x0 - target) ** 2).flatten(1).mean(1)
    return sig, noise, cond, loss


def nan_at(t, index=(0,)):
    t = t.clone()
    t.view(-1)[index[0]] = float("nan")
    return t


# ---------------------------------------------------------------------------------------
# sample / gradient / optimize: each bad argument is named, and nothing ran
# ---------------------------------------------------------------------------------------
def _sde_noises(n, shape=SHAPE):
    return [torch.zeros(shape, dtype=F64) for _ in range(n)]


# (arguments to change, exception, message pattern after "<function>: ")
COMMON_CASES = [
    (dict(denoiser=3), TypeError, r"denoiser: must be a callable"),
    (dict(x=[1.0, 2.0]), TypeError, r"x_init: must be a torch.Tensor, got list"),
    (dict(x=torch.zeros(SHAPE, dtype=torch.int64)), TypeError, r"x_init: must be a floating-point tensor"),
    (dict(x=torch.tensor(1.0, dtype=F64)), ValueError, r"x_init: must have at least 1 dimension"),
    (dict(x="nan"), ValueError, r"x_init: has 1 non-finite \(NaN or inf\) entry"),
    (dict(sigmas=[10.0, 12.0, 0.0]), ValueError, r"sigmas: must be strictly descending"),
    (dict(sigmas=[10.0, 1.0]), ValueError, r"sigmas: must end at 0"),
    (dict(sigmas=[math.inf, 1.0, 0.0]), ValueError, r"sigmas: must be finite"),
    (dict(sigmas=torch.ones(2, 2)), ValueError, r"sigmas: must be a 1-D tensor"),
    (dict(sigmas="10 1 0"), TypeError, r"sigmas: must be a 1-D tensor or a sequence of numbers"),
    (dict(sigmas=[10.0, "1", 0.0]), TypeError, r"sigmas: sigmas\[1\] is not a number"),
    (dict(alpha="vp"), ValueError, r"alpha: unknown name 'vp'"),
    (dict(alpha=3), TypeError, r"alpha: must be None, 'flow' or a callable"),
    (dict(alpha=lambda s: 1.0 / 0.0), ValueError, r"alpha: alpha\([\d.]+\) failed: ZeroDivisionError"),
    (dict(alpha=lambda s: -1.0), ValueError, r"alpha: alpha\(sigmas\[0\] = [\d.]+\) = -1.0: α must be positive"),
    (dict(cond=[torch.zeros(1, 4, 8, 8)]), TypeError, r"cond must be a Tensor, a dict of Tensors"),
    (dict(cond=torch.zeros(1, 4, 8, 8, dtype=torch.int64)), TypeError,
     r"cond: a keyframe tensor must be floating point"),
    (dict(cond="nan"), ValueError, r"cond: keyframe 0: has 1 non-finite"),
    (dict(cond=torch.zeros(3, 4, 8, 8, dtype=F64)), ValueError,
     r"cond: keyframe 0 has batch 3 \(shape \(3, 4, 8, 8\)\) but x_init has batch 2"),
    # (the timeline counts keyframes from 1 in this message, as the prompt schedules do)
    (dict(cond="out_of_order"), ValueError, r"cond: keyframe 4 \(20%\) comes before keyframe 3 \(step 4\)"),
    (dict(solver="euler"), ValueError, r"solver: unknown solver 'euler'; valid names"),
    (dict(solver="dpmpp_2m", sde_noises=_sde_noises(4)), ValueError,
     r"sde_noises: solver 'dpmpp_2m' is deterministic and takes no noises"),
    (dict(solver="sde_dpmpp_1", sde_noises=_sde_noises(3)), ValueError,
     r"sde_noises: need one noise per step before the final denoise, 4 for 5 steps; got 3"),
    (dict(solver="sde_dpmpp_1", sde_noises=_sde_noises(3) + [torch.zeros(3)]), ValueError,
     r"sde_noises: sde_noises\[3\] has shape \(3,\), x_init has \(2, 4, 8, 8\)"),
    (dict(solver="sde_dpmpp_1", sde_noises=_sde_noises(3) + ["x"]), TypeError,
     r"sde_noises: sde_noises\[3\] must be a floating-point tensor"),
    (dict(solver="sde_dpmpp_1", sde_noises=_sde_noises(3) + [nan_at(torch.zeros(SHAPE, dtype=F64))]),
     ValueError, r"sde_noises: sde_noises\[3\]: has 1 non-finite"),
    (dict(solver="sde_dpmpp_1", sde_noises=5), TypeError, r"sde_noises: must be a list of tensors"),
    (dict(generator="seed"), TypeError, r"generator: must be a torch.Generator or None"),
    (dict(step_callback=5), TypeError, r"step_callback: must be a callable"),
]

with torch.inference_mode():
    INFERENCE_TENSOR = torch.zeros(3)

GRADIENT_CASES = COMMON_CASES + [
    (dict(loss_fn=None), TypeError, r"loss_fn: must be a callable"),
    (dict(method="bptt"), ValueError, r"method: unknown gradient method 'bptt'; valid names"),
    (dict(method="adjointdeis-sde"), ValueError,
     r"method: 'adjointdeis-sde' does not apply to the deterministic solver 'dpmpp_2m'"),
    (dict(method="adjointdeis-2m", adjoint_steps=2.5), TypeError, r"adjoint_steps: must be an integer"),
    (dict(method="adjointdeis-2m", adjoint_steps=True), TypeError, r"adjoint_steps: must be an integer"),
    (dict(method="adjointdeis-2m", adjoint_steps=0), ValueError, r"adjoint_steps: must be ≥ 1"),
    (dict(method="adjointdeis-2m", adjoint_steps=6), ValueError, r"adjoint_steps must be between 2 and"),
    (dict(method="exact", adjoint_steps=3), ValueError, r"adjoint_steps: the exact adjoint always takes"),
    (dict(params=torch.zeros(3)), TypeError, r"params: must be a sequence of tensors"),
    (dict(params=(torch.zeros(3, dtype=torch.int64),)), TypeError,
     r"params: params\[0\] must be a floating-point tensor"),
    (dict(params=(INFERENCE_TENSOR,)), ValueError, r"params: params\[0\] is an inference tensor"),
]


def _arguments(change, dtype=F64):
    sig, noise, cond, loss = problem(dtype)
    den = CountingDenoiser()
    args = dict(denoiser=den, x=noise * 10.0, sigmas=sig, cond=cond, loss_fn=loss)
    args.update(change)
    if isinstance(args["x"], str):              # "nan"
        args["x"] = nan_at(noise)
    if isinstance(args["cond"], str):
        if args["cond"] == "nan":
            args["cond"] = nan_at(cond)
        else:                                    # "out_of_order": at 5 steps, 0, 0, 4, then 1
            args["cond"] = ScheduledConditioning(
                [cond, cond, cond, cond],
                Timeline((Position(0.0), Position(0.1), Position(4, "step"), Position(0.2))))
    return den, args


def _split(args):
    pos = [args.pop(k) for k in ("denoiser", "x", "sigmas", "cond")]
    return pos, args


@pytest.mark.parametrize("change, exc, pattern", COMMON_CASES,
                         ids=[f"{i}-{next(iter(c[0]))}" for i, c in enumerate(COMMON_CASES)])
def test_sample_names_the_bad_argument(change, exc, pattern):
    den, args = _arguments(change)
    args.pop("loss_fn")
    (d, x, s, c), kw = _split(args)
    with pytest.raises(exc, match="^sample: " + pattern):
        adjoint.sample(d, x, s, c, **kw)
    assert den.calls == 0


@pytest.mark.parametrize("change, exc, pattern", GRADIENT_CASES,
                         ids=[f"{i}-{next(iter(c[0]))}" for i, c in enumerate(GRADIENT_CASES)])
def test_gradient_names_the_bad_argument(change, exc, pattern):
    den, args = _arguments(change)
    loss = args.pop("loss_fn")
    (d, x, s, c), kw = _split(args)
    with pytest.raises(exc, match="^gradient: " + pattern):
        adjoint.gradient(d, x, s, c, loss, **kw)
    assert den.calls == 0


OPTIMIZE_CASES = [
    # the noise is called `noise` in optimize
    (dict(x=[1.0]), TypeError, r"noise: must be a torch.Tensor, got list"),
    (dict(x="nan"), ValueError, r"noise: has 1 non-finite"),
    (dict(cond=torch.zeros(3, 4, 8, 8, dtype=F64)), ValueError, r"cond: keyframe 0 has batch 3 .* but noise has batch 2"),
    (dict(x_offset=torch.zeros(1, 4, 8, 8, dtype=F64)), ValueError,
     r"x_offset: shape \(1, 4, 8, 8\) does not match the noise's \(2, 4, 8, 8\)$"),
    (dict(x_offset=[0.0]), TypeError, r"x_offset: must be a torch.Tensor"),
    (dict(x_offset=nan_at(torch.zeros(SHAPE, dtype=F64))), ValueError, r"x_offset: has 1 non-finite"),
    (dict(noise_scale=-1.0), ValueError, r"noise_scale: must be ≥ 0, got -1.0"),
    (dict(noise_scale=math.nan), ValueError, r"noise_scale: must be finite"),
    (dict(noise_scale="1"), TypeError, r"noise_scale: must be a real number"),
    (dict(iterations=0), ValueError, r"iterations: must be ≥ 1, got 0"),
    (dict(iterations=2.5), TypeError, r"iterations: must be an integer"),
    (dict(lr=0.0), ValueError, r"lr: must be > 0, got 0.0"),
    (dict(lr=math.inf), ValueError, r"lr: must be finite"),
    (dict(betas=(0.9,)), TypeError, r"betas: must be a pair"),
    (dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\]: must be < 1, got 1.0"),
    (dict(max_grad_norm=0.0), ValueError, r"max_grad_norm: must be > 0"),
    (dict(early_stop_patience=0), ValueError, r"early_stop_patience: must be ≥ 1"),
    (dict(early_stop_min_delta=-1e-3), ValueError, r"early_stop_min_delta: must be ≥ 0"),
    (dict(seed=1.5), TypeError, r"seed: must be an integer"),
    (dict(optimize_noise="yes"), TypeError, r"optimize_noise: must be True or False"),
    (dict(renormalize_noise=None), TypeError, r"renormalize_noise: must be True or False"),
    (dict(callback=3), TypeError, r"callback: must be a callable"),
    (dict(step_callback=3), TypeError, r"step_callback: must be a callable"),
    (dict(optimize_noise=False), ValueError, r"nothing to optimise"),
    (dict(optimize_noise=False, optimize_params=True), ValueError, r"nothing to optimise"),
    (dict(method="bptt"), ValueError, r"method: unknown gradient method"),
    (dict(method="adjointdeis-2m", adjoint_steps=9), ValueError, r"adjoint_steps must be between 2 and"),
    (dict(sigmas=[1.0, 2.0, 0.0]), ValueError, r"sigmas: must be strictly descending"),
    (dict(solver="heun"), ValueError, r"solver: unknown solver 'heun'"),
    (dict(loss_fn=3), TypeError, r"loss_fn: must be a callable"),
]


@pytest.mark.parametrize("change, exc, pattern", OPTIMIZE_CASES,
                         ids=[f"{i}-{next(iter(c[0]))}" for i, c in enumerate(OPTIMIZE_CASES)])
def test_optimize_names_the_bad_argument(change, exc, pattern):
    den, args = _arguments(change)
    loss = args.pop("loss_fn")
    (d, x, s, c), kw = _split(args)
    with pytest.raises(exc, match="^optimize: " + pattern):
        adjoint.optimize(d, x, s, c, loss, **{"iterations": 2, **kw})
    assert den.calls == 0


@pytest.mark.parametrize("fn", ["gradient", "optimize"])
def test_loss_fn_output_is_named_with_the_function_called(fn):
    sig, noise, cond, _ = problem()
    den = CountingDenoiser()
    run = (lambda loss: adjoint.gradient(den, 10 * noise, sig, cond, loss)) if fn == "gradient" else \
        (lambda loss: adjoint.optimize(den, noise, sig, cond, loss, iterations=2))
    with pytest.raises(ValueError, match=rf"^{fn}: loss_fn must return a scalar or a per-sample tensor of "
                                         r"shape \(2,\), got shape \(2, 3\)"):
        run(lambda x0: x0.flatten(1)[:, :3])
    with pytest.raises(TypeError, match=rf"^{fn}: loss_fn: must return a tensor, got float"):
        run(lambda x0: 1.0)
    with pytest.raises(ValueError, match=rf"^{fn}: loss_fn: loss_fn\(x0\) does not depend on x0"):
        run(lambda x0: torch.zeros(2, dtype=F64))


def test_user_exceptions_pass_through_unchanged():
    sig, noise, cond, loss = problem()

    def broken(x, sigma, c):
        raise ValueError("my own message")

    with pytest.raises(ValueError, match="^my own message$"):
        adjoint.gradient(broken, noise, sig, cond, loss)
    with pytest.raises(ValueError, match="^my own message$"):
        adjoint.optimize(CountingDenoiser(), noise, sig, cond, loss, iterations=2,
                         callback=lambda info: broken(None, None, None))


def test_constructors_name_the_bad_argument():
    with pytest.raises(TypeError, match=r"^Position: value: must be a finite real number"):
        Position("0.3")
    with pytest.raises(ValueError, match=r"^Position: value: fraction 1.5 is outside \[0, 1\]"):
        Position(1.5)
    with pytest.raises(ValueError, match=r"^Position: value: step 2.5 is not a non-negative integer"):
        Position(2.5, "step")
    with pytest.raises(ValueError, match=r"^Position: unit: unknown position unit 'percent'"):
        Position(3, "percent")
    with pytest.raises(TypeError, match=r"^Timeline: starts: starts\[1\] must be a Position, got float"):
        Timeline((Position(0.0), 0.5))
    with pytest.raises(ValueError, match=r"^Timeline: starts: the first keyframe must start at 0"):
        Timeline((Position(0.2),))
    with pytest.raises(ValueError, match=r"^Timeline: interpolation: must be one of"):
        Timeline((Position(0.0),), "cubic")
    with pytest.raises(ValueError, match=r"^Timeline: labels: 1 labels for 2 starts"):
        Timeline((Position(0.0), Position(0.5)), labels=("a",))
    with pytest.raises(ValueError, match=r"^Timeline: hard_after: 5 is not a keyframe index"):
        Timeline((Position(0.0), Position(0.5)), "linear", hard_after=frozenset({5}))
    # a list of starts is fine (kept as a tuple: timelines are hashable)
    tl = Timeline([Position(0.0), Position(0.5)])
    assert isinstance(tl.starts, tuple) and hash(tl) is not None and tl.start_steps(10) == (0, 5)
    c = torch.zeros(1, 4)
    with pytest.raises(TypeError, match=r"^ScheduledConditioning: keyframes: must be a list of keyframes .* "
                                        r"got a single Tensor"):
        ScheduledConditioning(c, Timeline.constant())
    with pytest.raises(TypeError, match=r"^ScheduledConditioning: timeline: must be a Timeline or None"):
        ScheduledConditioning([c], "hold")
    with pytest.raises(TypeError, match=r"^ScheduledConditioning: keyframes\[1\]: a keyframe must be a Tensor"):
        ScheduledConditioning([c, [1, 2]], Timeline((Position(0.0), Position(0.5))))
    with pytest.raises(ValueError, match=r"^ScheduledConditioning: keyframes: 1 keyframes but the timeline has 2"):
        ScheduledConditioning([c], Timeline((Position(0.0), Position(0.5))))
    with pytest.raises(TypeError, match=r"^SDEDPMSolverPP1: noise_scale must be a real number"):
        adjoint.SDEDPMSolverPP1("8")
    with pytest.raises(ValueError, match=r"^make_grid: sigmas: must end at 0"):
        adjoint.make_grid([2.0, 1.0])


# ---------------------------------------------------------------------------------------
# dtypes: keyframes of another dtype are converted, x_offset too
# ---------------------------------------------------------------------------------------
class MatmulDenoiser:
    """A denoiser that fails on mixed dtypes (a matmul), as a real network does."""

    def __init__(self, d):
        self.w = torch.eye(d, dtype=F64) * 0.5

    def __call__(self, x, sigma, cond):
        w = self.w.to(x.dtype)
        return (x / (1 + sigma ** 2)) @ w + cond @ w


def test_keyframes_of_another_dtype_are_converted_and_their_gradients_come_back_in_it():
    sig = adjoint.karras_sigmas(6, 0.05, 10.0)
    g = torch.Generator().manual_seed(1)
    x = 10 * torch.randn(2, 5, generator=g, dtype=F64)
    kfs32 = [torch.randn(1, 5, generator=g), torch.randn(2, 5, generator=g)]
    kfs64 = [k.double() for k in kfs32]
    tl = Timeline((Position(0.0), Position(0.5)), "linear")
    den = MatmulDenoiser(5)
    loss = lambda x0: (x0 ** 2).sum(1)
    mixed = adjoint.gradient(den, x, sig, ScheduledConditioning(kfs32, tl), loss)
    same = adjoint.gradient(den, x, sig, ScheduledConditioning(kfs64, tl), loss)
    assert [g.dtype for g in mixed.grad_keyframes] == [torch.float32, torch.float32]
    assert mixed.x0.dtype == F64 and mixed.grad_x_init.dtype == F64
    assert torch.equal(mixed.x0, same.x0) and mixed.loss == same.loss
    for a, b in zip(mixed.grad_keyframes, same.grad_keyframes):
        assert torch.equal(a, b.float())
    assert all(k.dtype == torch.float32 for k in kfs32)             # the caller's tensors are untouched
    # dict keyframes, optimised: the denoiser sees x's dtype, the keyframes stay float32
    dict_den = lambda x, s, c: den(x, s, c["cross_attn"])
    res = adjoint.optimize(dict_den, x / 10, sig, {"cross_attn": kfs32[0], "label": "a"}, loss,
                           optimize_keyframes=True, iterations=3, x_offset=torch.zeros(2, 5))
    assert res.keyframes[0]["cross_attn"].dtype == torch.float32 and res.keyframes[0]["label"] == "a"
    assert res.noise.dtype == F64 and res.x_init.dtype == F64 and res.loss < res.losses[0]


# ---------------------------------------------------------------------------------------
# result types
# ---------------------------------------------------------------------------------------
def test_loss_is_a_float_everywhere_and_per_sample_loss_a_tensor():
    sig, noise, cond, loss = problem()
    den = CountingDenoiser()
    res = adjoint.gradient(den, 10 * noise, sig, cond, loss)
    assert isinstance(res.loss, float) and not isinstance(res.loss, torch.Tensor)
    assert isinstance(res.per_sample_loss, torch.Tensor) and res.per_sample_loss.shape == (2,)
    assert math.isclose(res.loss, float(res.per_sample_loss.sum()), rel_tol=1e-15)
    with pytest.warns(DeprecationWarning, match="GradientResult.loss is a Python float now"):
        assert res.loss.item() == float(res.loss)       # the 0-d tensor's .item() still works
    scalar = adjoint.gradient(den, 10 * noise, sig, cond, lambda x0: loss(x0).sum())
    assert isinstance(scalar.loss, float) and scalar.per_sample_loss is None
    assert math.isclose(scalar.loss, res.loss, rel_tol=1e-15)

    infos = []
    out = adjoint.optimize(den, noise, sig, cond, loss, iterations=3, callback=infos.append)
    assert isinstance(out.loss, float) and isinstance(out.per_sample_loss, torch.Tensor)
    assert out.per_sample_loss.shape == (2,) and math.isclose(out.loss, float(out.per_sample_loss.sum()))
    assert all(isinstance(v, float) for v in out.losses) and all(isinstance(i.loss, float) for i in infos)
    # the loss of iterate 0 is the gradient's loss at the starting point
    assert out.losses[0] == adjoint.gradient(den, float(sig[0]) * noise, sig, cond, loss).loss


# ---------------------------------------------------------------------------------------
# grid helpers: one order (steps, sigma_min, sigma_max), one count (steps = len(sigmas) − 1)
# ---------------------------------------------------------------------------------------
def old_uniform_lambda_sigmas(num_intervals, sigma_max, sigma_min, alpha=None, dtype=F64):
    """The implementation before issue 12, verbatim (its own argument order and count)."""
    from adjoint.coords import half_log_snr, resolve_alpha, sigma_from_lambda
    alpha_fn = resolve_alpha(alpha)
    lam0 = half_log_snr(sigma_max, alpha_fn(sigma_max))
    lam1 = half_log_snr(sigma_min, alpha_fn(sigma_min))
    sig = [sigma_max]
    for j in range(1, num_intervals):
        sig.append(sigma_from_lambda(lam0 + (lam1 - lam0) * j / num_intervals, alpha))
    sig += [sigma_min, 0.0]
    return torch.tensor(sig, dtype=dtype)


def old_karras_sigmas(n, sigma_min, sigma_max, rho=7.0, dtype=F64):
    ramp = torch.linspace(0, 1, n, dtype=F64)
    sig = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sig, sig.new_zeros([1])]).to(dtype)


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 17])
def test_both_grid_helpers_share_one_convention(steps):
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # the new forms warn about nothing
        for make in (adjoint.karras_sigmas, adjoint.uniform_lambda_sigmas):
            for sig in (make(steps, 0.03, 14.6), make(steps=steps, sigma_min=0.03, sigma_max=14.6),
                        make(steps, sigma_max=14.6, sigma_min=0.03)):
                assert len(sig) == steps + 1 and adjoint.make_grid(sig).num_steps == steps
                assert math.isclose(float(sig[0]), 14.6, rel_tol=1e-12) and float(sig[-1]) == 0.0
                if steps > 1:
                    assert math.isclose(float(sig[-2]), 0.03, rel_tol=1e-12)
        flow = adjoint.uniform_lambda_sigmas(steps, 0.02, 0.98, "flow", torch.float32)
        assert flow.dtype == torch.float32 and adjoint.make_grid(flow, "flow").num_steps == steps
    assert torch.equal(adjoint.karras_sigmas(steps, 0.03, 14.6), old_karras_sigmas(steps, 0.03, 14.6))
    if steps > 1:
        assert torch.equal(adjoint.uniform_lambda_sigmas(steps, 0.03, 14.6),
                           old_uniform_lambda_sigmas(steps - 1, 14.6, 0.03))


@pytest.mark.parametrize("n", [1, 2, 8, 16])
def test_old_grid_call_forms_warn_and_give_the_same_grids(n):
    for alpha, (smin, smax) in ((None, (0.03, 14.6)), ("flow", (0.02, 0.98))):
        old = old_uniform_lambda_sigmas(n, smax, smin, alpha)
        with pytest.warns(DeprecationWarning, match=r"uniform_lambda_sigmas\(n, sigma_max, sigma_min, \.\.\.\) "
                                                    r"is deprecated"):
            a = adjoint.uniform_lambda_sigmas(n, smax, smin, alpha)
        with pytest.warns(DeprecationWarning, match=r"num_intervals=n, \.\.\.\) is deprecated: pass steps=n \+ 1"):
            b = adjoint.uniform_lambda_sigmas(num_intervals=n, sigma_max=smax, sigma_min=smin, alpha=alpha)
        with pytest.warns(DeprecationWarning):
            c = adjoint.uniform_lambda_sigmas(n, smax, smin, alpha, torch.float32)
        assert torch.equal(a, old) and torch.equal(b, old) and torch.equal(c, old.float())
        assert torch.equal(adjoint.uniform_lambda_sigmas(n + 1, smin, smax, alpha), old)
    with pytest.warns(DeprecationWarning, match=r"karras_sigmas\(n=\.\.\.\) is deprecated"):
        k = adjoint.karras_sigmas(n=n, sigma_min=0.03, sigma_max=14.6)
    assert torch.equal(k, old_karras_sigmas(n, 0.03, 14.6))


def test_old_uniform_form_warning_points_at_the_caller():
    with pytest.warns(DeprecationWarning) as record:
        adjoint.uniform_lambda_sigmas(4, 14.6, 0.03)
    assert record[0].filename == __file__


GRID_CASES = [
    (adjoint.karras_sigmas, (0, 0.03, 14.6), {}, ValueError, r"steps: must be ≥ 1, got 0"),
    (adjoint.karras_sigmas, (2.5, 0.03, 14.6), {}, TypeError, r"steps: must be an integer"),
    (adjoint.karras_sigmas, (10, 14.6, 0.03), {}, ValueError,
     r"sigma_min: must be < sigma_max, got sigma_min = 14.6, sigma_max = 0.03; the call is "
     r"karras_sigmas\(steps, sigma_min, sigma_max, \.\.\.\)"),
    (adjoint.karras_sigmas, (10, 0.0, 14.6), {}, ValueError, r"sigma_min: must be > 0"),
    (adjoint.karras_sigmas, (10, 0.03, math.inf), {}, ValueError, r"sigma_max: must be finite"),
    (adjoint.karras_sigmas, (10, 0.03, "14.6"), {}, TypeError, r"sigma_max: must be a real number"),
    (adjoint.karras_sigmas, (10, 0.03, 14.6, -7.0), {}, ValueError, r"rho: must be > 0"),
    (adjoint.karras_sigmas, (10, 0.03, 14.6), {"dtype": torch.int64}, ValueError,
     r"dtype: must be a floating-point dtype"),
    (adjoint.karras_sigmas, (10, 0.03), {}, TypeError, r"sigma_max: missing"),
    (adjoint.karras_sigmas, (), {"sigma_min": 0.03, "sigma_max": 14.6}, TypeError, r"steps: missing"),
    (adjoint.karras_sigmas, (10, 0.03, 14.6), {"n": 10}, TypeError, r"n: give steps or the deprecated n"),
    (adjoint.uniform_lambda_sigmas, (0, 0.03, 14.6), {}, ValueError, r"steps: must be ≥ 1"),
    (adjoint.uniform_lambda_sigmas, (10, 0.03, 0.03), {}, ValueError, r"sigma_min: must be < sigma_max"),
    (adjoint.uniform_lambda_sigmas, (10, 0.03, 1.0, "flow"), {}, ValueError,
     r"alpha: α must be positive at both bounds"),
    (adjoint.uniform_lambda_sigmas, (10, 0.03, 14.6, "vp"), {}, ValueError, r"alpha: unknown name"),
    (adjoint.uniform_lambda_sigmas, (10, 0.03, 14.6), {"dtype": "float32"}, TypeError,
     r"dtype: must be a torch.dtype"),
    (adjoint.uniform_lambda_sigmas, (), {"num_intervals": 0, "sigma_min": 0.03, "sigma_max": 14.6}, ValueError,
     r"num_intervals: must be ≥ 1"),
    (adjoint.uniform_lambda_sigmas, (10,), {"num_intervals": 9, "sigma_min": 0.03, "sigma_max": 14.6},
     TypeError, r"num_intervals: give steps or the deprecated num_intervals, not both"),
]


@pytest.mark.parametrize("fn, args, kwargs, exc, pattern", GRID_CASES, ids=[str(i) for i in range(len(GRID_CASES))])
def test_grid_helpers_name_the_bad_argument(fn, args, kwargs, exc, pattern):
    with pytest.raises(exc, match=f"^{fn.__name__}: " + pattern):
        fn(*args, **kwargs)


# ---------------------------------------------------------------------------------------
# the timing rule the README states
# ---------------------------------------------------------------------------------------
def test_keyframes_switch_where_the_readme_says():
    """N = len(sigmas) − 1 counts the final denoise; a keyframe at fraction f is active from
    step ⌊f·N⌋ (0-based), one at ("step", k) from step k, and one at k ≥ N never."""
    n = 10
    sig = adjoint.karras_sigmas(n, 0.05, 10.0)
    kfs = [torch.full((1, 1), float(k), dtype=F64) for k in range(5)]
    starts = (Position(0.0), Position(0.29), Position(5, "step"), Position(0.75), Position(10, "step"))
    seen = []

    def den(x, sigma, c):
        seen.append(float(c))
        return torch.zeros_like(x)

    adjoint.sample(den, torch.zeros(1, 1, dtype=F64), sig, ScheduledConditioning(kfs, Timeline(starts)))
    #            steps 0-1: kf 0 | 2-4: kf 1 (⌊0.29·10⌋ = 2) | 5-6: kf 2 | 7-9: kf 3 (⌊7.5⌋) | kf 4 never
    assert seen == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert Timeline(starts).start_steps(n) == (0, 2, 5, 7, 10)
    # linear: keyframe k+1 is reached exactly at its start step, blending from keyframe k's start
    seen.clear()
    lin = Timeline((Position(0.0), Position(0.4)), "linear")
    adjoint.sample(den, torch.zeros(1, 1, dtype=F64), sig, ScheduledConditioning(kfs[:2], lin))
    assert seen == [0.0, 0.25, 0.5, 0.75] + [1.0] * 6
