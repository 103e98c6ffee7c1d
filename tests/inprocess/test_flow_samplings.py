"""Flow samplings ComfyUI 0.33 added, in-process: scaled noise (CONST.noise_scale, HiDream-O1
uses 8) and image-to-image flow (IMG_TO_IMG_FLOW, WAN 2.1 FlowRVS).

- With noise_scale s the state is x = (1 − σ)·x0 + σ·s·ε. Our ODE solvers follow the model's
  own noise_scaling (the start) and inverse_noise_scaling (the end); s changes no solver
  coefficient. Proof: our dpmpp_1 equals ComfyUI's euler to round-off at s = 1 and s = 8,
  in the Adjoint Solver (Sampler) and in the Adjoint Sampler's un-optimised iterate.
- The SDE solver injects its noise at s·σ as ComfyUI's SDE samplers do: with a model whose
  x0 prediction is 0, every state of the trajectory has standard deviation s·σ.
- IMG_TO_IMG_FLOW starts from the input latent itself (no noise) and returns 1 − x, with σ
  on the discrete (EPS) grid, above 1: the Adjoint Solver (Sampler) follows it exactly (our
  dpmpp_1 = euler, our dpmpp_2m = ComfyUI's dpmpp_2m); the Adjoint Sampler refuses it.

ComfyUI 0.3.75 has neither (the tests say so and skip).
"""
import pytest
import torch

from comfy_harness import pack_submodule, tiny_unet32_patcher

STEPS = 4


@pytest.fixture(scope="module")
def setup(comfy_nodes):
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    with torch.inference_mode():
        base = tiny_unet32_patcher()
        flow = ModelSamplingSD3().patch(base, 3.0)[0]
        g = torch.Generator().manual_seed(0)
        cond = [[torch.randn(1, 77, 768, generator=g), {}]]
        noise = torch.randn(1, 4, 8, 8, generator=g)
    return {"base": base, "flow": flow, "cond": cond, "noise": noise}


def noise_scaled(model, scale):
    import comfy_extras.nodes_model_advanced as adv
    if not hasattr(adv, "ModelNoiseScale"):
        pytest.skip("this ComfyUI has no scaled-noise flow sampling (ModelNoiseScale / "
                    "ModelSamplingDiscreteFlow.set_noise_scale appeared in ComfyUI 0.33)")
    with torch.inference_mode():
        return adv.ModelNoiseScale().patch(model, scale)[0]


def img_to_img_flow(model):
    import comfy.model_sampling
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete
    if not hasattr(comfy.model_sampling, "IMG_TO_IMG_FLOW"):
        pytest.skip("this ComfyUI has no IMG_TO_IMG_FLOW sampling (it appeared in ComfyUI 0.33)")
    with torch.inference_mode():
        return ModelSamplingDiscrete().patch(model, "img_to_img_flow", False)[0]


def sigmas_of(model, scheduler="simple", steps=STEPS):
    import comfy.samplers
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()


def run(model, sampler, cond, noise, latent, sigmas, seed=3):
    import comfy.sample
    with torch.inference_mode():
        return comfy.sample.sample_custom(model, noise, 1.0, sampler, sigmas, cond, cond, latent, seed=seed)


def stock(name):
    import comfy.samplers
    return comfy.samplers.sampler_object(name)


def ours(solver, seed=3):
    s = pack_submodule("nodes.adjoint_sampling")
    return s.ScheduledSolverSampler(s.SolverSettings(solver=solver, seed=seed))


def close(a, b, rel=1e-5):
    scale = float(b.abs().max())
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * scale)


