"""Empty latents with downscale ratios, in-process: the Adjoint Sampler sizes them and builds
its output LATENT exactly as the stock samplers of the running ComfyUI do, and Noise From
Latent replays its noise on the same empty latent in SamplerCustomAdvanced.

ComfyUI 0.33's empty-latent nodes add `downscale_ratio_spacial` (EmptyLatentImage: 8);
the stock samplers pass it to comfy.sample.fix_empty_latent_channels, which resizes an
empty latent made for another VAE ratio to the model's, and drop it from their output.
Older versions have neither (the keys pass through a sampler untouched). The tiny UNet's
latent format has ratio 8: an empty latent marked 16 is upscaled ×2, one marked 4 halved.
"""
import pytest
import torch

from comfy_harness import pack_submodule, tiny_unet32_patcher

STEPS = 3
ADJOINT = dict(seed=5, steps=STEPS, cfg=1.0, scheduler="karras", solver="dpmpp_1", gradient="exact",
               adjoint_steps=0, optimize="noise", iterations=1, learning_rate=0.1,
               renormalize_noise=True, max_grad_norm=0.0, early_stop_patience=0, denoise=1.0)


@pytest.fixture(scope="module")
def setup(comfy_nodes):
    with torch.inference_mode():
        model = tiny_unet32_patcher()
        cond = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(0)), {}]]
    return comfy_nodes, model, cond


def takes_ratios():
    return pack_submodule("nodes.host_compat").takes_downscale_ratios()


def needs_ratios():
    if not takes_ratios():
        pytest.skip("this ComfyUI's fix_empty_latent_channels takes no downscale ratios (ComfyUI < 0.33: "
                    "empty latents carry none, nothing to resize)")


def stock_ksampler(setup, latent):
    nodes, model, cond = setup
    with torch.inference_mode():
        return nodes.common_ksampler(model, ADJOINT["seed"], STEPS, 1.0, "euler", "karras", cond, cond, latent)[0]


def adjoint(setup, latent, **overrides):
    _, model, cond = setup
    losses = pack_submodule("adjoint.losses")
    node = pack_submodule("nodes.adjoint_sampler").AdjointSampler
    target = torch.zeros(1, 4, 1, 1)   # broadcasts over any latent size

    class Mean(losses.GuidanceLoss):
        def parts(self, x0):
            return {"mse": (x0 - target).square().mean(dim=(1, 2, 3))}

    with torch.inference_mode():
        return node.execute(model=model, positive=cond, negative=cond, latent_image=latent, loss=Mean(),
                            **{**ADJOINT, **overrides}).args


def empty(side=8, **ratios):
    with torch.inference_mode():
        return {"samples": torch.zeros(1, 4, side, side), **ratios}


@pytest.mark.parametrize("ratio, side", [(16, 16), (4, 4), (8, 8)])
def test_empty_latent_is_sized_as_the_stock_samplers_size_it(setup, ratio, side):
    needs_ratios()
    latent = empty(downscale_ratio_spacial=ratio)
    stock = stock_ksampler(setup, latent)
    out, noise, _, _ = adjoint(setup, latent)
    assert stock["samples"].shape == (1, 4, side, side)
    assert out["samples"].shape == stock["samples"].shape
    assert noise["samples"].shape == stock["samples"].shape


@pytest.mark.parametrize("extra", [{}, {"downscale_ratio_spacial": 8}, {"downscale_ratio_spacial": 16,
                                                                       "batch_index": [3]}])
def test_output_latent_has_exactly_the_stock_samplers_keys(setup, extra):
    """On 0.33 both drop the ratios; on older versions both pass them through."""
    latent = empty(**extra)
    stock = stock_ksampler(setup, latent)
    out, noise, _, _ = adjoint(setup, latent)
    assert sorted(out) == sorted(stock)
    assert all(out[k] == stock[k] for k in out if k != "samples")
    assert sorted(noise) == ["samples"]
    if takes_ratios():
        assert "downscale_ratio_spacial" not in out


def test_noise_from_latent_replays_on_the_same_empty_latent(setup):
    """optimized_noise (sized for the resized latent) replays in SamplerCustomAdvanced given the
    same marked empty latent: our dpmpp_1 reproduces the Adjoint Sampler's result exactly and
    ComfyUI's euler to round-off."""
    needs_ratios()
    from comfy_extras.nodes_custom_sampler import CFGGuider, KSamplerSelect, SamplerCustomAdvanced
    import comfy.samplers
    _, model, cond = setup
    sampler_nodes = pack_submodule("nodes.adjoint_sampler")
    latent = empty(downscale_ratio_spacial=16)
    out, noise, _, _ = adjoint(setup, latent, iterations=2, learning_rate=0.5)
    assert out["samples"].shape == (1, 4, 16, 16)
    with torch.inference_mode():
        replay_noise = sampler_nodes.NoiseFromLatent.execute(noise, 0).args[0]
        guider = CFGGuider.execute(model, cond, cond, 1.0).args[0]
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", STEPS).cpu()
        ours = sampler_nodes.AdjointSolverSampler.execute("dpmpp_1").args[0]
        euler = KSamplerSelect.execute("euler").args[0]
        replay = SamplerCustomAdvanced.execute(replay_noise, guider, ours, sigmas, latent).args[0]
        replay_euler = SamplerCustomAdvanced.execute(replay_noise, guider, euler, sigmas, latent).args[0]
    assert "downscale_ratio_spacial" not in replay
    assert torch.equal(replay["samples"], out["samples"])
    torch.testing.assert_close(replay_euler["samples"], out["samples"], rtol=1e-5, atol=1e-5)
