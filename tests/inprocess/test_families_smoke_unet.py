"""Smoke test of the tiny UNet families (tests/families_unet.py) on the real ComfyUI.

For each family: it is the family's real BaseModel subclass with the right model type,
model sampling and latent format, its weights are inference tensors (as loaders leave
them) and it builds in well under a second; a stock KSampler run (comfy.sample.sample,
euler / karras, 4 steps, the family's cfg, under inference mode as nodes run) gives a
finite latent of the right shape that changes with the positive conditioning, through
each conditioning entry the model reads (SDXL: pooled_output and the size vector);
the float64 build denoises in float64 and agrees with the float32 build.
"""
import math
import time

import pytest
import torch

from model_families import family_or_skip

NAMES = ("sd15", "sd2_v", "sdxl", "playground_v25")

# name -> (model_base class, ModelType, model_sampling prediction class, sampling class, latent format)
EXPECTED = {
    "sd15": ("BaseModel", "EPS", "EPS", "ModelSamplingDiscrete", "SD15"),
    "sd2_v": ("BaseModel", "V_PREDICTION", "V_PREDICTION", "ModelSamplingDiscrete", "SD15"),
    "sdxl": ("SDXL", "EPS", "EPS", "ModelSamplingDiscrete", "SDXL"),
    "playground_v25": ("SDXL", "EDM", "EDM", "ModelSamplingContinuousEDM", "SDXL_Playground_2_5"),
}
PREDICTIONS = ("EPS", "V_PREDICTION", "EDM")


def ksample(patcher, fam, positive, negative, seed=0):
    """What the stock KSampler node does with an empty latent (nodes.common_ksampler)."""
    import comfy.sample
    with torch.inference_mode():
        latent = torch.zeros(1, *fam.latent_shape)
        noise = comfy.sample.prepare_noise(latent, seed)
        return comfy.sample.sample(patcher, noise, 4, fam.cfg, "euler", "karras", positive, negative,
                                   latent, seed=seed, disable_pbar=True)


def denoise_in_guider(patcher, fam, positive, negative, x, sigma_index=1):
    """One CFG-guided denoised output D(x, σ) from inside a real CFGGuider.sample."""
    import comfy.samplers

    class Probe(comfy.samplers.Sampler):
        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
                   denoise_mask=None, disable_pbar=False):
            sigma = sigmas[sigma_index].to(x.dtype)
            self.sigma = float(sigma)
            self.out = model_wrap(x, sigma * x.new_ones(x.shape[0]), **extra_args)
            return latent_image

    with torch.inference_mode():
        latent = torch.zeros(1, *fam.latent_shape)
        sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "karras", 4)
        guider = comfy.samplers.CFGGuider(patcher)
        guider.set_conds(positive, negative)
        guider.set_cfg(fam.cfg)
        probe = Probe()
        guider.sample(torch.zeros_like(latent), latent, probe, sigmas, seed=0)
    return probe.out, probe.sigma


@pytest.mark.parametrize("name", NAMES)
def test_family_is_the_real_model(comfy_nodes, name):
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_sampling
    import families_unet
    fam = family_or_skip(name)
    families_unet._BUILT.pop((name, torch.float32), None)     # time a build from nothing
    families_unet._WEIGHTS.pop(name, None)
    t0 = time.perf_counter()
    patcher = fam.build()
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"{name}: build took {elapsed:.2f} s"
    base, model_type, prediction, sampling, latent_format = EXPECTED[name]
    model = patcher.model
    assert type(model) is getattr(comfy.model_base, base)
    assert model.model_type == getattr(comfy.model_base.ModelType, model_type)
    ms = model.model_sampling
    assert isinstance(ms, getattr(comfy.model_sampling, sampling))
    assert isinstance(ms, getattr(comfy.model_sampling, prediction))
    for other in PREDICTIONS[PREDICTIONS.index(prediction) + 1:]:   # EDM subclasses V_PREDICTION subclasses EPS
        assert not isinstance(ms, getattr(comfy.model_sampling, other)), f"{name}: model sampling is also {other}"
    assert type(model.latent_format) is getattr(comfy.latent_formats, latent_format)
    if name == "playground_v25":
        assert ms.sigma_data == 0.5
        assert math.isclose(float(ms.sigma_min), 0.002, rel_tol=1e-5)
        assert math.isclose(float(ms.sigma_max), 80.0, rel_tol=1e-5)
        assert torch.is_tensor(model.latent_format.latents_mean) and torch.is_tensor(model.latent_format.latents_std)
    params = list(model.diffusion_model.parameters())
    assert all(p.is_inference() for p in params)
    assert all(p.dtype == torch.float32 for p in params)
    assert model.get_dtype() == torch.float32 and model.manual_cast_dtype is None
    # build() hands out clones of one cached model
    again = fam.build()
    assert again is not patcher and again.model is patcher.model
    print(f"\n{name}: {type(model).__name__} {model.model_type.name}, "
          f"{sum(p.numel() for p in params) / 1e6:.2f} M parameters, built in {elapsed * 1000:.0f} ms")


