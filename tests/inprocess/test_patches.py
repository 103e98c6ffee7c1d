"""Patches users stack on a model change our sample and our gradient exactly as they change
the stock sampler's.

For each patch, on SD1.5 and on one flow family (SD3.5; Flux.1 with AG_PATCHES_FLOW_FAMILY=flux1),
the tiny models of tests/model_families.py (SD1.5 falls back to the tiny 32-channel UNet):
(a) iteration 0 against the stock sampler: Adjoint Solver (Sampler) `dpmpp_1` on the patched
    model gives ComfyUI's `euler` sample on the same model, noise and conditioning to
    round-off (and the patch does change the sample, so the check means something);
(b) the gradient through ComfyUI's real guider on the float64 patched model equals float64
    central finite differences (noise and conditioning, directional, ~1e-6 relative).

Patches: LoRA (a tiny LoRA file for the tiny model, through the real LoraLoaderModelOnly and
LoraLoader nodes; strength 0 must give the unpatched sample and gradient exactly), ControlNet
(SD1.5: ComfyUI's cldm ControlNet class in its controlnet wrapper; SD3.5: a Stability-format
SD3.5 ControlNet through ControlNetLoader, its hint encoded by a tiny TAESD3 from VAELoader;
both applied by ControlNetApplyAdvanced over 20-80 %), the comfy_extras model patches users
chain (FreeU_V2, PerturbedAttentionGuidance, SelfAttentionGuidance, RescaleCFG,
ModelSamplingDiscrete v-prediction, ModelSamplingSD3, ModelSamplingFlux), conditioning with
areas, masks, strengths and timestep ranges on the entries path, CFG 1, a negative prompt that
is itself a schedule, and the Adjoint Sampler node on a stack of them.

Gradients run as the Adjoint Sampler runs them (inference_tensors.run_protected): FreeU_V2
scales a slice of a saved activation in place, and a ControlNet holds inference weights outside
the model and scales and adds its outputs in place; GraphSafety reruns such a step with saved
activations snapshotted and inference arguments aliased, and the finite differences show the
result is the exact gradient (an unguarded in-place write gave a silently wrong one).
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from comfy_harness import load_comfy_in_process, pack_submodule, tiny_unet32_patcher
from model_families import all_family_names
from guider_harness import float64_everywhere, gradient_checks, run_in_guider, two_keyframes

STEPS = 4
FD_REL = 1e-6          # finite differences vs our gradient, float64
SAMPLE_REL = 1e-5      # our dpmpp_1 vs ComfyUI's euler, float32, relative to the sample's scale
CONTROL_RANGE = (0.2, 0.8)


# -- stock nodes ------------------------------------------------------------------------------
def node(name, *args, **kwargs):
    """A stock (or our) node by its id, run as the server runs it (inference mode); its outputs."""
    nodes = load_comfy_in_process()
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    with torch.inference_mode():
        if hasattr(cls, "define_schema"):       # V3 node
            return tuple(cls.execute(*args, **kwargs).args)
        out = getattr(cls(), cls.FUNCTION)(*args, **kwargs)
    return tuple(out["result"] if isinstance(out, dict) else out)


# -- the models -----------------------------------------------------------------------------
@dataclass
class Subject:
    name: str
    f32: object                  # ModelPatcher, float32, weights as a loader leaves them
    f64: object                  # the same weights in float64 (for finite differences)
    conditioning: Callable       # conditioning(seed) -> CONDITIONING
    latent_shape: tuple
    cfg: float

    @property
    def unet(self) -> bool:
        return hasattr(self.f32.model.diffusion_model, "input_blocks")


def _tiny_sd15() -> Subject:
    def build(dtype):
        with torch.inference_mode():
            patcher = tiny_unet32_patcher()
            if dtype != torch.float32:
                patcher.model.diffusion_model.to(dtype)
                patcher.model.diffusion_model.dtype = dtype
                patcher.model.to(dtype)
        return patcher

    def conditioning(seed, batch=1):
        with torch.inference_mode():
            return [[torch.randn(batch, 77, 768, generator=torch.Generator().manual_seed(seed)), {}]]
    return Subject("sd15 (tiny unet32)", build(torch.float32), build(torch.float64), conditioning,
                   (4, 8, 8), 3.0)


def _from_family(fam) -> Subject:
    return Subject(fam.name, fam.build(), fam.build(torch.float64), fam.conditioning, tuple(fam.latent_shape),
                   fam.cfg)


def _registered(name):
    import model_families
    model_families._load_builders()
    return model_families.FAMILIES.get(name)


# The flow family: SD3.5 first, as a ControlNet is built for it here (the Stability SD3.5 format);
# AG_PATCHES_FLOW_FAMILY=flux1 runs the same tests on Flux.1 (its ControlNet test skips).
FLOW_FAMILIES = tuple(dict.fromkeys([os.environ.get("AG_PATCHES_FLOW_FAMILY", "sd35"), "sd35", "flux1"]))


@functools.lru_cache(maxsize=None)
def subject(kind: str) -> Subject:
    from model_families import family_or_skip
    load_comfy_in_process()
    if kind == "sd15":
        return _from_family(family_or_skip("sd15")) if _registered("sd15") else _tiny_sd15()
    for name in FLOW_FAMILIES:
        if _registered(name):
            return _from_family(family_or_skip(name))
    pytest.skip("no flow family (flux1 / sd35) has a builder in tests/model_families.py yet")


@pytest.fixture(scope="module", params=["sd15", "flow"])
def subj(request, comfy_nodes):
    return subject(request.param)


# -- sampling helpers ---------------------------------------------------------------------------
def model_alpha(patcher):
    return pack_submodule("nodes.adjoint_sampling").model_alpha(patcher.get_model_object("model_sampling"))


def gradient_alpha(patcher):
    """The α the Adjoint Sampler's default solver (dpmpp_2m) integrates in for this model."""
    sampling = pack_submodule("nodes.adjoint_sampling")
    ms = patcher.get_model_object("model_sampling")
    if hasattr(sampling, "solver_alpha"):
        return sampling.solver_alpha("dpmpp_2m", ms, "model")
    return sampling.model_alpha(ms)


