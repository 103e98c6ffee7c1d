"""Every model family users run, through our nodes, against ComfyUI's own samplers.

Each family is a tiny instance of its real classes (tests/model_families.py): the real
BaseModel subclass with its extra_conds, sampling and latent format, the real network
class at reduced width, loaded under inference mode as loaders leave it. For each:
- iteration 0: our solvers give the stock samplers' samples (dpmpp_1 = euler, dpmpp_2m =
  dpmpp_2m) on the same model, noise and conditioning, to round-off;
- the gradient w.r.t. the noise and both keyframes of a two-keyframe schedule equals a
  float64 finite difference through the real network and guider;
- the Adjoint Sampler (noise + prompt) halves a latent-target loss within 20 iterations;
- a Conditioning Schedule over two of the family's conditionings covers every step with
  exactly its entry, through ComfyUI's own range code and the family's sampling;
- the optimised noise and prompt fed to stock sampling reproduce our sample;
- a latent of the wrong rank is refused naming the node and the input.
"""
import pytest
import torch

from comfy_harness import pack_submodule
from guider_harness import gradient_checks
from model_families import all_family_names, family_or_skip

FAMILIES = all_family_names()
STEPS = 4
SETTINGS = dict(steps=STEPS, scheduler="simple", adjoint_steps=0, renormalize_noise=True, max_grad_norm=0.0,
                early_stop_patience=0, denoise=1.0, gradient="exact")


def seeded(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def stock_sample(patcher, fam, positive, negative, noise, sampler_name):
    import comfy.sample
    with torch.inference_mode():
        latent = torch.zeros(1, *fam.latent_shape)
        return comfy.sample.sample(patcher, noise, STEPS, fam.cfg, sampler_name, "simple", positive, negative,
                                   latent, seed=0).float()


def our_solver_sample(patcher, fam, positive, negative, noise, solver):
    import comfy.sample
    import comfy.samplers
    ours = pack_submodule("nodes.adjoint_sampler").AdjointSolverSampler.execute(solver).result[0]
    with torch.inference_mode():
        latent = torch.zeros(1, *fam.latent_shape)
        sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple", STEPS)
        return comfy.sample.sample_custom(patcher, noise, fam.cfg, ours, sigmas, positive, negative, latent,
                                          seed=0).float()


def adjoint_sampler(patcher, fam, positive, negative, target, **overrides):
    node = pack_submodule("nodes.adjoint_sampler").AdjointSampler
    losses = pack_submodule("adjoint.losses")
    args = dict(model=patcher, positive=positive, negative=negative,
                latent_image={"samples": torch.zeros(1, *fam.latent_shape)}, loss=losses.LatentTarget(target),
                seed=1, cfg=fam.cfg, solver="dpmpp_2m", optimize="noise + prompt", iterations=3,
                learning_rate=0.1, **SETTINGS)
    args.update(overrides)
    with torch.inference_mode():
        return node.execute(**args)


def rel_max(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def conds():
    def make(fam):
        return fam.conditioning(1), fam.conditioning(2)
    return make


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("solver, stock", [("dpmpp_1", "euler"), ("dpmpp_2m", "dpmpp_2m")])
def test_iteration_zero_equals_the_stock_sampler(comfy_nodes, conds, family, solver, stock):
    fam = family_or_skip(family)
    patcher = fam.build()
    positive, negative = conds(fam)
    noise = seeded((1, *fam.latent_shape), 7)
    ours = our_solver_sample(patcher, fam, positive, negative, noise, solver)
    theirs = stock_sample(patcher, fam, positive, negative, noise, stock)
    assert torch.isfinite(theirs).all() and theirs.abs().max() > 0
    assert rel_max(ours, theirs) <= 1e-5, f"{family} {solver} vs stock {stock}: {rel_max(ours, theirs):.3g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_equals_float64_finite_differences(comfy_nodes, conds, family):
    fam = family_or_skip(family)
    patcher = fam.build(torch.float64)
    positive, negative = fam.conditioning(1), fam.conditioning(2)
    to64 = lambda c: [[t.double(), {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                                    for k, v in d.items()}] for t, d in c]
    checks, counts, remedies = gradient_checks(patcher, to64(positive), to64(negative), fam.latent_shape,
                                               steps=STEPS, cfg=fam.cfg, scheduler="simple", with_noise=True)
    print(f"\n{family}: graph safety {remedies or 'none needed'}; " +
          ", ".join(f"{name} {abs(fd - a) / max(abs(fd), 1e-300):.1e}" for name, fd, a, _ in checks))
    assert len(checks) >= 3
    unread = fam.notes.get("unread_keys", ())    # e.g. SD1/SD2 UNets never read pooled_output
    for name, fd, analytic, fd_noise in checks:
        if name.split()[-1] in unread:
            assert fd == 0.0 and analytic == 0.0, f"{family} {name}: an unread input has a gradient"
            continue
        assert abs(analytic) > 1e-10, f"{family} {name}: zero gradient"
        assert abs(fd - analytic) <= 1e-6 * abs(fd) + fd_noise, \
            f"{family} {name}: finite difference {fd!r} vs adjoint {analytic!r} (round-off {fd_noise:.2g})"
    assert (counts.forwards, counts.forwards_with_grad, counts.vjps) == (STEPS, STEPS, STEPS)


def optimisation_problem(family, conds):
    """(family, model, positive, negative, target): the target is a stock dpmpp_2m sample of
    the same model from another noise, so it is reachable by changing the noise."""
    fam = family_or_skip(family)
    patcher = fam.build()
    positive, negative = conds(fam)
    target = stock_sample(patcher, fam, positive, negative, seeded((1, *fam.latent_shape), 21), "dpmpp_2m")
    return fam, patcher, positive, negative, target


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_halves_in_twenty_iterations(comfy_nodes, conds, family):
    fam, patcher, positive, negative, target = optimisation_problem(family, conds)
    out = adjoint_sampler(patcher, fam, positive, negative, target, iterations=20)
    report = out.ui["adjoint_guidance_loss"][0]
    assert report["best_loss"] <= 0.5 * report["losses"][0], (family, report["losses"])


@pytest.mark.parametrize("family", FAMILIES)
def test_conditioning_schedule_covers_every_step_with_its_entry(comfy_nodes, conds, family):
    from test_schedule_conditioning import _active_entries, _processed
    import comfy.samplers
    fam = family_or_skip(family)
    patcher = fam.build()
    first, second = conds(fam)
    ps = pack_submodule("nodes.prompt_schedule")
    steps = 10
    for scheduler in ("normal", "simple", "karras", "sgm_uniform", "beta"):
        out = ps.ConditioningSchedule.execute("0, 50%", "hold", steps, scheduler, first, patcher,
                                              conditioning_2=second)
        entries = out.args[0]
        conds_processed = _processed(entries, patcher.get_model_object("model_sampling"))
        sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), scheduler, steps)
        for i in range(steps):
            expected = [0] if i < steps // 2 else [1]
            for dtype in (torch.float32, torch.float64):
                got = _active_entries(conds_processed, float(sigmas[i]), dtype)
                assert got == expected, f"{family} {scheduler} step {i}: entries {got}, expected {expected}"