# -- scaled noise -------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_dpmpp_1_is_stock_euler_with_scaled_noise(setup, scale):
    model = noise_scaled(setup["flow"], scale)
    assert model.get_model_object("model_sampling").noise_scale == scale
    zeros = torch.zeros_like(setup["noise"])
    sigmas = sigmas_of(model)
    a = run(model, ours("dpmpp_1"), setup["cond"], setup["noise"], zeros, sigmas)
    b = run(model, stock("euler"), setup["cond"], setup["noise"], zeros, sigmas)
    close(a, b)
    if scale != 1.0:   # the scale matters: the same noise at scale 1 gives another sample
        one = run(noise_scaled(setup["flow"], 1.0), stock("euler"), setup["cond"], setup["noise"], zeros, sigmas)
        assert (one - b).abs().max() > 0.1 * b.abs().max()


def test_img2img_with_scaled_noise_follows_noise_scaling(setup):
    """denoise < 1 from a non-empty latent: the start mixes latent and scaled noise as stock does."""
    model = noise_scaled(setup["flow"], 8.0)
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    sigmas = sigmas_of(model, steps=8)[-4:]
    close(run(model, ours("dpmpp_1"), setup["cond"], setup["noise"], latent, sigmas),
          run(model, stock("euler"), setup["cond"], setup["noise"], latent, sigmas))


def test_adjoint_sampler_starts_from_the_stock_sample_with_scaled_noise(setup):
    """The optimiser's first iterate is ComfyUI's euler sample: its loss against it is round-off."""
    model = noise_scaled(setup["flow"], 8.0)
    losses = pack_submodule("adjoint.losses")
    node = pack_submodule("nodes.adjoint_sampler").AdjointSampler
    import comfy.sample
    import nodes
    with torch.inference_mode():
        empty = {"samples": torch.zeros(1, 4, 8, 8)}
        target = nodes.common_ksampler(model, 11, STEPS, 1.0, "euler", "simple", setup["cond"], setup["cond"],
                                       empty)[0]["samples"]
        out = node.execute(model=model, positive=setup["cond"], negative=setup["cond"], latent_image=empty,
                           loss=losses.LatentTarget(target), seed=11, steps=STEPS, cfg=1.0, scheduler="simple",
                           solver="dpmpp_1", gradient="exact", adjoint_steps=0, optimize="noise", iterations=1,
                           learning_rate=0.01, renormalize_noise=True, max_grad_norm=0.0,
                           early_stop_patience=0, denoise=1.0)
    first = out.ui["adjoint_guidance_loss"][0]["losses"][0]
    assert first < 1e-10 * float(target.square().mean()), first


def _zero_x0_recorder(model, states):
    """A clone whose x0 prediction is 0·x (keeps the graph), recording each state x it is given."""
    m = model.clone()

    def wrapper(apply_model, args):
        x = args["input"]
        states.append((x.detach().clone(), float(args["timestep"].flatten()[0])))
        return x * 0.0

    m.set_model_unet_function_wrapper(wrapper)
    return m


@pytest.mark.parametrize("who", ["stock dpmpp_2m_sde", "Adjoint Solver", "Adjoint Sampler"])
def test_sde_noise_is_injected_at_the_models_noise_scale(setup, who):
    """x0 ≡ 0: the trajectory is pure noise, each state must have std s·σ (stock's rule too)."""
    scale = 8.0
    states = []
    model = _zero_x0_recorder(noise_scaled(setup["flow"], scale), states)
    noise = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    zeros = torch.zeros_like(noise)
    sigmas = sigmas_of(model, steps=6)
    if who == "Adjoint Sampler":
        losses = pack_submodule("adjoint.losses")
        node = pack_submodule("nodes.adjoint_sampler").AdjointSampler
        with torch.inference_mode():
            node.execute(model=model, positive=setup["cond"], negative=setup["cond"], latent_image={"samples": zeros},
                         loss=losses.LatentTarget(zeros), seed=2, steps=6, cfg=1.0, scheduler="simple",
                         solver="sde_dpmpp_1", gradient="exact", adjoint_steps=0, optimize="noise", iterations=1,
                         learning_rate=0.01, renormalize_noise=False, max_grad_norm=0.0,
                         early_stop_patience=0, denoise=1.0)
        states = states[:6]   # the first forward pass
    else:
        run(model, stock("dpmpp_2m_sde") if who.startswith("stock") else ours("sde_dpmpp_1"),
            setup["cond"], noise, zeros, sigmas)
    assert len(states) >= 6
    for x, sigma in states:   # apply_model's "timestep" is σ
        ratio = float(x.std()) / (scale * sigma)
        assert abs(ratio - 1.0) < 0.05, (who, sigma, ratio)