def scheduler_for(patcher) -> str:
    return "simple" if model_alpha(patcher) == "flow" else "karras"


def sigmas_for(patcher):
    import comfy.samplers
    return comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), scheduler_for(patcher),
                                           STEPS).cpu()


def draw_noise(shape, seed=3):
    with torch.inference_mode():
        return torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))


def sample_with(patcher, sampler, positive, negative, cfg, shape, seed=3):
    import comfy.sample
    with torch.inference_mode():
        return comfy.sample.sample_custom(patcher, draw_noise(shape, seed), cfg, sampler, sigmas_for(patcher),
                                          positive, negative, torch.zeros(1, *shape), seed=seed)


def ours_and_stock(patcher, positive, negative, cfg, shape):
    """(Adjoint Solver (Sampler) dpmpp_1 sample, ComfyUI euler sample) on the same everything."""
    import comfy.samplers
    s = pack_submodule("nodes.adjoint_sampling")
    ours = s.ScheduledSolverSampler(s.SolverSettings(solver="dpmpp_1"))
    return (sample_with(patcher, ours, positive, negative, cfg, shape),
            sample_with(patcher, comfy.samplers.sampler_object("euler"), positive, negative, cfg, shape))


def assert_close(a, b, rel=SAMPLE_REL, what="sample"):
    scale = float(b.abs().max())
    err = float((a - b).abs().max())
    assert torch.isfinite(a).all() and err <= rel * scale, f"{what}: max |ours - stock| {err:.3g} vs scale {scale:.3g}"


def assert_differs(a, b, what):
    diff = float((a - b).abs().max())
    assert diff > 1e-3 * float(b.abs().max()), f"{what}: the patch does not change the sample ({diff:.3g})"


def preloaded(patcher):
    """Load (and so patch) `patcher`'s model now, outside guider_harness.float64_everywhere():
    inside it `weight.to(torch.float32, copy=True)` returns the float64 weight itself, and
    ComfyUI's LoRA patching (that copy, then `weight += ...`) would write the LoRA into the
    unpatched model's own weights (and its backup) for good. Loaded here, the guider's own
    load finds the weights already patched and leaves them."""
    import comfy.model_management
    with torch.inference_mode():
        comfy.model_management.load_models_gpu([patcher])
    return patcher


def check_gradients(patcher, positive, negative, shape, cfg, min_noise=1e-3):
    """guider_harness.gradient_checks (noise and both keyframes of a two-keyframe schedule,
    through the real guider in float64) against finite differences; returns the GraphSafety
    remedies the run needed."""
    out = gradient_checks(preloaded(patcher), positive, negative, shape, steps=STEPS, cfg=cfg,
                          scheduler=scheduler_for(patcher), alpha=gradient_alpha(patcher), with_noise=True)
    assert_fd(out[0], min_noise)
    return list(out[2]) if len(out) > 2 else []


def assert_fd(checks, min_noise=1e-3):
    """Every directional derivative equals its central difference to FD_REL, beyond the
    difference's own round-off bound (4 ε (|L+| + |L-|) / 2h, from gradient_checks). The
    noise's derivative is never 0; a tensor the model does not read has 0 for both."""
    for name, fd, analytic, *bound in checks:
        allowed = FD_REL * abs(fd) + (bound[0] if bound else 0.0)
        assert math.isfinite(analytic), f"{name}: gradient {analytic!r}"
        assert abs(fd - analytic) <= allowed, \
            f"{name}: finite difference {fd!r} vs adjoint {analytic!r} (allowed {allowed:.3g})"
    assert abs(checks[0][2]) > min_noise, f"the noise gradient vanishes: {checks[0]!r}"


def protected(model_wrap, run):
    """run() as the Adjoint Sampler runs its gradients: inside trainable_view, escalated by
    GraphSafety when autograd reports an in-place write or a saved inference tensor."""
    inf = pack_submodule("nodes.inference_tensors")
    if hasattr(inf, "run_protected"):
        return inf.run_protected(model_wrap.inner_model, inf.GraphSafety(), run)
    with inf.trainable_view(model_wrap.inner_model):
        return run()


