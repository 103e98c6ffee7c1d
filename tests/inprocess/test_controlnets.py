"""Every ControlNet ComfyUI has, on every family of tests/model_families.py it applies to:
our sample and our gradient follow the ControlNet exactly as the stock sampler does.

test_patches.py covers SD1.5 (ComfyUI's cldm ControlNet) and SD3.5 (a Stability-format SD3.5
ControlNet); this file covers the other families, one case per ControlNet format ComfyUI loads
for the family. Each case writes a tiny ControlNet file of that format for the tiny family model
(random seeded weights, ComfyUI's own class at the family's reduced widths), loads it through
the loader node users use (ControlNetLoader, or ModelPatchLoader for the model-patch
ControlNets), checks that the loader put every weight of the file into the network, and applies
it through the stock node users use (ControlNetApplyAdvanced over 20-80 %, optionally
SetUnionControlNetType; QwenImageDiffsynthControlnet / ZImageFunControlnet on the model). Then,
as in test_patches:
(a) Adjoint Solver (Sampler) `dpmpp_1` on the controlled model equals ComfyUI's `euler` to
    round-off, and the ControlNet changes the stock sample;
(b) the gradient (noise and both keyframes of a two-keyframe schedule) through ComfyUI's real
    guider, float64 model and float64 ControlNet, equals float64 central finite differences.

Cases (load_controlnet_state_dict's key tests and comfy_extras/nodes_model_patch.py pick the
class from the file's keys):
- sd2_v, sdxl, playground_v25: comfy.cldm.cldm.ControlNet (original `zero_convs` format; an
  SDXL ControlNet for Playground v2.5, an SDXL-architecture model). ComfyUI detects the tiny
  UNet's config from the file (no supported model matches the 32-channel widths: it falls back
  to BASE with 64-channel heads, which is these families' own head layout).
- flux1 "xlabs": comfy.ldm.flux.controlnet.ControlNetFlux from an XLabs file (image hint,
  no VAE); "instantx_union": ControlNetFlux(latent_input, union modes) from an InstantX/Shakker
  Union file (diffusers keys, hint VAE-encoded by a tiny TAEF1 through VAELoader), its mode set
  by SetUnionControlNetType.
- qwen_image "instantx": comfy.ldm.qwen_image.controlnet.QwenImageControlNetModel (InstantX
  file; hint encoded by a tiny Wan 2.1 VAE through VAELoader, Qwen-Image's VAE);
  "diffsynth": the DiffSynth block-wise ControlNet of nodes_model_patch (ModelPatchLoader +
  QwenImageDiffsynthControlnet); "fun" (ComfyUI >= 0.33 only):
  QwenImageFunControlNetModel (VideoX-Fun file through ControlNetLoader).
- z_image "fun" (ComfyUI >= 0.33 only): comfy.ldm.lumina.controlnet.ZImage_Control (an
  alibaba-pai Z-Image Fun ControlNet, the 3-layer file layout with refiner control and inpaint
  channels) through ModelPatchLoader + ZImageFunControlnet, hint encoded by the tiny TAEF1.
- flux2, chroma: ComfyUI has no ControlNet for them (skipped, with a check that would notice
  one arriving in the loaders' names).

Widths: ComfyUI sizes some of these networks from hard-coded full-size widths, not from the
file: Flux's detected config always has 24 heads and axes (16, 56, 56), Qwen-Image's detected
config keeps the 3072-wide defaults, ModelPatchLoader builds the DiffSynth ControlNet 3072 wide
and 60 blocks deep and the Z-Image one 3840 wide. For those the test pins only that sizing to
the tiny family (comfy.model_detection.model_config_from_unet returns the family's own config;
the patch class gets the family's width as its default); the rest (format detection from the
keys, key conversion, the class, the ControlNet wrapper, the nodes) is ComfyUI's own code.

Z-Image Fun's patch hard-codes a 30-block main model (with 3 control layers, block i uses
control layer i / 10, and the patch's state resets after the last one, at block 20; on the
1-block tiny Z-Image it would carry one model call's control state into the next): it runs on a
21-block build of the tiny Z-Image with two refiner blocks, as the real one has, so each model
call is a function of its inputs as on the real model. To keep that build cheap its tokens are
padded to a multiple of 8 (6 prompt tokens + 2 pad tokens, 16 image tokens), not 32.

Not covered here: ComfyUI's diffusers-format SD3 ControlNet (comfy.cldm.mmdit.ControlNet, what
load_controlnet_mmdit builds): it repeats each block's residual depth / blocks times and drops
the last, so on the depth-1 tiny SD3.5 it emits none; Control-LoRA and T2I-Adapter files; the
Flux Mistoline and AliMama-inpainting variants of the Flux classes tested here; HunyuanDiT (no
family here).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch

from comfy_harness import comfy_version_string, load_comfy_in_process
from test_patches import (CONTROL_RANGE, Subject, _from_family, assert_close, assert_differs,  # noqa: F401
                          check_gradients, hint_image, model_folder, node, ours_and_stock, sample_with,
                          sd15_controlnet_state_dict, subject_prompt, tiny_taesd)

SEED = 20261201


# -- subjects ---------------------------------------------------------------------------------
ZIMAGE_BLOCKS = 21     # Z-Image Fun's patch resets its state at main block 20 (see the docstring)


@functools.lru_cache(maxsize=None)
def family_subject(name: str) -> Subject:
    from model_families import family_or_skip
    fam = family_or_skip(name)
    if name != "z_image":
        return _from_family(fam)
    import families_dit
    # tokens padded to a multiple of 8 (6 prompt tokens + 2 pad tokens, 16 image tokens), not 32:
    # 24 tokens a call instead of 64 on the 21 blocks
    spec = dataclasses.replace(families_dit.ZIMAGE, name=f"z_image_{ZIMAGE_BLOCKS}_blocks", tokens=6, unet_config={
        **families_dit.ZIMAGE.unet_config, "n_layers": ZIMAGE_BLOCKS, "n_refiner_layers": 2,
        "pad_tokens_multiple": 8})
    return Subject(spec.name, families_dit._build(spec), families_dit._build(spec, torch.float64),
                   lambda seed, batch=1: families_dit._conditioning(spec, seed, batch), tuple(spec.latent_shape),
                   fam.cfg)


@functools.lru_cache(maxsize=None)
def family_conds(name: str):
    s = family_subject(name)
    return subject_prompt(s, 1), subject_prompt(s, 2)


@functools.lru_cache(maxsize=None)
def stock_without_controlnet(name: str):
    import comfy.samplers
    s = family_subject(name)
    pos, neg = family_conds(name)
    return sample_with(s.f32, comfy.samplers.sampler_object("euler"), pos, neg, s.cfg, s.latent_shape)


# -- files and folders --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(model_folder):
    """test_patches' model folder (loras, controlnet, vae_approx) plus `vae` and `model_patches`."""
    import folder_paths
    for kind in ("vae", "model_patches"):
        (model_folder / kind).mkdir(exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(model_folder / kind))
    return model_folder


