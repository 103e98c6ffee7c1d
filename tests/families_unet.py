"""Tiny UNet model families: SD1.5 (EPS), SD2.x v-prediction, SDXL, Playground v2.5 (EDM).

Each is built as ComfyUI builds the real one, from its supported_models class:
`model_config = comfy.supported_models.X(unet_config)`, `set_inference_dtype(dtype, None)`,
`model_config.get_model(state_dict)` (or, for SD2 v-prediction, the BaseModel get_model
would pick for a real SD2-v checkpoint, see below), random seeded weights loaded with
`load_state_dict` under torch.inference_mode() (inference tensors, as ComfyUI's loaders
leave them), then `comfy.model_patcher.ModelPatcher(model, load_device, offload_device)`.

Widths: 32 base channels, two levels, one res block and one transformer (depth 1) per
attention level, as far as each class allows:
- SD1.5: the 32-channel UNET32 of scripts/host/make_tiny_models.py; the SD15 class forces
  num_heads 8 (so 4- and 8-channel heads); attention at both levels and in the middle.
- SD2.x / SDXL / Playground: their classes force num_head_channels 64 (SD20's and BASE's
  unet_extra_config, applied after the config we pass), so attention can only sit where a
  level has >= 64 channels: the second level (64 = 1 head) and the middle block, none at
  the first (SDXL has none at its first level either).
- Real widths kept: the cross-attention widths (SD1.5 768, SD2 1024, SDXL 2048) and the
  pooled widths (768 / 1024 / 1280) are what the text encoders emit and what the pack's
  conditioning code sees; they only size the attention k/v projections (and SDXL's
  label_emb), so keeping them costs < 1 M parameters. SDXL's adm_in_channels stays 2816:
  model_base.SDXL.encode_adm builds it as pooled (1280) + 6 x Timestep(256) size/crop
  embeddings, so it is fixed by the pooled width.

Model types, as ComfyUI picks them:
- "sd15": SD15.get_model -> model_base.BaseModel, EPS, ModelSamplingDiscrete.
- "sd2_v": SD20.model_type detects v-prediction from the weights (the std of
  output_blocks.11.1.transformer_blocks.0.norm1.bias, a block a two-level UNet does not
  have), so the model is built as SD20.get_model builds it for a real SD2-v file:
  model_base.BaseModel(model_config, ModelType.V_PREDICTION).
- "sdxl": SDXL.get_model({}) -> model_base.SDXL, EPS (no "v_pred"/"edm_*" keys).
- "playground_v25": SDXL.get_model({"edm_mean", "edm_std"}) -> model_base.SDXL, EDM: the keys
  a Playground v2.5 checkpoint carries make SDXL.model_type switch the latent format to
  SDXL_Playground_2_5 (tensor latents_mean/std), sigma_data 0.5, sigma 0.002..80 and
  ModelSamplingContinuousEDM, exactly as for the real file.

Conditioning is what the stock text encode nodes return: CLIPTextEncode gives
[[cond, {"pooled_output": pooled}]] for every family (SD1/SD2 text encoders return a pooled
vector too, unused by their UNet); "sdxl" carries CLIPTextEncodeSDXL's keys as well
(width, height, crop_w, crop_h, target_width, target_height = 1024/1024/0/0/1024/1024, the
node's defaults); "playground_v25" carries plain CLIPTextEncode's (SDXL.encode_adm then
uses its defaults), as Playground's stock workflow does. Tensors are seeded N(0, 1) float32
inference tensors (text encode nodes run under inference mode); `conditioning(seed, batch,
dtype=None)` casts them (same values) where a dtype is given. notes["unread_keys"] names the
entries the UNet never reads (SD1.5/SD2: pooled_output, no adm input): their gradient is
exactly zero.

float64 builds (finite-difference tests): the model is constructed with inference dtype
float64 (float64 weights, `diffusion_model.dtype` float64, manual_cast None), the
model_sampling buffers are cast too, and the patcher gets `float64_apply_model` as its
unet function wrapper: it calls the model's own apply_model with `Tensor.float()` keeping
float64 tensors float64 (BaseModel._apply_model ends with `model_output.float()`, which
would round every denoised output to float32), as guider_harness.float64_everywhere() does
for a whole run; a test that sets its own unet function wrapper replaces it and then needs
float64_everywhere(). Weights are the float32 weights cast up, so the float32 and float64
builds of a family are the same function.

Module import must not import comfy: pytest reads the family names at collection time.
"""
from __future__ import annotations

import sys
from pathlib import Path

from model_families import Family, register

REPO = Path(__file__).resolve().parents[1]
SEED = 20261122
GAIN = 0.5          # randomize_ gain for the UNet weights (make_tiny_models uses 0.5 too)