def exact_gradient(patcher, positive, negative, shape, cfg):
    """The same gradient gradient_checks takes (same noise, target, keyframes, guider), without
    the finite differences: (x0, grad noise, grad keyframes) as tensors, for exact comparisons."""
    adjoint = pack_submodule("adjoint")
    gd = pack_submodule("nodes.guider_denoiser")
    inf = pack_submodule("nodes.inference_tensors")
    timeline = adjoint.Timeline((adjoint.Position(0.0), adjoint.Position(0.5)), "hold")
    target = torch.randn(1, *shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    alpha = gradient_alpha(patcher)

    def body(model_wrap, sigmas, extra_args, noise, latent):
        ms = model_wrap.inner_model.model_sampling
        scale = float(ms.noise_scaling(sigmas[0], torch.ones(1), torch.zeros(1), True))

        def run():
            den = gd.GuiderDenoiser(model_wrap, extra_args, noise, latent, None, scheduled=True)
            kfs = [{k: inf.to_normal(v).double() for k, v in kf.items()} for kf in two_keyframes(positive)]
            res = adjoint.gradient(den, inf.to_normal(noise) * scale, inf.to_normal(sigmas),
                                   adjoint.ScheduledConditioning(kfs, timeline),
                                   lambda x0: (x0 - target).square().mean(dim=tuple(range(1, x0.ndim))),
                                   alpha=alpha)
            return res.x0, res.grad_x_init, res.grad_keyframes
        return protected(model_wrap, run)

    preloaded(patcher)
    with float64_everywhere():
        return run_in_guider(patcher, positive, negative, body, shape, steps=STEPS, cfg=cfg,
                             scheduler=scheduler_for(patcher))


def assert_same_gradient(a, b, what):
    x0_a, gx_a, kf_a = a
    x0_b, gx_b, kf_b = b
    assert torch.equal(x0_a, x0_b) and torch.equal(gx_a, gx_b), f"{what}: sample or noise gradient differs"
    for k, (ga, gb) in enumerate(zip(kf_a, kf_b)):
        assert sorted(ga) == sorted(gb) and all(torch.equal(ga[key], gb[key]) for key in ga), \
            f"{what}: keyframe {k} gradient differs"


def prompt(kind: str, seed: int):
    """One encoded prompt of the subject, float32 CONDITIONING as the text encode nodes give it.
    A UNet without an adm input (SD1.5) never reads CLIPTextEncode's pooled_output: it is left
    out, so the finite differences are not spent on a tensor whose gradient is 0 (a DiT may read
    it without an adm input: Flux's vector input)."""
    return subject_prompt(subject(kind), seed)


def subject_prompt(s: Subject, seed: int):
    """prompt() for any Subject (test_controlnets.py's families too)."""
    c = s.conditioning(seed)
    if s.unet and not s.f32.model.adm_channels:
        c = [[t, {k: v for k, v in o.items() if k != "pooled_output"}] for t, o in c]
    return c


@functools.lru_cache(maxsize=None)
def conds(kind: str):
    """(positive, negative) of the subject."""
    return prompt(kind, 1), prompt(kind, 2)


@functools.lru_cache(maxsize=None)
def baseline(kind: str):
    """The unpatched model: (ours, stock) samples and our exact gradient."""
    s = subject(kind)
    pos, neg = conds(kind)
    ours, stock = ours_and_stock(s.f32, pos, neg, s.cfg, s.latent_shape)
    return ours, stock, exact_gradient(s.f64, pos, neg, s.latent_shape, s.cfg)


@functools.lru_cache(maxsize=None)
def unpatched_weights(kind: str):
    """The subject's float32 and float64 weights before any patch touched them."""
    s = subject(kind)
    return tuple({k: v.detach().clone() for k, v in preloaded(m).model.state_dict().items()}
                 for m in (s.f32, s.f64))


def assert_weights_restored(s: Subject, kind: str):
    """After patched clones ran, loading the unpatched model gives back exactly its weights."""
    for m, before in zip((s.f32, s.f64), unpatched_weights(kind)):
        now = preloaded(m).model.state_dict()
        changed = [k for k, v in before.items() if not torch.equal(now[k], v)]
        assert not changed, f"{len(changed)} weights of the unpatched model changed, e.g. {changed[:3]}"


def kind_of(s: Subject) -> str:
    return "sd15" if s is subject("sd15") else "flow"


# -- LoRA ---------------------------------------------------------------------------------------
RANK = 4


def lora_state_dict(patcher, seed=17) -> dict:
    """A tiny LoRA for the model, in the format users have for it: kohya `lora_unet_*` with
    lora_up/lora_down/alpha for a UNet, diffusers/PEFT `diffusion_model.*.lora_A/lora_B` for a
    DiT; keys taken from ComfyUI's own map (comfy.lora.model_lora_keys_unet)."""
    import comfy.lora
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    sd = patcher.model.state_dict()
    unet = hasattr(patcher.model.diffusion_model, "input_blocks")
    if unet:   # the diffusers-named kohya keys (one name per weight)
        names = sorted(k for k in key_map if k.startswith("lora_unet_")
                       and any(p in k for p in ("down_blocks", "up_blocks", "mid_block")))
    else:
        names = sorted(k for k in key_map if k.startswith("diffusion_model.") and key_map[k] == k + ".weight")
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in names:
        w = sd.get(key_map[name])
        if w is None or w.ndim not in (2, 4) or (not unet and w.ndim != 2):
            continue
        fan_in = w[0].numel()
        down = torch.randn(RANK, w.shape[1], *w.shape[2:], generator=g) / math.sqrt(fan_in)
        up = 0.2 * torch.randn(w.shape[0], RANK, *([1, 1] if w.ndim == 4 else []), generator=g) / math.sqrt(RANK)
        if unet:
            out[f"{name}.lora_down.weight"], out[f"{name}.lora_up.weight"] = down, up
            out[f"{name}.alpha"] = torch.tensor(float(RANK))
        else:
            out[f"{name}.lora_A.weight"], out[f"{name}.lora_B.weight"] = down, up
    assert out, "no LoRA keys for this model"
    return out


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, comfy_nodes):
    """A temp folder registered for ComfyUI's `loras`, `controlnet` and `vae_approx` models."""
    import folder_paths
    root = tmp_path_factory.mktemp("patch_models")
    for kind in ("loras", "controlnet", "vae_approx"):
        (root / kind).mkdir()
        folder_paths.add_model_folder_path(kind, str(root / kind))
    return root