def save(folder, kind, name, sd) -> str:
    from safetensors.torch import save_file
    path = folder / kind / name
    if not path.exists():
        save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, str(path))
    return name


def random_weights(net, seed) -> dict:
    """make_tiny_models.randomize_ (small gain, norm gains 1), the state dict as float32 copies."""
    from make_tiny_models import randomize_
    with torch.no_grad():
        randomize_(net, torch.Generator().manual_seed(seed), gain=0.5)
        for name, p in net.named_parameters():
            if (name.endswith(".scale") and "norm" in name) or name.endswith(".gamma"):
                p.fill_(1.0)        # RMSNorm gains randomize_ zeroes (Flux's `scale`, Wan's `gamma`)
    return {k: v.detach().clone().float() for k, v in net.state_dict().items()}


def ops():
    import comfy.ops
    return dict(operations=comfy.ops.disable_weight_init, device="cpu", dtype=torch.float32)


@contextlib.contextmanager
def pinned(owner, attr, value):
    old = getattr(owner, attr)
    setattr(owner, attr, value)
    try:
        yield
    finally:
        setattr(owner, attr, old)


def family_config(s: Subject) -> dict:
    """The family's network config as model detection gives it for a file (BaseModel adds the
    inference dtype to the model's copy)."""
    return {k: v for k, v in s.f32.model.model_config.unet_config.items() if k not in ("dtype", "device", "operations")}