# -- image-to-image flow ------------------------------------------------------------------------
@pytest.mark.parametrize("solver, stock_name", [("dpmpp_1", "euler"), ("dpmpp_2m", "dpmpp_2m")])
def test_img_to_img_flow_follows_the_models_sampling(setup, solver, stock_name):
    model = img_to_img_flow(setup["base"])
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    sigmas = sigmas_of(model, "karras")
    assert float(sigmas[0]) > 1.0     # the discrete grid: σ above 1, no flow α = 1 − σ there
    a = run(model, ours(solver), setup["cond"], setup["noise"], latent, sigmas)
    b = run(model, stock(stock_name), setup["cond"], setup["noise"], latent, sigmas)
    close(a, b)
    # the noise plays no part, and the result is 1 − x (not x)
    close(run(model, ours(solver), setup["cond"], torch.zeros_like(latent), latent, sigmas), a, rel=0)


def test_adjoint_sampler_refuses_img_to_img_flow_before_any_work(setup):
    calls = []
    model = img_to_img_flow(setup["base"]).clone()
    model.set_model_unet_function_wrapper(lambda apply_model, args: calls.append(1) or apply_model(
        args["input"], args["timestep"], **args["c"]))
    losses = pack_submodule("adjoint.losses")
    node = pack_submodule("nodes.adjoint_sampler").AdjointSampler
    with torch.inference_mode(), pytest.raises(ValueError, match=(
            r"^Adjoint Sampler: model: its sampling \(IMG_TO_IMG_FLOW\) starts from the input latent "
            r"itself and ignores the noise and transforms the sampled result afterwards .*; the Adjoint "
            r"Sampler cannot optimise such a model. Sample it with a stock sampler, or with Adjoint "
            r"Solver \(Sampler\)")):
        node.execute(model=model, positive=setup["cond"], negative=setup["cond"],
                     latent_image={"samples": torch.randn(1, 4, 8, 8)}, loss=losses.LatentTarget(torch.zeros(1, 4, 8, 8)),
                     seed=1, steps=STEPS, cfg=1.0, scheduler="karras", solver="dpmpp_1", gradient="exact",
                     adjoint_steps=0, optimize="prompt", iterations=1, learning_rate=0.01,
                     renormalize_noise=True, max_grad_norm=0.0, early_stop_patience=0, denoise=1.0)
    assert calls == []


def test_sampling_kinds_get_their_alpha(setup, comfy_nodes):
    """α from the model's own noise_scaling: 1 − σ for flow, 1 for EPS; runs on every version."""
    s = pack_submodule("nodes.adjoint_sampling")
    assert s.model_alpha(setup["flow"].get_model_object("model_sampling")) == "flow"
    assert s.model_alpha(setup["base"].get_model_object("model_sampling")) is None
    assert s.sampling_name(setup["flow"].get_model_object("model_sampling")) == "CONST"
    assert s.sampling_name(setup["base"].get_model_object("model_sampling")) == "EPS"

    class Odd:   # a sampling of some other pack that mixes the latent in another way
        def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
            return sigma * noise + 0.5 * latent_image

    with pytest.raises(ValueError, match=r"^Adjoint Sampler: model: the model's sampling \(Odd\) mixes the latent "
                                         r"with weight 0\.5 at sigma 0\.25, neither 1"):
        s.model_alpha(Odd(), "Adjoint Sampler: model")