def lora_file(model_folder, s: Subject) -> str:
    from safetensors.torch import save_file
    name = f"tiny-lora-{kind_of(s)}.safetensors"
    path = model_folder / "loras" / name
    if not path.exists():
        save_file(lora_state_dict(s.f32), str(path))
    return name


def apply_lora(loader, model, name, strength):
    if loader == "LoraLoaderModelOnly":
        return node(loader, model, name, strength)[0]
    return node(loader, model, None, name, strength, 1.0)[0]   # LoraLoader; no CLIP here


@functools.lru_cache(maxsize=None)
def lora_at_strength_1(kind: str, name: str):
    """LoraLoaderModelOnly at strength 1: (ours, stock) float32 samples; its gradient is checked
    against finite differences once, here."""
    s = subject(kind)
    pos, neg = conds(kind)
    on32, on64 = (apply_lora("LoraLoaderModelOnly", m, name, 1.0) for m in (s.f32, s.f64))
    ours, stock = ours_and_stock(on32, pos, neg, s.cfg, s.latent_shape)
    check_gradients(on64, pos, neg, s.latent_shape, s.cfg)
    return ours, stock


@pytest.mark.parametrize("loader", ["LoraLoaderModelOnly", "LoraLoader"])
def test_lora(subj, model_folder, loader):
    """Strength 0 gives exactly the unpatched sample and gradient; strength 1 another model,
    which our sample and gradient follow. LoraLoader at model strength 1 puts the same patches
    on the model as LoraLoaderModelOnly (its CLIP input is left out here): bit-identical samples
    show it, so its gradient is the one checked for LoraLoaderModelOnly."""
    kind = kind_of(subj)
    name = lora_file(model_folder, subj)
    pos, neg = conds(kind)
    unpatched_weights(kind)
    base_ours, base_stock, base_gradient = baseline(kind)

    off32, off64 = (apply_lora(loader, m, name, 0.0) for m in (subj.f32, subj.f64))
    ours0, stock0 = ours_and_stock(off32, pos, neg, subj.cfg, subj.latent_shape)
    assert torch.equal(ours0, base_ours) and torch.equal(stock0, base_stock)
    if loader == "LoraLoaderModelOnly":   # returns the model itself at strength 0
        assert off32 is subj.f32 and off64 is subj.f64
    else:                                 # LoraLoader adds the patches at strength 0 (CLIP strength 1)
        assert off64 is not subj.f64 and off64.patches
        assert_same_gradient(exact_gradient(off64, pos, neg, subj.latent_shape, subj.cfg), base_gradient,
                             f"{loader} strength 0")

    ours1, stock1 = lora_at_strength_1(kind, name)
    assert_differs(stock1, base_stock, "LoRA strength 1")
    assert_close(ours1, stock1)
    if loader == "LoraLoader":
        on32 = apply_lora(loader, subj.f32, name, 1.0)
        ours, stock = ours_and_stock(on32, pos, neg, subj.cfg, subj.latent_shape)
        assert torch.equal(ours, ours1) and torch.equal(stock, stock1)
    assert_weights_restored(subj, kind)



