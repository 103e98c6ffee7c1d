"""Tiny DiT-family models (SD3.5, Flux.1, Flux.2, Chroma, Qwen-Image, Z-Image) built from
ComfyUI's own classes: the real `supported_models` config class (its sampling settings and
latent format), its `get_model` (the real `model_base` subclass, so the real `extra_conds`
and model sampling) around the real network class at reduced widths and depths.

Weights are random from a fixed seed (make_tiny_models.randomize_, small gain), made once
per family in float32 and loaded into a fresh model of the asked dtype under
torch.inference_mode(), so they are inference tensors as ComfyUI's loaders leave them and
the float64 model holds exactly the float32 model's values. Conditioning tensors are made
under inference_mode too, as CLIPTextEncode leaves them.

Configs are the keys ComfyUI's model_detection writes for the family, shrunk; keys a
version's network class does not take (e.g. `txt_ids_dims`, new in 0.33's FluxParams) are
dropped for that version, so one config serves 0.3.75 and 0.33.

float64 (build(torch.float64)) builds on both versions. On ComfyUI 0.33 every family here
but SD3.5 applies RoPE through comfy_kitchen's custom ops (apply_rope, apply_rope1, and
Lumina's fused rms_rope), which take no float64 and have no autograd formula, unless
comfy.model_management.in_training is True (as ComfyUI's own training node sets it): a
float64 or gradient run on 0.33 needs that flag (0.3.75 has neither the ops nor the flag).
notes["kitchen_rope"] says which families are affected.

Nothing here imports comfy at module import: pytest reads the family names at collection.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

from model_families import Family, register

SEED = 20261123
TOKENS = 8                      # text tokens per prompt, unless a family says otherwise
GAIN = 0.5                      # weight std = GAIN / sqrt(fan_in): outputs O(1), sampling finite


@dataclass
class _Spec:
    name: str
    config_class: str           # comfy.supported_models.<config_class>
    model_class: str            # the comfy.model_base subclass get_model must give
    network: str                # "module:Class" of the network under comfy.ldm
    params_class: str | None    # "module:Dataclass" the network takes its kwargs through, if any
    unet_config: dict
    latent_shape: tuple
    context_dim: int
    extras: dict = field(default_factory=dict)     # constant keys of the conditioning dict
    tokens: int = TOKENS                           # text tokens per prompt
    pooled_dim: int | None = None                  # "pooled_output" width; None: the key holds None, as
                                                   # CLIPTextEncode leaves it for encoders without one
    version_keys: tuple = ()                       # config keys some ComfyUI versions' network lacks


def _import(path):
    import importlib
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _taken_keys(spec: _Spec):
    """The config keys this ComfyUI's network class takes (None: any)."""
    if spec.params_class is not None:
        return {f.name for f in dataclasses.fields(_import(spec.params_class))} | {"image_model", "final_layer"}
    params = inspect.signature(_import(spec.network).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def _fit(spec: _Spec) -> dict:
    """The spec's unet_config less the version keys this ComfyUI's network does not take."""
    taken = _taken_keys(spec)
    return {k: v for k, v in spec.unet_config.items() if taken is None or k in taken}


def _unavailable(spec: _Spec):
    import comfy.model_base
    import comfy.supported_models
    from comfy_harness import comfy_version_string
    missing = [f"comfy.supported_models.{spec.config_class}"] * (not hasattr(comfy.supported_models, spec.config_class))
    missing += [f"comfy.model_base.{spec.model_class}"] * (not hasattr(comfy.model_base, spec.model_class))
    try:
        taken = _taken_keys(spec)
    except (ImportError, AttributeError):
        missing.append(spec.network)
    else:
        lacks = [k for k in spec.unet_config if taken is not None and k not in taken and k not in spec.version_keys]
        if lacks:
            missing.append(f"{spec.network} option(s) {', '.join(lacks)}")
    if missing:
        return f"{spec.name}: ComfyUI {comfy_version_string()} has no {', '.join(missing)}"
    return None


def _new_model(spec: _Spec, dtype):
    import comfy.supported_models
    model_config = getattr(comfy.supported_models, spec.config_class)(_fit(spec))
    model_config.set_inference_dtype(dtype, None)
    return model_config.get_model({})


def _init_extra(spec: _Spec, model):
    """What randomize_ cannot know: norm gains stored as `scale` (Flux's QK RMSNorm on
    0.3.75, Chroma's approximator norms) start at 1, not 0; SD3's position table is the
    sin-cos table the real checkpoints hold."""
    import torch
    for name, p in model.diffusion_model.named_parameters():
        if name.endswith(".scale") and "norm" in name:
            p.fill_(1.0)
    if spec.config_class == "SD3":
        from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed_torch
        net = model.diffusion_model
        size = net.pos_embed_max_size
        table = get_2d_sincos_pos_embed_torch(net.hidden_size, size, size, dtype=torch.float32)
        net.pos_embed.copy_(table.reshape(net.pos_embed.shape))


_MASTER: dict = {}      # name -> float32 state dict (normal tensors)
_BUILT: dict = {}       # (name, dtype) -> ModelPatcher (inference-tensor weights)
BUILD_SECONDS: dict = {}  # (name, dtype) -> seconds the (uncached) build took, master weights included


def _master(spec: _Spec) -> dict:
    if spec.name not in _MASTER:
        import torch
        from make_tiny_models import randomize_
        with torch.no_grad():
            model = _new_model(spec, torch.float32)
            g = torch.Generator().manual_seed(SEED + sum(map(ord, spec.name)))
            randomize_(model.diffusion_model, g, gain=GAIN)
            _init_extra(spec, model)
        _MASTER[spec.name] = {k: v.detach().clone() for k, v in model.diffusion_model.state_dict().items()}
    return _MASTER[spec.name]


def _build(spec: _Spec, dtype=None):
    import torch
    from comfy_harness import load_comfy_in_process
    load_comfy_in_process()
    import comfy.model_management
    import comfy.model_patcher
    dtype = dtype or torch.float32
    key = (spec.name, dtype)
    if key not in _BUILT:
        import time
        t0 = time.perf_counter()
        master = _master(spec)
        with torch.inference_mode():
            model = _new_model(spec, dtype)
            sd = {k: v.to(dtype) if v.is_floating_point() else v.clone() for k, v in master.items()}
            model.diffusion_model.load_state_dict(sd, strict=True)
        _BUILT[key] = comfy.model_patcher.ModelPatcher(model, comfy.model_management.get_torch_device(),
                                                      comfy.model_management.unet_offload_device())
        BUILD_SECONDS[key] = time.perf_counter() - t0
    return _BUILT[key].clone()


def _conditioning(spec: _Spec, seed, batch=1):
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        cross_attn = torch.randn(batch, spec.tokens, spec.context_dim, generator=g)
        extras = {"pooled_output": (torch.randn(batch, spec.pooled_dim, generator=g)
                                    if spec.pooled_dim is not None else None), **spec.extras}
    return [[cross_attn, extras]]


NAMES: list = []        # the families this module registers, in order


def _register(spec: _Spec, title, cfg, notes):
    def build(dtype=None):
        return _build(spec, dtype)

    def conditioning(seed, batch=1):
        return _conditioning(spec, seed, batch)

    notes = {"supported_model": spec.config_class, "model_base": spec.model_class,
             "network": spec.network, "unet_config": dict(spec.unet_config),
             "context_dim": spec.context_dim, "pooled_dim": spec.pooled_dim,
             "tokens": spec.tokens, "kitchen_rope": spec.config_class != "SD3", **notes}
    NAMES.append(spec.name)
    return register(Family(spec.name, title, build, conditioning, spec.latent_shape, cfg=cfg,
                           unavailable=lambda: _unavailable(spec), notes=notes))


# -- SD3.5 (medium-style MMDiT: RMS qk-norm, one x-block self-attention layer) -------------
# hidden_size is 64 * depth in MMDiT (head size 64, heads = depth): depth 1 is the smallest;
# num_blocks 2 (ComfyUI's loader sets num_blocks = depth) so one block is a full joint
# block and the last the context-pre-only one. pos_embed_max_size 32 (real 384/192) serves
# latents up to 64x64.
SD35 = _Spec(
    name="sd35", config_class="SD3", model_class="SD3",
    network="comfy.ldm.modules.diffusionmodules.mmdit:OpenAISignatureMMDITWrapper", params_class=None,
    unet_config={
        "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 1, "num_blocks": 2,
        "input_size": None, "adm_in_channels": 2048,
        "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 64}},
        "num_patches": 32 * 32, "pos_embed_max_size": 32, "qk_norm": "rms",
        "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [0],
    },
    latent_shape=(16, 8, 8), context_dim=4096, pooled_dim=2048,
)
_register(SD35, "SD3.5 (MMDiT, medium-style)", cfg=4.5, notes={
    "real": {"hidden_size": "1536 (medium) / 2432 (large)", "context": 4096, "pooled": 2048},
    "kept_real_width": "context 4096 (CLIP-L/G + T5-XXL padded) and pooled 2048 (CLIP-L 768 + CLIP-G 1280), "
                       "as the brief asks; only the context_embedder / y_embedder input sides see them"})


# -- Flux.1 dev (guidance embedded) --------------------------------------------------------
FLUX1 = _Spec(
    name="flux1", config_class="Flux", model_class="Flux",
    network="comfy.ldm.flux.model:Flux", params_class="comfy.ldm.flux.model:FluxParams",
    unet_config={
        "image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16,
        "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 64, "mlp_ratio": 4.0,
        "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 12, 12],
        "theta": 10000, "patch_size": 2, "qkv_bias": True, "txt_ids_dims": [],
    },
    version_keys=("txt_ids_dims",),
    latent_shape=(16, 8, 8), context_dim=4096, pooled_dim=768, extras={"guidance": 3.5},
)
_register(FLUX1, "Flux.1 (dev, guidance embedded)", cfg=1.0, notes={
    "real": {"hidden_size": 3072, "num_heads": 24, "axes_dim": [16, 56, 56], "depth": 19, "depth_single_blocks": 38},
    "kept_real_width": "context 4096 (T5-XXL) and pooled 768 (CLIP-L), as the brief asks",
    "guidance": "3.5 in the conditioning, as FluxGuidance sets it; cfg 1.0"})


# -- Flux.2 dev (global modulation, 128-channel patch-1 latent, guidance embedded) ---------
# Flux2's model_base pads every prompt to 512 tokens, so the text width is reduced (real
# 15360 = three Mistral-3 24B layers of 5120) or every call would project 512 x 15360.
# 32 tokens per prompt: Flux.2's prompt template alone is ~35 tokens; with 8 of 512 tokens
# the prompt moved the result ~10x less.
FLUX2 = _Spec(
    name="flux2", config_class="Flux2", model_class="Flux2",
    network="comfy.ldm.flux.model:Flux", params_class="comfy.ldm.flux.model:FluxParams",
    unet_config={
        "image_model": "flux2", "guidance_embed": True, "in_channels": 128, "out_channels": 128,
        "vec_in_dim": None, "context_in_dim": 64, "hidden_size": 64, "mlp_ratio": 3.0,
        "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 8, 8, 8],
        "theta": 2000, "patch_size": 1, "qkv_bias": False, "global_modulation": True,
        "mlp_silu_act": True, "ops_bias": False, "default_ref_method": "index",
        "ref_index_scale": 10.0, "txt_ids_dims": [3],
    },
    version_keys=("txt_ids_dims",),
    latent_shape=(128, 8, 8), context_dim=64, pooled_dim=None, extras={"guidance": 4.0}, tokens=32,
)
_register(FLUX2, "Flux.2 (dev, guidance embedded)", cfg=1.0, notes={
    "real": {"hidden_size": 6144, "num_heads": 48, "axes_dim": [32, 32, 32, 32], "context": 15360},
    "conditioning": "pooled_output None (the Mistral encoder has none); guidance 4.0 (FluxGuidance, as "
                    "Flux.2 workflows set it); model_base pads cross_attn to 512 tokens"})


# -- Chroma (Flux-like, modulations from the distilled-guidance approximator, no pooled) ---
# The approximator's input width in_dim stays 64: Chroma's forward builds it from 16 + 16
# timestep/guidance features and a 32-wide modulation index.
CHROMA = _Spec(
    name="chroma", config_class="Chroma", model_class="Chroma",
    network="comfy.ldm.chroma.model:Chroma", params_class="comfy.ldm.chroma.model:ChromaParams",
    unet_config={
        "image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": 4096,
        "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
        "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True,
        "in_dim": 64, "out_dim": 64, "hidden_dim": 64, "n_layers": 1,
        "txt_ids_dims": [], "vec_in_dim": None,
    },
    version_keys=("txt_ids_dims", "vec_in_dim"),
    latent_shape=(16, 8, 8), context_dim=4096, pooled_dim=None,
)
_register(CHROMA, "Chroma", cfg=4.0, notes={
    "real": {"hidden_size": 3072, "approximator hidden_dim": 5120, "n_layers": 5, "context": 4096},
    "kept_real_width": "context 4096 (T5-XXL, as Flux.1); approximator in_dim 64 (fixed by Chroma's forward)",
    "conditioning": "pooled_output None (T5 only); guidance left to model_base.Chroma (0)"})


# -- Qwen-Image (5-D Wan 2.1 latent) -------------------------------------------------------
QWEN = _Spec(
    name="qwen_image", config_class="QwenImage", model_class="QwenImage",
    network="comfy.ldm.qwen_image.model:QwenImageTransformer2DModel", params_class=None,
    unet_config={
        "image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16,
        "num_layers": 2, "attention_head_dim": 32, "num_attention_heads": 2,
        "joint_attention_dim": 64, "axes_dims_rope": (8, 12, 12),
    },
    latent_shape=(16, 1, 8, 8), context_dim=64, pooled_dim=None,
)
_register(QWEN, "Qwen-Image", cfg=2.5, notes={
    "real": {"inner_dim": 3072, "num_layers": 60, "joint_attention_dim": 3584, "axes_dims_rope": (16, 56, 56)},
    "conditioning": "pooled_output None (Qwen2.5-VL has none); width reduced from 3584"})


# -- Z-Image (Lumina2-style NextDiT, z_image_modulation) -----------------------------------
# dim stays 256: with z_image_modulation the timestep embedder always outputs 256 features
# and the adaLN layers take min(dim, 256), so any dim < 256 does not fit together.
ZIMAGE = _Spec(
    name="z_image", config_class="ZImage", model_class="Lumina2",
    network="comfy.ldm.lumina.model:NextDiT", params_class=None,
    unet_config={
        "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256, "cap_feat_dim": 64,
        "n_layers": 1, "n_refiner_layers": 1, "qk_norm": True, "n_heads": 4, "n_kv_heads": 4,
        "axes_dims": [16, 24, 24], "axes_lens": [1536, 512, 512], "rope_theta": 256.0,
        "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
        "pad_tokens_multiple": 32,
    },
    latent_shape=(16, 8, 8), context_dim=64, pooled_dim=None,
)
_register(ZIMAGE, "Z-Image (Turbo-style)", cfg=1.0, notes={
    "real": {"dim": 3840, "n_heads": 30, "n_layers": 30, "cap_feat_dim": 2560, "axes_dims": [32, 48, 48]},
    "kept_real_width": "dim 256: the smallest z_image_modulation allows (timestep embedding is 256 wide)",
    "conditioning": "pooled_output None (the Qwen3-4B encoder has none); width reduced from 2560; "
                    "cfg 1.0 as Z-Image Turbo runs"})


def param_count(patcher) -> int:
    return sum(p.numel() for p in patcher.model.diffusion_model.parameters())