_COMMON = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "use_spatial_transformer": True, "legacy": False,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}

# Two levels (32, 64 channels); attention (depth 1) at the 64-channel level and the middle.
# transformer_depth_output is read shallow -> deep (UNetModel pops it from the end).
_TWO_LEVEL_HEAD64 = {
    **_COMMON, "model_channels": 32, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
    "transformer_depth": [0, 1], "transformer_depth_output": [0, 0, 1, 1],
    "transformer_depth_middle": 1, "use_linear_in_transformer": True,
}

SD2_UNET = {**_TWO_LEVEL_HEAD64, "context_dim": 1024, "adm_in_channels": None}
SDXL_UNET = {**_TWO_LEVEL_HEAD64, "context_dim": 2048, "num_classes": "sequential",
             "adm_in_channels": 2816}


def _make_tiny_models():
    path = str(REPO / "scripts" / "host")
    if path not in sys.path:
        sys.path.append(path)
    import make_tiny_models
    return make_tiny_models


def _sd15_unet():
    return dict(_make_tiny_models().UNET32)


# name -> how to build it
_SPECS = {
    "sd15": dict(config_class="SD15", unet=_sd15_unet, model_type=None, probe={},
                 base_model="BaseModel", sampling="EPS", seed=SEED + 101,
                 context=768, pooled=768, sdxl_sizes=False),
    "sd2_v": dict(config_class="SD20", unet=lambda: dict(SD2_UNET), model_type="V_PREDICTION", probe=None,
                  base_model="BaseModel", sampling="V_PREDICTION", seed=SEED + 102,
                  context=1024, pooled=1024, sdxl_sizes=False),
    "sdxl": dict(config_class="SDXL", unet=lambda: dict(SDXL_UNET), model_type=None, probe={},
                 base_model="SDXL", sampling="EPS", seed=SEED + 103,
                 context=2048, pooled=1280, sdxl_sizes=True),
    "playground_v25": dict(config_class="SDXL", unet=lambda: dict(SDXL_UNET), model_type=None,
                           probe="edm", base_model="SDXL", sampling="EDM", seed=SEED + 104,
                           context=2048, pooled=1280, sdxl_sizes=False),
}

_WEIGHTS: dict = {}     # name -> float32 state dict of the diffusion model (seeded)
_BUILT: dict = {}       # (name, dtype) -> ModelPatcher (build() hands out clones)


def _probe_state_dict(spec):
    """The state-dict keys get_model reads for the model type (not weights)."""
    import torch
    if spec["probe"] == "edm":
        # what a Playground v2.5 checkpoint carries; SDXL.model_type only tests presence
        return {"edm_mean": torch.tensor([-1.6574, 1.886, -1.383, 2.5155]).view(1, 4, 1, 1),
                "edm_std": torch.tensor([8.4927, 5.9022, 6.5498, 5.2299]).view(1, 4, 1, 1)}
    return dict(spec["probe"] or {})


def _make_model(name, dtype):
    """The family's BaseModel (random-init weights from ComfyUI's ops: torch.empty)."""
    import comfy.model_base
    import comfy.supported_models
    spec = _SPECS[name]
    model_config = getattr(comfy.supported_models, spec["config_class"])(spec["unet"]())
    model_config.set_inference_dtype(dtype, None)
    if spec["model_type"] is None:
        model = model_config.get_model(_probe_state_dict(spec))
    else:
        model = comfy.model_base.BaseModel(model_config, model_type=getattr(comfy.model_base.ModelType, spec["model_type"]))
        if model_config.inpaint_model():
            model.set_inpaint()
    want = getattr(comfy.model_base, spec["base_model"])
    if type(model) is not want:
        raise RuntimeError(f"{name}: built {type(model).__name__}, expected model_base.{want.__name__}")
    return model


def _weights(name):
    import torch
    if name not in _WEIGHTS:
        model = _make_model(name, torch.float32)
        g = torch.Generator().manual_seed(_SPECS[name]["seed"])
        _make_tiny_models().randomize_(model.diffusion_model, g, gain=GAIN)
        _WEIGHTS[name] = {k: v.detach().clone() for k, v in model.diffusion_model.state_dict().items()}
    return _WEIGHTS[name]


def float64_apply_model(apply_model, args):
    """The model's own apply_model (APPLY_MODEL wrappers, BaseModel._apply_model), with
    `Tensor.float()` keeping float64 tensors float64 for the call: _apply_model ends with
    `model_output.float()` (and casts the timestep with `.float()`), which would round every
    denoised output of a float64 model to float32. Same effect as
    guider_harness.float64_everywhere(), and nests with it."""
    import torch
    original = torch.Tensor.float

    def keep_float64(self, *a, **k):
        return self if self.dtype == torch.float64 else original(self, *a, **k)
    torch.Tensor.float = keep_float64
    try:
        return apply_model(args["input"], args["timestep"], **args["c"])
    finally:
        torch.Tensor.float = original