@pytest.mark.parametrize("family", all_family_names())
def test_lora_on_every_family(family, model_folder):
    """LoraLoaderModelOnly at strength 1 on each family's tiny model, with a LoRA in the format
    users have for it: the sample changes, ours equals ComfyUI's euler, and the gradient equals
    float64 finite differences."""
    from safetensors.torch import save_file
    from model_families import family_or_skip
    s = _from_family(family_or_skip(family))
    name = f"tiny-lora-family-{family}.safetensors"
    if not (model_folder / "loras" / name).exists():
        save_file(lora_state_dict(s.f32), str(model_folder / "loras" / name))
    pos, neg = s.conditioning(1), s.conditioning(2)
    on32, on64 = (apply_lora("LoraLoaderModelOnly", m, name, 1.0) for m in (s.f32, s.f64))
    ours, stock = ours_and_stock(on32, pos, neg, s.cfg, s.latent_shape)
    _, base_stock = ours_and_stock(s.f32, pos, neg, s.cfg, s.latent_shape)
    assert_differs(stock, base_stock, f"{family} LoRA strength 1")
    assert_close(ours, stock, what=f"{family} LoRA sample")
    to64 = lambda c: [[t.double(), {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point()
                                    else v for k, v in d.items()}] for t, d in c]
    out = gradient_checks(preloaded(on64), to64(pos), to64(neg), s.latent_shape, steps=STEPS, cfg=s.cfg,
                          scheduler=scheduler_for(on64), alpha=gradient_alpha(on64), with_noise=True)
    unread = family_or_skip(family).notes.get("unread_keys", ())
    for name, fd, analytic, bound in out[0]:
        if name.split()[-1] in unread:
            assert fd == 0.0 and analytic == 0.0, f"{family} {name}: an unread input has a gradient"
            continue
        assert analytic != 0.0 and abs(fd - analytic) <= FD_REL * abs(fd) + bound, \
            f"{family} {name}: finite difference {fd!r} vs adjoint {analytic!r}"

# -- ControlNet ---------------------------------------------------------------------------------
def sd15_controlnet_state_dict(patcher, seed=23) -> dict:
    """A tiny SD1.5 ControlNet of ComfyUI's own class (comfy.cldm.cldm.ControlNet) for the
    model's UNet config: the encoder copied from the UNet (as ControlNets are initialised),
    the hint block and the zero convolutions random (a trained ControlNet's are not zero)."""
    import comfy.cldm.cldm
    net = comfy.cldm.cldm.ControlNet(**controlnet_config(patcher, torch.float32))
    unet = patcher.model.diffusion_model.state_dict()
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in net.state_dict().items():
        if k in unet and unet[k].shape == v.shape:
            sd[k] = unet[k].detach().clone().float()
        elif v.ndim == 1:
            sd[k] = torch.zeros(v.shape) if k.endswith("bias") else torch.ones(v.shape)
        else:
            sd[k] = 0.5 * torch.randn(v.shape, generator=g) / math.sqrt(v[0].numel())
    return sd


def controlnet_config(patcher, dtype) -> dict:
    import comfy.ops
    config = dict(patcher.model.model_config.unet_config)
    config.pop("out_channels", None)
    config.update(hint_channels=3, dtype=dtype, device="cpu", operations=comfy.ops.disable_weight_init)
    return config


@functools.lru_cache(maxsize=None)
def controlnets(kind: str, model_folder):
    """(float32 CONTROL_NET, float64 CONTROL_NET, VAE or None) for the subject, weights loaded
    under inference mode as ControlNetLoader leaves them.

    SD1.5: ComfyUI's loader detects a UNet ControlNet's head layout only for the real widths
    (320 channels), so the 32-channel one is built with the class and wrapper ControlNetLoader
    uses (the server test loads a 320-channel one through ControlNetLoader itself).
    SD3.5: a Stability-format SD3.5 ControlNet (comfy.cldm.dit_embedder.ControlNetEmbedder,
    what ComfyUI builds for the official SD3.5 blur/canny/depth files) through the real
    ControlNetLoader; its hint is VAE-encoded, by a tiny TAESD3 through the real VAELoader."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management
    s = subject(kind)
    if s.unet:
        sd = sd15_controlnet_state_dict(s.f32)
        out = []
        for dtype in (torch.float32, torch.float64):
            with torch.inference_mode():
                net = comfy.cldm.cldm.ControlNet(**controlnet_config(s.f32, dtype))
                net.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True)
                out.append(comfy.controlnet.ControlNet(net, load_device=comfy.model_management.get_torch_device(),
                                                       manual_cast_dtype=None))
        return (*out, None)
    if type(s.f32.model).__name__ != "SD3":
        pytest.skip(f"no ControlNet built here for {s.name} (SD3.5's is)")
    from safetensors.torch import save_file
    name = "tiny-sd35-controlnet.safetensors"
    save_file(sd35_controlnet_state_dict(s.f32), str(model_folder / "controlnet" / name))
    for part, module in tiny_taesd(16).items():
        save_file(module, str(model_folder / "vae_approx" / f"taesd3_{part}.safetensors"))
    (cn32,) = node("ControlNetLoader", name)
    (cn64,) = node("ControlNetLoader", name)
    assert cn64 is not cn32 and cn64.control_model is not cn32.control_model
    with torch.inference_mode():
        cn64.control_model.to(torch.float64)
        cn64.control_model.dtype = torch.float64
    (vae,) = node("VAELoader", "taesd3")
    return cn32, cn64, vae


def sd35_controlnet_state_dict(patcher, seed=31) -> dict:
    """A one-block SD3.5 ControlNet for the model's width (hidden 64·depth, depth heads of 64,
    pooled 2048, patch 2, 16 latent channels: what load_controlnet_sd35 reads off the file)."""
    import comfy.cldm.dit_embedder
    import comfy.ops
    from make_tiny_models import randomize_
    config = patcher.model.model_config.unet_config
    depth = config["depth"]
    net = comfy.cldm.dit_embedder.ControlNetEmbedder(
        img_size=None, patch_size=config["patch_size"], in_chans=config["in_channels"], attention_head_dim=64,
        num_attention_heads=depth, adm_in_channels=config["adm_in_channels"], num_layers=1,
        main_model_double=depth, double_y_emb=False, device="cpu", dtype=torch.float32,
        operations=comfy.ops.disable_weight_init)
    with torch.no_grad():
        randomize_(net, torch.Generator().manual_seed(seed), gain=0.5)
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def tiny_taesd(latent_channels, seed=37) -> dict:
    """TAESD encoder and decoder state dicts (random) for VAELoader's taesd* names."""
    import comfy.taesd.taesd
    from make_tiny_models import randomize_
    net = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        randomize_(net.taesd_encoder, g, gain=0.5)
        randomize_(net.taesd_decoder, g, gain=0.5)
    return {"encoder": {k: v.detach().clone().contiguous() for k, v in net.taesd_encoder.state_dict().items()},
            "decoder": {k: v.detach().clone().contiguous() for k, v in net.taesd_decoder.state_dict().items()}}