@pytest.mark.parametrize("name", NAMES)
def test_conditioning_has_the_real_keys(comfy_nodes, name):
    fam = family_or_skip(name)
    patcher = fam.build()
    cond = fam.conditioning(seed=1, batch=2)
    assert len(cond) == 1 and len(cond[0]) == 2
    tokens, extras = cond[0]
    assert tokens.shape == (2, 77, fam.notes["context_dim"]) and tokens.is_inference()
    assert extras["pooled_output"].shape == (2, fam.notes["pooled_dim"])
    want = {"pooled_output"}
    if name == "sdxl":
        want |= {"width", "height", "crop_w", "crop_h", "target_width", "target_height"}
    assert set(extras) == want
    assert torch.equal(fam.conditioning(seed=1)[0][0], tokens[:1])        # seeded
    assert not torch.equal(fam.conditioning(seed=2)[0][0], tokens[:1])
    # the model's own extra_conds accepts it (SDXL: y = pooled + size embeddings, 2816 wide)
    model = patcher.model
    out = model.extra_conds(cross_attn=tokens, device=torch.device("cpu"), noise=torch.zeros(2, *fam.latent_shape),
                            **extras)
    assert out["c_crossattn"].cond.shape == tokens.shape
    if name in ("sdxl", "playground_v25"):
        assert out["y"].cond.shape == (2, 2816)
    else:
        assert "y" not in out


@pytest.mark.parametrize("name", NAMES)
def test_stock_ksampler_runs_and_sees_the_conditioning(comfy_nodes, name):
    fam = family_or_skip(name)
    patcher = fam.build()
    positive, other, negative = fam.conditioning(1), fam.conditioning(3), fam.conditioning(2)
    t0 = time.perf_counter()
    out = ksample(patcher, fam, positive, negative)
    elapsed = time.perf_counter() - t0
    assert out.shape == (1, *fam.latent_shape)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, ksample(patcher, fam, other, negative)), "the positive prompt does not reach the model"
    assert torch.equal(out, ksample(patcher, fam, positive, negative)), "not deterministic"

    def with_extras(**changes):
        tokens, extras = positive[0]
        return [[tokens, {**extras, **changes}]]

    # every entry the model reads changes the result
    pooled = other[0][1]["pooled_output"]
    assert ("pooled_output" in fam.notes["unread_keys"]) == (name in ("sd15", "sd2_v"))
    if "pooled_output" in fam.notes["unread_keys"]:   # SD1/SD2 UNets have no adm input: carried, unused
        assert torch.equal(out, ksample(patcher, fam, with_extras(pooled_output=pooled), negative))
    else:
        assert not torch.equal(out, ksample(patcher, fam, with_extras(pooled_output=pooled), negative)), \
            "pooled_output does not reach the model"
    if name == "sdxl":
        for key, value in (("width", 832), ("height", 1216), ("crop_w", 64), ("crop_h", 32),
                           ("target_width", 768), ("target_height", 640)):
            assert not torch.equal(out, ksample(patcher, fam, with_extras(**{key: value}), negative)), \
                f"{key} does not reach the model"
    print(f"\n{name}: 4-step KSampler in {elapsed * 1000:.0f} ms, latent std {float(out.std()):.3g}")


@pytest.mark.parametrize("name", NAMES)
def test_float64_build_denoises_in_float64(comfy_nodes, name):
    fam = family_or_skip(name)
    t0 = time.perf_counter()
    p64 = fam.build(torch.float64)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"{name}: float64 build took {elapsed:.2f} s"
    model = p64.model
    assert model.get_dtype() == torch.float64 and model.diffusion_model.dtype == torch.float64
    assert model.manual_cast_dtype is None
    params = list(model.diffusion_model.parameters())
    assert all(p.dtype == torch.float64 and p.is_inference() for p in params)
    # same weights as the float32 build
    p32 = fam.build()
    w32 = dict(p32.model.diffusion_model.named_parameters())
    assert all(torch.equal(p.float(), w32[k]) for k, p in model.diffusion_model.named_parameters())

    positive, negative = fam.conditioning(1, dtype=torch.float64), fam.conditioning(2, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, *fam.latent_shape, generator=g, dtype=torch.float64) * 3.0
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    d64, sigma = denoise_in_guider(p64, fam, positive, negative, x)
    assert d64.dtype == torch.float64 and torch.isfinite(d64).all()
    d32, _ = denoise_in_guider(p32, fam, positive, negative, x)
    assert torch.allclose(d64, d32.double(), rtol=1e-4, atol=1e-4 * float(d64.abs().max()))
    # float64 all the way through: central differences at two step sizes agree to ~1e-8
    # (float32 rounding anywhere would leave ~1e-3 noise in them)
    fd = []
    for h in (1e-4, 1e-5):
        plus, _ = denoise_in_guider(p64, fam, positive, negative, x + h * v)
        minus, _ = denoise_in_guider(p64, fam, positive, negative, x - h * v)
        fd.append((plus - minus) / (2 * h))
    rel = float((fd[0] - fd[1]).norm() / fd[1].norm())
    assert rel < 1e-6, f"{name}: float64 central differences disagree by {rel:.1e}"
