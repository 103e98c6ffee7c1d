"""The Adjoint Sampler's optimising sampler on a batch, in real ComfyUI (tiny SD1.5 UNet).

batch_mode "batched" (one pass: every sample its own optimisation, the batch sharing each
network call) gives every sample what "one_by_one" (one optimisation per sample in turn)
gives, up to the network's round-off from batching; "one_by_one" gives bit for bit what
batch-1 runs give. The sampler runs inside CFGGuider.sample as the node runs it.

Measured (3 iterations, 3 steps, B = 3, relative to each quantity's scale): in float64 (the
UNet cast, ComfyUI's float32 cast of the model output bypassed) the modes agree to 6e-14
(tolerance 1e-11); in float32 the samples, noises and losses agree to 2e-5 (tolerance
2e-4), and so do 99.9 % of the prompt's elements; the few whose gradient is round-off
can take Adam's ±lr step the other way (up to 3e-2 measured).
"""
import math

import pytest
import torch

from comfy_harness import pack_submodule, tiny_unet32_patcher
from guider_harness import float64_unet32_patcher

B, STEPS, SEED = 3, 3, 5
FLOAT32_TOLERANCE = 2e-4      # relative; measured ≤ 3e-5 (3 iterations, noise + prompt)
FLOAT64_TOLERANCE = 1e-11


@pytest.fixture(scope="module")
def setup(comfy_nodes):
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        model = tiny_unet32_patcher()
        positive = [[torch.randn(1, 77, 768, generator=g), {}]]
        negative = [[torch.randn(1, 77, 768, generator=g), {}]]
        noise = torch.randn(B, 4, 8, 8, generator=g)
        target = torch.randn(B, 4, 8, 8, generator=g)
    return dict(model=model, positive=positive, negative=negative, noise=noise, target=target)


@pytest.fixture(scope="module")
def float64_model(setup):
    return float64_unet32_patcher()


def run(setup, batch_mode, rows=slice(None), batch_index=None, model=None, dtype=torch.float32, cfg=2.0,
        **settings):
    """The optimising sampler inside a real CFGGuider.sample, as the Adjoint Sampler runs it,
    on the samples `rows` of the setup; (sampled latent, BatchResult, sampler)."""
    import comfy.samplers
    sampling = pack_submodule("nodes.adjoint_sampling")
    losses = pack_submodule("adjoint.losses")
    inf = pack_submodule("nodes.inference_tensors")
    model = model or setup["model"]
    options = dict(iterations=3, lr=0.1, seed=SEED, batch_index=batch_index, batch_mode=batch_mode)
    options.update(settings)
    sampler = sampling.AdjointOptimizingSampler(losses.LatentTarget(setup["target"][rows].to(dtype)),
                                                sampling.OptimizeSettings(**options))

    class InDtype(comfy.samplers.Sampler):
        """Hands our sampler its inputs in `dtype` (ComfyUI 0.33 casts them to float32)."""

        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
                   denoise_mask=None, disable_pbar=False):
            return sampler.sample(model_wrap, sigmas.to(dtype), extra_args, callback, noise.to(dtype),
                                  latent_image.to(dtype), denoise_mask, disable_pbar)

    with torch.inference_mode():
        noise = setup["noise"][rows].clone()
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", STEPS).cpu()
        guider = comfy.samplers.CFGGuider(inf.gradient_patcher(model, "test: model"))
        guider.set_conds([[t.to(dtype), o] for t, o in setup["positive"]], setup["negative"])
        guider.set_cfg(cfg)
        out = guider.sample(noise, torch.zeros_like(noise), InDtype(), sigmas, seed=SEED, disable_pbar=True)
    return out, sampler.outcome.result, sampler


def relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a − b| elementwise, relative to b's largest entry."""
    return (a.double() - b.double()).abs() / b.double().abs().max()


def differences(a, b) -> dict:
    """Largest differences between two BatchResults, relative to the reference's scale: the
    sample, the noise, every sample's losses, and the prompt embeddings (their largest and
    their 99.9 % quantile); stop reasons, best iterations and iterations run must agree."""
    for sa, sb in zip(a.samples, b.samples):
        assert (sa.best_iteration, sa.stop_reason, sa.iterations_run) == (sb.best_iteration, sb.stop_reason,
                                                                          sb.iterations_run)
    out = {"x0": relative(a.x0, b.x0).max().item(), "noise": relative(a.noise, b.noise).max().item(),
           "losses": max(abs(x - y) / abs(y) for sa, sb in zip(a.samples, b.samples)
                         for x, y in zip(sa.losses, sb.losses))}
    prompt = relative(a.keyframes[0]["0:cross_attn"], b.keyframes[0]["0:cross_attn"])
    out["prompt"], out["prompt_99.9%"] = prompt.max().item(), prompt.flatten().quantile(0.999).item()
    return out