def hint_image(shape, seed=29):
    h, w = shape[-2:]
    with torch.inference_mode():
        return torch.rand(1, h * 8, w * 8, 3, generator=torch.Generator().manual_seed(seed))


def test_controlnet(subj, model_folder):
    kind = kind_of(subj)
    cn32, cn64, vae = controlnets(kind, model_folder)
    pos, neg = conds(kind)
    _, base_stock, _ = baseline(kind)
    image = hint_image(subj.latent_shape)
    extra = {} if vae is None else {"vae": vae}
    pos32, neg32 = node("ControlNetApplyAdvanced", pos, neg, cn32, image, 1.0, *CONTROL_RANGE, **extra)
    pos64, neg64 = node("ControlNetApplyAdvanced", pos, neg, cn64, image, 1.0, *CONTROL_RANGE, **extra)
    ours, stock = ours_and_stock(subj.f32, pos32, neg32, subj.cfg, subj.latent_shape)
    assert_differs(stock, base_stock, "ControlNet")
    assert_close(ours, stock)
    check_gradients(subj.f64, pos64, neg64, subj.latent_shape, subj.cfg)


# -- model patches from comfy_extras ----------------------------------------------------------
MODEL_PATCHES = {
    # name: (node id, widget values, families it applies to)
    "FreeU_V2": ("FreeU_V2", dict(b1=1.3, b2=1.4, s1=0.9, s2=0.2), {"sd15"}),
    "PerturbedAttentionGuidance": ("PerturbedAttentionGuidance", dict(scale=3.0), {"sd15"}),
    "SelfAttentionGuidance": ("SelfAttentionGuidance", dict(scale=0.5, blur_sigma=2.0), {"sd15"}),
    "RescaleCFG": ("RescaleCFG", dict(multiplier=0.7), {"sd15", "flow"}),
    "ModelSamplingDiscrete v_prediction": ("ModelSamplingDiscrete", dict(sampling="v_prediction", zsnr=False),
                                           {"sd15"}),
    "ModelSamplingSD3": ("ModelSamplingSD3", dict(shift=5.0), {"flow"}),   # SD3.5 itself has 3.0
    "ModelSamplingFlux": ("ModelSamplingFlux", dict(max_shift=1.15, base_shift=0.5, width=64, height=64),
                          {"flow"}),
}
NOT_FOR = {
    "FreeU_V2": "FreeU scales UNet output-block channels; a DiT has none",
    "PerturbedAttentionGuidance": "PAG replaces the UNet middle block's self-attention; a DiT has none",
    "SelfAttentionGuidance": "SAG records the UNet middle block's self-attention; a DiT has none",
    "ModelSamplingDiscrete v_prediction": "v-prediction is a discrete (SD1.x/SD2.x) sampling",
    "ModelSamplingFlux": "a flow model's sampling (SD1.5 made a flow model by ModelSamplingSD3 is covered by "
                         "test_flow_samplings and the server tests)",
    "ModelSamplingSD3": "a flow model's sampling (SD1.5 made a flow model by ModelSamplingSD3 is covered by "
                        "test_flow_samplings and the server tests)",
}