def tiny_detection(s: Subject):
    """comfy.model_detection.model_config_from_unet answers a fresh instance of the family's
    supported-model config on the family's network config: what it detects for a real file of
    the family, at the tiny widths."""
    import comfy.model_detection

    def model_config_from_unet(state_dict, unet_key_prefix, use_base_if_no_match=False, metadata=None):
        return type(s.f32.model.model_config)(family_config(s))     # as detection builds it
    return pinned(comfy.model_detection, "model_config_from_unet", model_config_from_unet)


def nodes_model_patch():
    load_comfy_in_process()
    import nodes
    return sys.modules[nodes.NODE_CLASS_MAPPINGS["ModelPatchLoader"].__module__]


def assert_loaded(net, reference: dict, what: str):
    """The loader put every weight of the file in the network (ComfyUI loads ControlNets with
    strict=False: a key it misses keeps torch.empty's garbage, with only a log line)."""
    got = net.state_dict()
    missing = sorted(set(reference) - set(got))
    extra = sorted(set(got) - set(reference))
    differ = [k for k in reference if k in got and not torch.equal(got[k].float(), reference[k])]
    assert not (missing or extra or differ), \
        f"{what}: missing {missing[:4]}, not in the file {extra[:4]}, other values {differ[:4]}"


def float64_copy(control_net):
    with torch.inference_mode():
        control_net.control_model.to(torch.float64)
        control_net.control_model.dtype = torch.float64
    return control_net


def load_controlnet_pair(name, reference, what, s: Optional[Subject] = None):
    """(float32, float64) CONTROL_NET from ControlNetLoader; with s, detection pinned to s."""
    out = []
    for _ in range(2):
        with tiny_detection(s) if s is not None else contextlib.nullcontext():
            (cn,) = node("ControlNetLoader", name)
        assert_loaded(cn.control_model, reference, what)
        out.append(cn)
    assert out[0].control_model is not out[1].control_model
    return out[0], float64_copy(out[1])


def load_model_patch_pair(name, reference, what, pin=None):
    """(float32, float64) MODEL_PATCH from ModelPatchLoader; pin: (module, class name, subclass)."""
    out = []
    for _ in range(2):
        with pinned(*pin) if pin else contextlib.nullcontext():
            (patch,) = node("ModelPatchLoader", name)
        assert_loaded(patch.model, reference, what)
        out.append(patch)
    with torch.inference_mode():
        out[1].model.to(torch.float64)
    return tuple(out)


def taef1(folder):
    """A tiny TAEF1 (16 latent channels, Flux's latent format) through VAELoader."""
    for part, module in tiny_taesd(16, seed=SEED + 1).items():
        save(folder, "vae_approx", f"taef1_{part}.safetensors", module)
    return node("VAELoader", "taef1")[0]


def wan21_vae(folder):
    """A tiny Wan 2.1 VAE (Qwen-Image's VAE; ComfyUI reads its width off the file) through
    VAELoader: 8 base channels instead of 96."""
    import comfy.ldm.wan.vae
    kwargs = dict(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                  temperal_downsample=[False, True, True], dropout=0.0)
    sd = random_weights(comfy.ldm.wan.vae.WanVAE(**kwargs), SEED + 2)
    return node("VAELoader", save(folder, "vae", "tiny-wan21-vae.safetensors", sd))[0]


# -- applying ---------------------------------------------------------------------------------
@dataclass
class Applied:
    model: object
    positive: list
    negative: list


def apply_advanced(s: Subject, family, cn32, cn64, vae=None):
    """ControlNetApplyAdvanced (strength 1, 20-80 %) on the family's prompts, float32 and float64."""
    pos, neg = family_conds(family)
    image = hint_image(s.latent_shape)
    extra = {} if vae is None else {"vae": vae}
    out = []
    for model, cn in ((s.f32, cn32), (s.f64, cn64)):
        p, n = node("ControlNetApplyAdvanced", pos, neg, cn, image, 1.0, *CONTROL_RANGE, **extra)
        out.append(Applied(model, p, n))
    return tuple(out)


# UNet: cldm ---------------------------------------------------------------------------------
def cldm(family):
    def apply(s: Subject, folder):
        sd = sd15_controlnet_state_dict(s.f32, seed=SEED + 10)
        name = save(folder, "controlnet", f"tiny-{family}-controlnet.safetensors", sd)
        cn32, cn64 = load_controlnet_pair(name, sd, f"{family} cldm ControlNet")
        return apply_advanced(s, family, cn32, cn64)
    return apply