@pytest.mark.parametrize("solver", ["dpmpp_2m", "sde_dpmpp_1"])
@pytest.mark.parametrize("optimize_prompt", [False, True], ids=["noise", "noise+prompt"])
def test_batched_equals_one_by_one_in_float32(setup, solver, optimize_prompt):
    _, batched, _ = run(setup, "batched", solver=solver, optimize_prompt=optimize_prompt)
    _, single, _ = run(setup, "one_by_one", solver=solver, optimize_prompt=optimize_prompt)
    found = differences(batched, single)
    print(f"float32 {solver} prompt={optimize_prompt}: {found}")
    # Adam steps every element by about ±lr whatever its gradient's size, so an element
    # whose gradient is all but zero (round-off) may step the other way: a few prompt
    # elements (measured: 6e-6 of them beyond 1e-2) differ by up to a step, the rest agree
    assert max(found["x0"], found["noise"], found["losses"], found["prompt_99.9%"]) <= FLOAT32_TOLERANCE, found
    assert found["prompt"] <= 0.1 * 3 / setup["positive"][0][0].abs().max().item(), found   # ≤ 3 steps of lr
    assert batched.x0.shape == (B, 4, 8, 8) and len(batched.samples) == B
    if optimize_prompt:        # each sample optimised its own copy of the shared prompt
        prompt = batched.keyframes[0]["0:cross_attn"]
        assert prompt.shape == (B, 77, 768) and not torch.equal(prompt[0], prompt[1])
    else:                      # not optimised: the shared prompt stays shared
        assert batched.keyframes[0]["0:cross_attn"].shape == (1, 77, 768)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "sde_dpmpp_1"])
def test_batched_equals_one_by_one_in_float64(setup, float64_model, solver):
    kw = dict(model=float64_model, dtype=torch.float64, cfg=1.0, solver=solver, optimize_prompt=True)
    _, batched, _ = run(setup, "batched", **kw)
    _, single, _ = run(setup, "one_by_one", **kw)
    assert batched.x0.dtype == torch.float64 and batched.keyframes[0]["0:cross_attn"].dtype == torch.float64
    assert relative(batched.keyframes[0]["0:cross_attn"][:1], setup["positive"][0][0]).median() > 1e-3  # it moved
    found = differences(batched, single)
    print(f"float64 {solver}: {found}")
    assert max(found.values()) <= FLOAT64_TOLERANCE, found


def test_one_by_one_is_bit_for_bit_the_batch_of_one_runs(setup):
    kw = dict(solver="sde_dpmpp_1", optimize_prompt=True, max_grad_norm=0.5)
    out, single, _ = run(setup, "one_by_one", **kw)
    for b in range(B):
        # a sample cut out of the batch keeps its batch_index, so its seed (LatentFromBatch)
        alone_out, alone, _ = run(setup, "one_by_one", rows=slice(b, b + 1), batch_index=[b], **kw)
        assert torch.equal(out[b:b + 1], alone_out) and torch.equal(single.noise[b:b + 1], alone.noise)
        assert torch.equal(single.keyframes[0]["0:cross_attn"][b:b + 1], alone.keyframes[0]["0:cross_attn"])
        assert single.samples[b] == alone.samples[0] and alone.losses == alone.samples[0].losses


def test_progress_callbacks_count_one_pass_in_batched_mode(setup):
    for mode, passes in (("batched", 1), ("one_by_one", B)):
        iterations, steps, current = [], [], []
        _, result, sampler = run(setup, mode, iteration_callback=iterations.append,
                                 step_callback=lambda phase, done, total: steps.append(phase))
        assert sampler.passes(B) == passes
        # per pass: 3 iterations of STEPS forward + STEPS backward steps, then the final forward pass
        assert len(iterations) == 3 * passes and steps.count("backward") == 3 * STEPS * passes
        assert steps.count("forward") == 4 * STEPS * passes
        if mode == "batched":
            assert all(info.active.tolist() == [True] * B and info.x0.shape[0] == B for info in iterations)
            assert [info.iteration for info in iterations] == [0, 1, 2] and sampler.current_sample == 0
            assert result.counts.vjps == 3 * STEPS
        else:
            assert all(info.active is None and info.x0.shape[0] == 1 for info in iterations)
            assert sampler.current_sample == B - 1 and result.counts.vjps == 3 * STEPS * B


def test_batch_results_carry_every_samples_history(setup):
    _, result, _ = run(setup, "batched", iterations=4, early_stop_patience=1)
    assert len(result.samples) == B and result.per_sample_loss.shape == (B,)
    for b, s in enumerate(result.samples):
        assert s.best_loss == min(v for v in s.losses if math.isfinite(v)) == s.losses[s.best_iteration]
        assert float(result.per_sample_loss[b]) == s.best_loss
        assert s.stop_reason in ("iterations", "early_stop") and len(s.grad_norms) == len(s.losses)
    assert result.loss == sum(s.best_loss for s in result.samples)
    assert len(result.losses) == max(len(s.losses) for s in result.samples)


def test_an_unknown_batch_mode_is_refused(comfy_nodes):
    sampling = pack_submodule("nodes.adjoint_sampling")
    losses = pack_submodule("adjoint.losses")
    with pytest.raises(ValueError, match=r"^Adjoint Sampler: batch_mode: expected one of batched, one_by_one, "
                                         r"found 'parallel'$"):
        sampling.AdjointOptimizingSampler(losses.LatentTarget(torch.zeros(1, 4, 8, 8)),
                                          sampling.OptimizeSettings(batch_mode="parallel"))