@pytest.mark.parametrize("patch", list(MODEL_PATCHES))
def test_model_patch(subj, patch):
    node_id, widgets, families = MODEL_PATCHES[patch]
    kind = kind_of(subj)
    if kind not in families:
        pytest.skip(NOT_FOR[patch])
    pos, neg = conds(kind)
    # the guidance patches act on the CFG mix: a guidance-distilled family (cfg 1) runs them at 2
    cfg = subj.cfg if patch.startswith(("ModelSampling", "FreeU")) else max(subj.cfg, 2.0)
    _, base_stock = ours_and_stock(subj.f32, pos, neg, cfg, subj.latent_shape)
    p32, p64 = (node(node_id, m, **widgets)[0] for m in (subj.f32, subj.f64))
    ours, stock = ours_and_stock(p32, pos, neg, cfg, subj.latent_shape)
    assert_differs(stock, base_stock, patch)
    assert_close(ours, stock)
    check_gradients(p64, pos, neg, subj.latent_shape, cfg)


# -- conditioning: areas, masks, strengths, timestep ranges (the entries path) ------------------
def combined_conditioning(s: Subject, kind: str):
    """Three prompts combined: one on the left half (ConditioningSetArea), one through a soft mask
    at strength 0.8 for 0-70 % (ConditioningSetMask + ConditioningSetTimestepRange), one for
    50-100 % (ConditioningSetTimestepRange); every step is covered by the area prompt."""
    pos = [conds(kind)[0], prompt(kind, 11), prompt(kind, 12)]
    h, w = (8 * n for n in s.latent_shape[-2:])
    (left,) = node("ConditioningSetArea", pos[0], w // 2, h, 0, 0, 1.0)
    mask = torch.linspace(0.0, 1.0, w).expand(1, h, w).clone()
    (masked,) = node("ConditioningSetMask", pos[1], mask, "default", 0.8)
    (masked,) = node("ConditioningSetTimestepRange", masked, 0.0, 0.7)
    (late,) = node("ConditioningSetTimestepRange", pos[2], 0.5, 1.0)
    (both,) = node("ConditioningCombine", left, masked)
    (combined,) = node("ConditioningCombine", both, late)
    return combined


def entries_gradient_checks(patcher, positive, negative, shape, cfg, h=1e-5):
    """[(name, finite difference, adjoint, round-off bound)] for the noise and every positive
    entry (one direction over all its tensors: cross_attn, and pooled_output where the model
    reads it), on the entries path the Adjoint Sampler takes for stock conditioning (each entry
    keeps its area, mask, strength and σ range; its tensors are the leaves), float64."""
    adjoint = pack_submodule("adjoint")
    gd = pack_submodule("nodes.guider_denoiser")
    inf = pack_submodule("nodes.inference_tensors")
    sampling = pack_submodule("nodes.adjoint_sampling")
    target = torch.randn(1, *shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    alpha = gradient_alpha(patcher)
    eps = torch.finfo(torch.float64).eps

    def loss_fn(x0):
        return (x0 - target).square().mean(dim=tuple(range(1, x0.ndim)))

    def body(model_wrap, sigmas, extra_args, noise, latent):
        ms = model_wrap.inner_model.model_sampling
        scale = float(ms.noise_scaling(sigmas[0], torch.ones(1), torch.zeros(1), True))
        cond, scheduled = sampling.positive_conditioning(model_wrap, len(sigmas) - 1)
        assert not scheduled
        sampling.check_coverage(model_wrap.conds["positive"], sigmas)
        names = list(cond.keyframes[0])

        def run():
            den = gd.GuiderDenoiser(model_wrap, extra_args, noise, latent, None, scheduled=False)
            c = cond.with_leaves([l.double() for l in cond.leaves()])
            x_init = inf.to_normal(noise) * scale
            sig = inf.to_normal(sigmas)

            def value(x, leaves):
                return float(loss_fn(adjoint.sample(den, x, sig, c.with_leaves(leaves), alpha=alpha).x0).sum())

            def central(plus, minus):
                return (plus - minus) / (2 * h), 4 * eps * (abs(plus) + abs(minus)) / (2 * h)

            res = adjoint.gradient(den, x_init, sig, c, loss_fn, alpha=alpha)
            grads = res.grad_keyframes[0]
            gen = torch.Generator().manual_seed(5)
            v = torch.randn(x_init.shape, generator=gen, dtype=torch.float64)
            leaves = c.leaves()
            checks = [("noise", *central(value(x_init + h * v, leaves), value(x_init - h * v, leaves)))]
            checks[0] = (checks[0][0], checks[0][1], float((res.grad_x_init * v).sum()), checks[0][2])
            for entry in sorted({n.split(":")[0] for n in names}, key=int):
                mine = [j for j, n in enumerate(names) if n.split(":")[0] == entry]
                vs = {j: torch.randn(leaves[j].shape, generator=gen, dtype=torch.float64) for j in mine}
                plus = [l + h * vs[i] if i in vs else l for i, l in enumerate(leaves)]
                minus = [l - h * vs[i] if i in vs else l for i, l in enumerate(leaves)]
                fd, bound = central(value(x_init, plus), value(x_init, minus))
                analytic = sum(float((grads[names[j]] * vs[j]).sum()) for j in mine)
                checks.append((f"entry {entry} ({', '.join(names[j].split(':')[1] for j in mine)})", fd, analytic,
                               bound))
            return checks
        return protected(model_wrap, run)

    preloaded(patcher)
    with float64_everywhere():
        return run_in_guider(patcher, positive, negative, body, shape, steps=STEPS, cfg=cfg,
                             scheduler=scheduler_for(patcher))


def test_conditioning_areas_masks_strengths_ranges(subj):
    kind = kind_of(subj)
    positive = combined_conditioning(subj, kind)
    _, neg = conds(kind)
    _, base_stock, _ = baseline(kind)
    ours, stock = ours_and_stock(subj.f32, positive, neg, subj.cfg, subj.latent_shape)
    assert_differs(stock, base_stock, "combined conditioning")
    assert_close(ours, stock)
    checks = entries_gradient_checks(subj.f64, positive, neg, subj.latent_shape, subj.cfg)
    assert [name.split()[1] for name, *_ in checks[1:]] == ["0", "1", "2"], checks
    assert_fd(checks)
    assert all(abs(a) > 1e-8 for _, _, a, _ in checks), checks


# -- CFG 1, and a negative prompt that is itself a schedule ------------------------------------
def test_cfg_1(subj):
    """CFG 1: ComfyUI skips the negative pass; so do we, and the gradient is still exact."""
    kind = kind_of(subj)
    pos, neg = conds(kind)
    ours, stock = ours_and_stock(subj.f32, pos, neg, 1.0, subj.latent_shape)
    assert_close(ours, stock)
    check_gradients(subj.f64, pos, neg, subj.latent_shape, 1.0)


def test_negative_prompt_schedule(subj):
    """negative = Conditioning Schedule of two stock conditionings (switch at step 1 of 4, exact
    percents from the model): ComfyUI picks the negative per step by its ranges, for us and for
    stock."""
    kind = kind_of(subj)
    pos, neg = conds(kind)
    other = prompt(kind, 3)
    (schedule,) = node("AdjointGuidance_ConditioningSchedule", "0, 1", "hold", STEPS, scheduler_for(subj.f32),
                       neg, model=subj.f32, conditioning_2=other)
    assert len(schedule) == 2
    cfg = max(subj.cfg, 2.0)    # a guidance-distilled family (cfg 1) would not read the negative
    _, only_first = ours_and_stock(subj.f32, pos, neg, cfg, subj.latent_shape)
    ours, stock = ours_and_stock(subj.f32, pos, schedule, cfg, subj.latent_shape)
    assert_differs(stock, only_first, "negative schedule")
    assert_close(ours, stock)
    check_gradients(subj.f64, pos, schedule, subj.latent_shape, cfg)


# -- the Adjoint Sampler node on a stack of patches ---------------------------------------------
def test_adjoint_sampler_node_on_a_patch_stack(model_folder):
    """LoRA -> FreeU_V2 -> PerturbedAttentionGuidance -> RescaleCFG, with a ControlNet on the
    conditioning, through the Adjoint Sampler node itself (float32, inference weights, as the
    server runs it): its first iterate with dpmpp_1 is the stock euler sample (the loss against
    that sample is round-off), and the optimisation proceeds on the stack."""
    import nodes as comfy_nodes_module
    s = subject("sd15")
    pos, neg = conds("sd15")
    model = apply_lora("LoraLoaderModelOnly", s.f32, lora_file(model_folder, s), 1.0)
    for patch in ("FreeU_V2", "PerturbedAttentionGuidance", "RescaleCFG"):
        node_id, widgets, _ = MODEL_PATCHES[patch]
        (model,) = node(node_id, model, **widgets)
    cn32, _, _ = controlnets("sd15", model_folder)
    pos, neg = node("ControlNetApplyAdvanced", pos, neg, cn32, hint_image(s.latent_shape), 1.0, *CONTROL_RANGE)
    latent = {"samples": torch.zeros(1, *s.latent_shape)}
    with torch.inference_mode():
        (target,) = comfy_nodes_module.common_ksampler(model, 11, STEPS, s.cfg, "euler", "karras", pos, neg, latent)
    losses = pack_submodule("adjoint.losses")
    sampler = pack_submodule("nodes.adjoint_sampler").AdjointSampler
    with torch.inference_mode():
        out = sampler.execute(
            model=model, positive=pos, negative=neg, latent_image=latent, loss=losses.LatentTarget(target["samples"]),
            seed=11, steps=STEPS, cfg=s.cfg, scheduler="karras", solver="dpmpp_1", gradient="exact",
            adjoint_steps=0, optimize="noise + prompt", iterations=1, learning_rate=0.05, renormalize_noise=True,
            max_grad_norm=0.0, early_stop_patience=0, denoise=1.0)
    report = out.ui["adjoint_guidance_loss"][0]
    assert report["stop_reason"] == "iterations" and all(math.isfinite(v) for v in report["losses"]), report
    assert report["losses"][0] < 1e-10 * float(target["samples"].square().mean()), report
    assert out.args[0]["samples"].shape == target["samples"].shape