# Flux.1 -------------------------------------------------------------------------------------
def flux_controlnet(s: Subject, seed, **kwargs) -> dict:
    import comfy.ldm.flux.controlnet
    config = family_config(s)
    net = comfy.ldm.flux.controlnet.ControlNetFlux(**kwargs, **config, **ops())
    return random_weights(net, seed)


def flux_xlabs(s: Subject, folder):
    """An XLabs Flux ControlNet: ComfyUI's names, QK-norm gains as `scale` (0.33's class calls
    them `weight` and renames the file's `scale` on load)."""
    sd = flux_controlnet(s, SEED + 20)
    file = {(k[:-len(".weight")] + ".scale" if k.endswith("_norm.weight") else k): v for k, v in sd.items()}
    assert "double_blocks.0.img_attn.norm.key_norm.scale" in file      # what marks the XLabs format
    name = save(folder, "controlnet", "tiny-flux1-xlabs-controlnet.safetensors", file)
    cn32, cn64 = load_controlnet_pair(name, sd, "Flux XLabs ControlNet", s)
    return apply_advanced(s, "flux1", cn32, cn64)


UNION_MODES = 10   # InstantX/Shakker FLUX.1-dev-Controlnet-Union's controlnet_mode_embedder rows
UNION_TYPE = "canny/lineart/anime_lineart/mlsd"


def to_diffusers_flux(sd: dict, config: dict) -> dict:
    """ComfyUI-named Flux ControlNet weights in the diffusers names of an InstantX file: the
    inverse of the map ComfyUI converts them with (comfy.utils.flux_to_diffusers)."""
    import comfy.utils
    key_map = comfy.utils.flux_to_diffusers({k: config[k] for k in ("depth", "depth_single_blocks", "hidden_size")},
                                            output_prefix="")
    out, used = {}, set()
    for diffusers_key, target in key_map.items():
        if isinstance(target, str):
            name, offset, fun = target, None, None
        else:
            name, offset, fun = target[0], target[1], (target[2] if len(target) > 2 else None)
        if name not in sd:
            continue
        w = sd[name] if offset is None else sd[name].narrow(*offset)
        out[diffusers_key] = fun(w) if fun is not None else w
        used.add(name)
    for k, v in sd.items():       # controlnet_blocks / controlnet_single_blocks / controlnet_mode_embedder
        if k not in used:
            assert k.startswith("controlnet_"), f"no diffusers name for {k}"
            out[k] = v
    return out


def flux_instantx_union(s: Subject, folder):
    config = family_config(s)
    sd = flux_controlnet(s, SEED + 21, latent_input=True, num_union_modes=UNION_MODES,
                         control_latent_channels=config["in_channels"])
    file = to_diffusers_flux(sd, config)
    assert "controlnet_x_embedder.weight" in file and "controlnet_mode_embedder.weight" in file
    name = save(folder, "controlnet", "tiny-flux1-instantx-union-controlnet.safetensors", file)
    cn32, cn64 = load_controlnet_pair(name, sd, "Flux InstantX Union ControlNet", s)
    cn32, cn64 = (node("SetUnionControlNetType", cn, UNION_TYPE)[0] for cn in (cn32, cn64))
    assert cn64.extra_args["control_type"] == [3]
    return apply_advanced(s, "flux1", cn32, cn64, vae=taef1(folder))


# Qwen-Image ---------------------------------------------------------------------------------
def qwen_width(s: Subject) -> int:
    config = family_config(s)
    return config["num_attention_heads"] * config["attention_head_dim"]


def qwen_instantx(s: Subject, folder):
    import comfy.ldm.qwen_image.controlnet
    config = family_config(s)
    sd = random_weights(comfy.ldm.qwen_image.controlnet.QwenImageControlNetModel(**config, **ops()), SEED + 30)
    name = save(folder, "controlnet", "tiny-qwen-image-instantx-controlnet.safetensors", sd)
    cn32, cn64 = load_controlnet_pair(name, sd, "Qwen-Image InstantX ControlNet", s)
    return apply_advanced(s, "qwen_image", cn32, cn64, vae=wan21_vae(folder))