@pytest.mark.parametrize("family", FAMILIES)
def test_optimised_noise_and_prompt_replay_in_stock_sampling(comfy_nodes, conds, family):
    import comfy.sample
    import comfy.samplers
    fam, patcher, positive, negative, target = optimisation_problem(family, conds)
    out = adjoint_sampler(patcher, fam, positive, negative, target)
    ours, noise, optimised_positive = out.result[0]["samples"], out.result[1]["samples"], out.result[2]
    # Noise From Latent + SamplerCustomAdvanced with the stock dpmpp_2m and the optimised prompt
    with torch.inference_mode():
        sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple", STEPS)
        replay = comfy.sample.sample_custom(patcher, noise, fam.cfg, comfy.samplers.ksampler("dpmpp_2m"), sigmas,
                                            optimised_positive, negative,
                                            torch.zeros(1, *fam.latent_shape), seed=0).float()
    assert rel_max(replay, ours) <= 1e-5, f"{family}: replay {rel_max(replay, ours):.3g} off our sample"
    # prompt only: KSampler with the seed and the optimised prompt
    out = adjoint_sampler(patcher, fam, positive, negative, target, optimize="prompt")
    with torch.inference_mode():
        latent = torch.zeros(1, *fam.latent_shape)
        seed_noise = comfy.sample.prepare_noise(latent, 1)
    replay = stock_sample(patcher, fam, out.result[2], negative, seed_noise, "dpmpp_2m")
    assert rel_max(replay, out.result[0]["samples"].float()) <= 1e-5, family


@pytest.mark.parametrize("family", FAMILIES)
def test_latent_of_the_wrong_rank_is_refused_by_name(comfy_nodes, conds, family):
    fam = family_or_skip(family)
    patcher = fam.build()
    positive, negative = conds(fam)
    # image families get a 5-D (video) latent; 5-D families (which take 4-D latents too, as
    # their stock samplers do, by adding the frame axis) a 3-D one
    wrong = (1, fam.latent_shape[0], 2, *fam.latent_shape[-2:]) if len(fam.latent_shape) == 3 \
        else (1, fam.latent_shape[0], fam.latent_shape[-1])
    losses = pack_submodule("adjoint.losses")
    with pytest.raises(ValueError, match=r"^Adjoint Sampler: latent_image: a \d-D latent"):
        adjoint_sampler(patcher, fam, positive, negative, torch.ones(wrong), latent_image={"samples": torch.ones(wrong)},
                        loss=losses.LatentTarget(torch.ones(wrong)))
