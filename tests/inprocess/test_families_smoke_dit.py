"""The tiny DiT families (families_dit.py) are the real ComfyUI classes and sample with the
stock sampler: right BaseModel subclass, config class, model sampling and latent format;
their conditioning reaches the model through the real extra_conds; a 4-step euler/simple
comfy.sample.sample gives a finite latent of the family's shape that depends on the prompt;
the float64 build holds the float32 weights and samples to the same result.

Build and sampling times are printed (run with -s to see them).
"""
import subprocess
import sys
import time

import pytest
import torch

import families_dit
from comfy_harness import REPO
from model_families import family_or_skip

NAMES = list(families_dit.NAMES)

# what each family must be: supported_models class, model_base class, model sampling
# (sampling class name, shift), latent format class, and the keys extra_conds must give
EXPECTED = {
    "sd35": ("SD3", "SD3", ("ModelSamplingDiscreteFlow", 3.0), "SD3", {"c_crossattn", "y"}),
    "flux1": ("Flux", "Flux", ("ModelSamplingFlux", 1.15), "Flux", {"c_crossattn", "y", "guidance"}),
    "flux2": ("Flux2", "Flux2", ("ModelSamplingFlux", 2.02), "Flux2", {"c_crossattn", "guidance"}),
    "chroma": ("Chroma", "Chroma", ("ModelSamplingFlux", 1.15), "Flux", {"c_crossattn", "guidance"}),
    "qwen_image": ("QwenImage", "QwenImage", ("ModelSamplingFlux", 1.15), "Wan21", {"c_crossattn"}),
    "z_image": ("ZImage", "Lumina2", ("ModelSamplingDiscreteFlow", 3.0), "Flux", {"c_crossattn", "num_tokens"}),
}


def test_every_dit_family_is_checked():
    assert sorted(NAMES) == sorted(EXPECTED)


def test_module_import_does_not_import_comfy():
    code = ("import sys; sys.path[:0] = [sys.argv[1]]; import families_dit, model_families; "
            "assert not [m for m in sys.modules if m == 'comfy' or m.startswith('comfy.')], 'comfy imported'; "
            "assert set(families_dit.NAMES) <= set(model_families.FAMILIES)")
    subprocess.run([sys.executable, "-c", code, str(REPO / "tests")], check=True, timeout=120)


def _sample(fam, patcher, positive, negative, steps=4):
    import comfy.sample
    latent = torch.zeros(1, *fam.latent_shape)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    return comfy.sample.sample(patcher, noise, steps, fam.cfg, "euler", "simple", positive, negative,
                               latent, disable_pbar=True, seed=0)


@pytest.mark.parametrize("name", NAMES)
def test_family_builds_real_classes_and_samples(name, comfy_nodes):
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_sampling
    import comfy.supported_models
    fam = family_or_skip(name)
    config_cls, model_cls, (sampling_cls, shift), latent_cls, cond_keys = EXPECTED[name]

    patcher = fam.build()
    build_s = families_dit.BUILD_SECONDS[(name, torch.float32)]
    model = patcher.model

    assert type(model) is getattr(comfy.model_base, model_cls)
    assert type(model.model_config) is getattr(comfy.supported_models, config_cls)
    assert isinstance(model.model_sampling, comfy.model_sampling.CONST)
    assert isinstance(model.model_sampling, getattr(comfy.model_sampling, sampling_cls))
    assert model.model_sampling.shift == pytest.approx(shift)
    assert type(model.latent_format) is getattr(comfy.latent_formats, latent_cls)
    assert model.latent_format.latent_channels == fam.latent_shape[0]
    assert getattr(model.latent_format, "latent_dimensions", 2) == len(fam.latent_shape) - 1
    params = list(model.diffusion_model.parameters())
    assert all(p.is_inference() and p.dtype == torch.float32 for p in params)
    assert model.diffusion_model.dtype == torch.float32

    # the conditioning: real keys and shapes, as CLIPTextEncode (+ FluxGuidance) leaves it
    positive, other, negative = fam.conditioning(1), fam.conditioning(2), fam.conditioning(3)
    (cross_attn, extras), = positive
    assert cross_attn.shape == (1, fam.notes["tokens"], fam.notes["context_dim"]) and cross_attn.is_inference()
    assert "pooled_output" in extras
    if fam.notes["pooled_dim"] is None:
        assert extras["pooled_output"] is None
    else:
        assert extras["pooled_output"].shape == (1, fam.notes["pooled_dim"])
    assert torch.equal(fam.conditioning(1)[0][0], cross_attn) and not torch.equal(other[0][0], cross_attn)
    assert fam.conditioning(1, batch=2)[0][0].shape[0] == 2

    noise = torch.zeros(1, *fam.latent_shape)
    conds = model.extra_conds(cross_attn=cross_attn, device=torch.device("cpu"), noise=noise,
                              latent_image=noise, **extras)
    assert cond_keys <= set(conds), sorted(conds)
    if "guidance" in extras:
        assert conds["guidance"].cond.tolist() == [extras["guidance"]]

    t0 = time.perf_counter()
    out = _sample(fam, patcher, positive, negative)
    sample_s = time.perf_counter() - t0
    out_other = _sample(fam, patcher, other, negative)

    assert out.shape == (1, *fam.latent_shape)
    assert torch.isfinite(out).all() and torch.isfinite(out_other).all()
    assert 0.05 < out.std().item() < 100
    assert (out - out_other).abs().max().item() > 1e-4, "the prompt does not reach the model"

    t0 = time.perf_counter()
    fam.build()
    cached_s = time.perf_counter() - t0
    print(f"\n{name}: {sum(p.numel() for p in params):,} parameters, build {build_s:.3f} s "
          f"(cached {cached_s * 1e3:.2f} ms), 4-step sample {sample_s:.3f} s")


@pytest.mark.parametrize("name", NAMES)
def test_float64_build_holds_the_float32_weights(name, comfy_nodes, monkeypatch):
    import comfy.model_management
    fam = family_or_skip(name)
    p32, p64 = fam.build(), fam.build(torch.float64)
    assert p64.model.diffusion_model.dtype == torch.float64
    w32 = dict(p32.model.diffusion_model.state_dict())
    w64 = dict(p64.model.diffusion_model.state_dict())
    assert w32.keys() == w64.keys()
    for k, v in w64.items():
        if v.is_floating_point():
            assert v.dtype == torch.float64 and v.is_inference(), k
            assert torch.equal(v, w32[k].double()), k

    # ComfyUI 0.33 applies RoPE through comfy_kitchen ops that refuse float64 outside
    # training mode (see families_dit): float64 runs set the flag ComfyUI's trainer sets.
    if fam.notes["kitchen_rope"] and hasattr(comfy.model_management, "in_training"):
        monkeypatch.setattr(comfy.model_management, "in_training", True)
    positive, negative = fam.conditioning(1), fam.conditioning(3)
    out32 = _sample(fam, p32, positive, negative, steps=2)
    out64 = _sample(fam, p64, positive, negative, steps=2)
    assert torch.isfinite(out64).all()
    assert torch.allclose(out64.double(), out32.double(), atol=1e-4, rtol=1e-4)