def qwen_fun(s: Subject, folder):
    import comfy.ldm.qwen_image.controlnet
    config = family_config(s)
    net = comfy.ldm.qwen_image.controlnet.QwenImageFunControlNetModel(
        control_in_features=4 * 33, inner_dim=qwen_width(s), num_attention_heads=config["num_attention_heads"],
        attention_head_dim=config["attention_head_dim"], **ops())     # 33 = control 16 + mask 1 + inpaint 16
    sd = random_weights(net, SEED + 31)
    name = save(folder, "controlnet", "tiny-qwen-image-fun-controlnet.safetensors", sd)
    cn32, cn64 = load_controlnet_pair(name, sd, "Qwen-Image Fun ControlNet")
    return apply_advanced(s, "qwen_image", cn32, cn64, vae=wan21_vae(folder))


def tiny_default(cls, **widths):
    """A subclass of the model-patch class ModelPatchLoader builds, with the tiny family's widths
    as defaults (instances are still instances of the class, for the apply nodes' checks)."""
    def __init__(self, *args, **kwargs):
        cls.__init__(self, *args, **{**widths, **kwargs})
    return type(cls.__name__, (cls,), {"__init__": __init__})


def qwen_diffsynth(s: Subject, folder):
    mp = nodes_model_patch()
    config = family_config(s)
    widths = dict(num_layers=config["num_layers"], dim=qwen_width(s))
    sd = random_weights(mp.QwenImageBlockWiseControlNet(**widths, **ops()), SEED + 32)
    name = save(folder, "model_patches", "tiny-qwen-image-diffsynth-controlnet.safetensors", sd)
    p32, p64 = load_model_patch_pair(name, sd, "Qwen-Image DiffSynth ControlNet", pin=(
        mp, "QwenImageBlockWiseControlNet", tiny_default(mp.QwenImageBlockWiseControlNet, **widths)))
    vae = wan21_vae(folder)
    pos, neg = family_conds("qwen_image")
    image = hint_image(s.latent_shape)
    return tuple(Applied(node("QwenImageDiffsynthControlnet", m, p, vae, image, 1.0)[0], pos, neg)
                 for m, p in ((s.f32, p32), (s.f64, p64)))


# Z-Image --------------------------------------------------------------------------------------
def to_zimage_fun_file(sd: dict) -> dict:
    """ComfyUI-named ZImage_Control weights in an alibaba-pai Z-Image Fun file's names: the inverse
    of nodes_model_patch.z_image_convert (separate to_q/to_k/to_v, to_out.0, norm_q/norm_k)."""
    renames = {".attention.out.": ".attention.to_out.0.", ".attention.k_norm.": ".attention.norm_k.",
               ".attention.q_norm.": ".attention.norm_q."}
    out = {}
    for k, v in sd.items():
        if k.endswith(".attention.qkv.weight"):
            q, kk, vv = v.chunk(3, dim=0)
            base = k[:-len("qkv.weight")]
            out[base + "to_q.weight"], out[base + "to_k.weight"], out[base + "to_v.weight"] = q, kk, vv
            continue
        for a, b in renames.items():
            k = k.replace(a, b)
        out[k] = v
    return out


def zimage_fun(s: Subject, folder):
    import comfy.ldm.lumina.controlnet
    config = family_config(s)
    widths = dict(dim=config["dim"], n_heads=config["n_heads"], n_kv_heads=config["n_kv_heads"])
    # the 3-control-layer file layout (no control_layers.4): refiner control, 17 inpaint channels
    layout = dict(n_control_layers=3, additional_in_dim=17, refiner_control=True)
    cls = comfy.ldm.lumina.controlnet.ZImage_Control
    sd = random_weights(cls(**widths, **layout, **ops()), SEED + 40)
    file = to_zimage_fun_file(sd)
    assert "control_all_x_embedder.2-1.weight" in file and "control_layers.4.adaLN_modulation.0.weight" not in file
    name = save(folder, "model_patches", "tiny-z-image-fun-controlnet.safetensors", file)
    p32, p64 = load_model_patch_pair(name, sd, "Z-Image Fun ControlNet",
                                     pin=(comfy.ldm.lumina.controlnet, "ZImage_Control", tiny_default(cls, **widths)))
    vae = taef1(folder)
    pos, neg = family_conds("z_image")
    image = hint_image(s.latent_shape)
    return tuple(Applied(node("ZImageFunControlnet", m, p, vae, strength=1.0, image=image)[0], pos, neg)
                 for m, p in ((s.f32, p32), (s.f64, p64)))


