"""The Adjoint Sampler node called directly (in-process): bad input and NaN losses.

Models are loaded under torch.inference_mode(), as ComfyUI's loader nodes leave them.
"""
import pytest
import torch

from comfy_harness import pack_submodule, tiny_unet32_patcher

DEFAULTS = dict(seed=1, steps=3, cfg=1.0, scheduler="karras", solver="dpmpp_2m", gradient="exact",
                adjoint_steps=0, optimize="noise", iterations=3, learning_rate=0.1,
                renormalize_noise=True, max_grad_norm=0.0, early_stop_patience=0, denoise=1.0)


@pytest.fixture(scope="module")
def setup(comfy_nodes):
    with torch.inference_mode():
        model = tiny_unet32_patcher()
        g = torch.Generator().manual_seed(0)
        cond = [[torch.randn(1, 77, 768, generator=g), {}]]
        latent = {"samples": torch.zeros(1, 4, 8, 8)}
        target = {"samples": torch.randn(1, 4, 8, 8, generator=g)}
    return model, cond, latent, target


def run(setup, loss=None, **overrides):
    node = pack_submodule("nodes.adjoint_sampler").AdjointSampler
    losses = pack_submodule("adjoint.losses")
    model, cond, latent, target = setup
    args = dict(model=model, positive=cond, negative=cond, latent_image=latent,
                loss=loss or losses.LatentTarget(target["samples"]), **DEFAULTS)
    args.update(overrides)
    with torch.inference_mode():
        return node.execute(**args)


def test_wrong_latent_channels_names_node_and_input(setup):
    with pytest.raises(ValueError, match=r"^Adjoint Sampler: latent_image: the latent has 16 channels"):
        run(setup, latent_image={"samples": torch.ones(1, 16, 8, 8)})


def test_inpainting_latents_are_refused_clearly(setup):
    masked = {"samples": torch.zeros(1, 4, 8, 8), "noise_mask": torch.ones(1, 1, 8, 8)}
    with pytest.raises(ValueError, match=r"^Adjoint Sampler: latent_image: it carries a noise mask"):
        run(setup, latent_image=masked)


def test_conditioning_of_another_model_family_is_refused(setup):
    sdxl_like = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
    with pytest.raises(ValueError, match=r"^Adjoint Sampler: positive: the text embedding has width 2048"):
        run(setup, positive=sdxl_like)


def test_gradient_method_must_fit_the_solver(setup):
    with pytest.raises(ValueError, match=r"^Adjoint Sampler: gradient: 'adjointdeis-sde' does not go"):
        run(setup, gradient="adjointdeis-sde")


def test_nan_loss_stops_and_keeps_the_best_iterate(setup):
    losses = pack_submodule("adjoint.losses")
    model, cond, latent, target = setup

    class NaNAfterTwo(losses.GuidanceLoss):
        calls = 0

        def parts(self, x0):
            NaNAfterTwo.calls += 1
            value = (x0 - target["samples"]).square().mean(dim=(1, 2, 3))
            return {"mse": value * (float("nan") if NaNAfterTwo.calls > 2 else 1.0)}

    out = run(setup, loss=NaNAfterTwo(), iterations=10)
    report = out.ui["adjoint_guidance_loss"][0]
    assert report["stop_reason"] == "non_finite_loss"
    assert "NaN" in report["status"] and "best" in report["status"]
    assert report["best_iteration"] in (0, 1) and report["losses"][2] is None
    latent_out = out.args[0]["samples"]
    assert torch.isfinite(latent_out).all()


def test_optimized_outputs_are_usable(setup):
    out = run(setup, optimize="noise + prompt", iterations=2, gradient_memory="0")
    latent, noise, positive, plot = out.args
    assert latent["samples"].shape == (1, 4, 8, 8) and noise["samples"].shape == (1, 4, 8, 8)
    assert positive[0][0].shape == (1, 77, 768) and not positive[0][0].is_inference()
    assert not torch.equal(positive[0][0], setup[1][0][0])   # the prompt embedding did move
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and plot.dtype == torch.float32
    calls = out.ui["adjoint_guidance_loss"][0]["network_calls"]
    # 2 iterations of exact gradients on 3 steps, then the final iterate forward-only
    assert calls == {"forwards": 2 * 3 + 3, "forwards_with_grad": 2 * 3, "vjps": 2 * 3}


@pytest.mark.parametrize("core, shown", [
    ("optimize: method: unknown gradient method 'adjoint'; valid names: exact",
     "Adjoint Sampler: gradient: unknown gradient method 'adjoint'; valid names: exact"),
    ("optimize: nothing to optimise: set optimize_noise, optimize_keyframes (with floating-point keyframes) or "
     "optimize_params (with params)", "Adjoint Sampler: optimize: nothing to optimise (choose noise, prompt or "
                                      "noise + prompt)"),
    ("optimize: lr: expected a number above 0, got 0.0", "Adjoint Sampler: learning_rate: expected a number above 0, "
                                                        "got 0.0"),
    ("positive: no conditioning entry covers step 3", "Adjoint Sampler: positive: no conditioning entry covers step 3"),
])
def test_core_messages_are_shown_with_the_node_input_names(comfy_nodes, core, shown):
    assert pack_submodule("nodes.adjoint_sampler").node_message("Adjoint Sampler", core) == shown


def test_a_nan_setting_is_refused_before_the_model_runs(setup):
    with pytest.raises(ValueError, match=r"^Adjoint Sampler: cfg: expected a finite number from 0 to 100, found nan$"):
        run(setup, cfg=float("nan"))
    with pytest.raises(ValueError, match=r"^Adjoint Sampler: latent_image: the latent holds 256 NaN or infinite "):
        run(setup, latent_image={"samples": torch.full((1, 4, 8, 8), float("inf"))})


def test_gradient_memory_keeps_graphs_for_the_same_result(setup):
    """gradient_memory "auto" (the default) keeps every step's graph of this tiny model: no
    recomputed forwards, and the result is the one gradient_memory "0" gives."""
    kept = run(setup, optimize="noise + prompt", iterations=2)
    recomputed = run(setup, optimize="noise + prompt", iterations=2, gradient_memory="0")
    assert kept.ui["adjoint_guidance_loss"][0]["network_calls"] == {
        "forwards": 3, "forwards_with_grad": 2 * 3, "vjps": 2 * 3}
    assert torch.equal(kept.args[0]["samples"], recomputed.args[0]["samples"])
    assert kept.ui["adjoint_guidance_loss"][0]["losses"] == recomputed.ui["adjoint_guidance_loss"][0]["losses"]