def _build(name, dtype=None):
    import torch
    dtype = torch.float32 if dtype is None else dtype
    key = (name, dtype)
    if key not in _BUILT:
        import comfy.model_management
        import comfy.model_patcher
        sd = {k: v.to(dtype) for k, v in _weights(name).items()}
        with torch.inference_mode():
            model = _make_model(name, dtype)
            model.diffusion_model.load_state_dict(sd, strict=True)
            if dtype == torch.float64:
                model.to(torch.float64)             # model_sampling's sigmas, SDXL's noise_augmentor
                model.diffusion_model.dtype = torch.float64
                model.manual_cast_dtype = None
        patcher = comfy.model_patcher.ModelPatcher(model, comfy.model_management.get_torch_device(),
                                                   comfy.model_management.unet_offload_device())
        if dtype == torch.float64:
            patcher.set_model_unet_function_wrapper(float64_apply_model)
        _BUILT[key] = patcher
    return _BUILT[key].clone()


def _conditioning(name, seed, batch=1, dtype=None):
    import torch
    spec = _SPECS[name]
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        cond = torch.randn(batch, 77, spec["context"], generator=g)
        extras = {"pooled_output": torch.randn(batch, spec["pooled"], generator=g)}
        if dtype is not None:
            cond = cond.to(dtype)
            extras["pooled_output"] = extras["pooled_output"].to(dtype)
    if spec["sdxl_sizes"]:
        extras.update(width=1024, height=1024, crop_w=0, crop_h=0, target_width=1024, target_height=1024)
    return [[cond, extras]]


def _unavailable(name):
    def check():
        import comfy.model_base
        import comfy.model_sampling
        import comfy.supported_models
        spec = _SPECS[name]
        if not hasattr(comfy.supported_models, spec["config_class"]):
            return f"this ComfyUI has no comfy.supported_models.{spec['config_class']}"
        if not hasattr(comfy.model_base, spec["base_model"]):
            return f"this ComfyUI has no comfy.model_base.{spec['base_model']}"
        if not hasattr(comfy.model_sampling, spec["sampling"]):
            return f"this ComfyUI has no comfy.model_sampling.{spec['sampling']}"
        if name == "playground_v25":
            import comfy.latent_formats
            if not hasattr(comfy.latent_formats, "SDXL_Playground_2_5"):
                return "this ComfyUI has no comfy.latent_formats.SDXL_Playground_2_5"
            if not hasattr(comfy.model_sampling, "ModelSamplingContinuousEDM"):
                return "this ComfyUI has no comfy.model_sampling.ModelSamplingContinuousEDM"
        return None
    return check


def _family(name, title, cfg, notes):
    spec = _SPECS[name]
    return register(Family(
        name=name, title=title,
        build=lambda dtype=None: _build(name, dtype),
        conditioning=lambda seed, batch=1, dtype=None: _conditioning(name, seed, batch, dtype),
        latent_shape=(4, 8, 8), cfg=cfg, unavailable=_unavailable(name),
        notes={"supported_model": spec["config_class"], "base_model": spec["base_model"],
               "sampling": spec["sampling"], "context_dim": spec["context"],
               "pooled_dim": spec["pooled"], **notes}))


# unread_keys: conditioning entries the stock text encoder emits but the UNet never reads
# (SD1/SD2 have no adm input): their gradient is exactly zero.
_family("sd15", "SD1.5", 7.5,
        {"unet": "UNET32 (make_tiny_models): 32/64 channels, attention at both levels, 8 heads",
         "unread_keys": ("pooled_output",)})
_family("sd2_v", "SD2.x (v-prediction)", 7.0,
        {"unet": "32/64 channels, linear transformers, attention at 64 ch + middle, 64-channel heads",
         "model_type": "V_PREDICTION set directly (SD20 detects it from full-size weights)",
         "unread_keys": ("pooled_output",)})
_family("sdxl", "SDXL", 7.0,
        {"unread_keys": (), "unet": "32/64 channels, attention at 64 ch + middle, 64-channel heads, adm 2816",
         "conditioning": "CLIPTextEncodeSDXL keys: pooled_output + width/height/crop/target sizes"})
_family("playground_v25", "Playground v2.5 (SDXL, EDM)", 3.0,
        {"unread_keys": (), "unet": "as sdxl", "model_type": "EDM via SDXL.model_type({'edm_mean','edm_std'})",
         "conditioning": "CLIPTextEncode keys: pooled_output"})