# -- the cases --------------------------------------------------------------------------------
def needs(module=None, attr=None, node_id=None, what=""):
    """A skip reason where this ComfyUI lacks the ControlNet (module / attribute / node), else None."""
    def check():
        import importlib
        load_comfy_in_process()
        import nodes
        try:
            owner = importlib.import_module(module) if module else None
        except ImportError:
            owner = None
        if (module and owner is None) or (attr and not hasattr(owner, attr)) or \
                (node_id and node_id not in nodes.NODE_CLASS_MAPPINGS):
            parts = [f"{module}.{attr}" if attr else module] * bool(module) + [f"node {node_id}"] * bool(node_id)
            return f"ComfyUI {comfy_version_string()} has no ControlNet for {what} (no {', '.join(parts)})"
        return None
    return check


@dataclass(frozen=True)
class Case:
    family: str
    kind: str
    apply: Callable                                   # apply(subject, folder) -> (Applied f32, Applied f64)
    unavailable: Callable = lambda: None              # a skip reason on this ComfyUI, or None
    min_noise: float = 1e-3                           # |noise derivative| at least (assert_fd)

    @property
    def id(self):
        return f"{self.family}-{self.kind}"


CASES = [
    Case("sd2_v", "cldm", cldm("sd2_v")),
    Case("sdxl", "cldm", cldm("sdxl")),
    # EDM from σ 80: the sample depends on the initial noise less (noise derivative ~8e-4)
    Case("playground_v25", "cldm_sdxl", cldm("playground_v25"), min_noise=1e-4),
    Case("flux1", "xlabs", flux_xlabs),
    Case("flux1", "instantx_union", flux_instantx_union),
    Case("qwen_image", "instantx", qwen_instantx),
    Case("qwen_image", "diffsynth", qwen_diffsynth),
    Case("qwen_image", "fun", qwen_fun, needs("comfy.controlnet", "load_controlnet_qwen_fun", None,
                                              "Qwen-Image (VideoX-Fun format)")),
    Case("z_image", "fun", zimage_fun, needs("comfy.ldm.lumina.controlnet", "ZImage_Control", "ZImageFunControlnet",
                                             "Z-Image")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_controlnet(case, folder):
    reason = case.unavailable()
    if reason:
        pytest.skip(reason)
    s = family_subject(case.family)
    on32, on64 = case.apply(s, folder)
    ours, stock = ours_and_stock(on32.model, on32.positive, on32.negative, s.cfg, s.latent_shape)
    assert_differs(stock, stock_without_controlnet(case.family), f"{case.id} ControlNet")
    assert_close(ours, stock)
    check_gradients(on64.model, on64.positive, on64.negative, s.latent_shape, s.cfg, min_noise=case.min_noise)


# -- families without one -----------------------------------------------------------------------
NO_CONTROLNET = {
    # family: (title, words a ControlNet loader / node / class for it would carry)
    "flux2": ("Flux.2", ("flux2", "flux_2", "flux.2")),
    "chroma": ("Chroma", ("chroma",)),
}


def controlnet_names() -> list:
    """Names of what ComfyUI loads or applies ControlNets with: comfy.controlnet's loaders and
    classes, the classes of the control modules under comfy.ldm / comfy.cldm, the ids of the
    nodes named for a ControlNet (ControlNetLoader, ZImageFunControlnet, ...)."""
    import comfy.controlnet
    nodes = load_comfy_in_process()
    names = list(vars(comfy.controlnet))
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith(("comfy.ldm.", "comfy.cldm.")) and "control" in mod_name:
            names += [f"{mod_name}.{n}" for n, v in vars(mod).items() if inspect.isclass(v)]
    names += [n for n in nodes.NODE_CLASS_MAPPINGS if "control" in n.lower() or "cnet" in n.lower()]
    return names


@pytest.mark.parametrize("family", list(NO_CONTROLNET))
def test_family_without_controlnet(family, comfy_nodes):
    from model_families import family_or_skip
    family_or_skip(family)
    title, words = NO_CONTROLNET[family]
    found = [n for n in controlnet_names() if any(w in n.lower() for w in words)]
    assert not found, f"ComfyUI {comfy_version_string()} now has a ControlNet for {title} ({found}): add a case"
    pytest.skip(f"ComfyUI {comfy_version_string()} has no ControlNet for {title} (no branch of "
                f"comfy.controlnet.load_controlnet_state_dict and no model patch of ModelPatchLoader builds one)")
