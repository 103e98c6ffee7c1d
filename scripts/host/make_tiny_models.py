"""Generate the tiny random models the tests and the demo run on, from a fixed seed.

Run with the host venv's python, ComfyUI's folder on sys.path (setup_host.py does this).
Every model is built from ComfyUI's own classes, so the files have exactly the layout
the stock loaders expect; weights are random (seeded), so outputs are meaningless
pictures but every code path (loading, patching, sampling, decoding) is real.

    unet/tiny-sd15-unet.safetensors      UNETLoader: smallest SD1.5-detectable UNet
    text_encoders/tiny-clip-l.safetensors CLIPLoader(type=stable_diffusion): CLIP-L shape
    vae_approx/taesd_{encoder,decoder}.safetensors  VAELoader("taesd")
    unet/tiny-sd15-{fp32,fp16,bf16,scaled_fp8,mixed_fp8}.safetensors  one UNet in each
        weight format users load (build_weight_formats)
    tiny/unet32.safetensors + unet32.json  a ~32-channel UNet for fast in-process tests
    tiny/clip_vision.safetensors + clip_vision.json  a small CLIP vision model for
        comfy.clip_vision.ClipVisionModel(json) (the stock CLIPVisionLoader detects only
        full-size configs: ViT-L/14 at 224 px is the smallest, ~300 M parameters)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

SEED = 20261122

# Smallest UNet stock model_detection accepts as SD1.5: model_channels 320 and
# context_dim 768 are required; one level, one res block, one input transformer,
# no output transformer and no middle block keep it at ~14 M parameters.
SD15_DETECTABLE = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "model_channels": 320, "num_res_blocks": [1], "channel_mult": [1],
    "transformer_depth": [1], "transformer_depth_output": [0, 0],
    "transformer_depth_middle": -2, "use_spatial_transformer": True, "legacy": False,
    "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
    "use_linear_in_transformer": False, "adm_in_channels": None,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}

# The fast in-process UNet: two levels, attention at both, cross-attention on CLIP-L width.
UNET32 = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "model_channels": 32, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
    "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
    "transformer_depth_middle": 1, "use_spatial_transformer": True, "legacy": False,
    "context_dim": 768, "num_heads": 4, "num_head_channels": -1,
    "use_linear_in_transformer": False, "adm_in_channels": None,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}


def randomize_(module, generator, gain=1.0):
    """ComfyUI's ops skip weight init (torch.empty); give every tensor a sane random value."""
    import torch
    for name, p in list(module.named_parameters()) + list(module.named_buffers()):
        if not p.is_floating_point():
            continue
        with torch.no_grad():
            leaf = name.rsplit(".", 1)[-1]
            if "norm" in name or "ln_" in name or p.dim() == 1 and leaf == "weight":
                p.fill_(1.0) if leaf == "weight" else p.zero_()
            elif leaf == "bias" or p.dim() == 1:
                p.zero_()
            elif "embedding" in name:
                p.normal_(0.0, 0.02, generator=generator)
            else:
                fan_in = p[0].numel()
                p.normal_(0.0, gain / math.sqrt(fan_in), generator=generator)


def build_unet(config, generator, dtype):
    import comfy.supported_models
    import torch
    cfg = dict(config)
    model_config = comfy.supported_models.SD15(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    randomize_(model.diffusion_model, generator, gain=0.5)
    return {k: v.to(dtype).contiguous() for k, v in model.diffusion_model.state_dict().items()}


def build_clip_l(generator):
    import comfy.sd1_clip
    import torch
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    randomize_(clip.transformer, generator)
    sd = clip.transformer.state_dict()
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    return {k: v.to(torch.float16).contiguous() for k, v in sd.items()}


# A small CLIP vision model of ComfyUI's own class (CLIPVisionModelProjection), for the
# CLIP-vision guidance loss's tests: 48-px input (decoded 32/64-px images are resized to
# it), 3x3 patches of 16 px, two layers of width 64.
CLIP_VISION = {
    "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 64,
    "image_size": 48, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 128,
    "layer_norm_eps": 1e-05, "model_type": "clip_vision_model", "num_attention_heads": 4,
    "num_channels": 3, "num_hidden_layers": 2, "patch_size": 16, "projection_dim": 32,
    "torch_dtype": "float32",
}


def build_clip_vision(generator):
    import comfy.clip_model
    import comfy.ops
    model = comfy.clip_model.CLIPVisionModelProjection(CLIP_VISION, None, "cpu", comfy.ops.manual_cast)
    randomize_(model, generator)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def build_taesd(generator):
    import comfy.taesd.taesd as taesd
    import torch
    enc, dec = taesd.Encoder(), taesd.Decoder()
    randomize_(enc, generator)
    randomize_(dec, generator)
    return ({k: v.contiguous() for k, v in enc.state_dict().items()},
            {k: v.contiguous() for k, v in dec.state_dict().items()})


# Weight formats of one UNet, for the weight-format tests: a float32 master from its own
# seed, and the ways users' files store it. Quantised files quantise the Linear layers
# (the attention and feed-forward projections, the time embedding), per tensor, with an
# absmax scale, as the common fp8_scaled releases do; everything else stays float32 so
# the only rounding in those files is the format's own.
FORMAT_NAMES = ("fp32", "fp16", "bf16", "scaled_fp8", "mixed_fp8")


def _fp8_with_scale(w):
    import torch
    scale = (w.abs().max().float() / torch.finfo(torch.float8_e4m3fn).max).clamp_min(1e-12)
    return (w.float() / scale).to(torch.float8_e4m3fn), scale.reshape(()).float()


def build_weight_formats(generator):
    """{name: (state_dict, safetensors metadata)} for every name in FORMAT_NAMES."""
    import json
    import torch
    master = build_unet(SD15_DETECTABLE, generator, torch.float32)
    linear = [k[:-len(".weight")] for k, v in master.items() if k.endswith(".weight") and v.dim() == 2]
    out = {"fp32": (master, None),
           "fp16": ({k: v.half() for k, v in master.items()}, None),
           "bf16": ({k: v.bfloat16() for k, v in master.items()}, None)}
    legacy, mixed = dict(master), dict(master)
    for layer in linear:
        q, scale = _fp8_with_scale(master[layer + ".weight"])
        legacy[layer + ".weight"], legacy[layer + ".scale_weight"] = q, scale
        mixed[layer + ".weight"], mixed[layer + ".weight_scale"] = q, scale
    legacy["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)   # the legacy marker key
    out["scaled_fp8"] = (legacy, None)
    meta = {"format_version": "1.0", "layers": {layer: {"format": "float8_e4m3fn"} for layer in linear}}
    out["mixed_fp8"] = (mixed, {"_quantization_metadata": json.dumps(meta)})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="models folder (gets unet/, text_encoders/, vae_approx/, tiny/)")
    args = ap.parse_args(argv)

    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # before anything reaches comfy.model_management
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    for sub in ("unet", "text_encoders", "vae_approx", "tiny"):
        os.makedirs(os.path.join(args.out, sub), exist_ok=True)

    save_file(build_unet(SD15_DETECTABLE, g, torch.float16),
              os.path.join(args.out, "unet", "tiny-sd15-unet.safetensors"))
    save_file(build_unet(UNET32, g, torch.float32), os.path.join(args.out, "tiny", "unet32.safetensors"))
    with open(os.path.join(args.out, "tiny", "unet32.json"), "w") as f:
        json.dump(UNET32, f, indent=1)
    save_file(build_clip_l(g), os.path.join(args.out, "text_encoders", "tiny-clip-l.safetensors"))
    enc, dec = build_taesd(g)
    save_file(enc, os.path.join(args.out, "vae_approx", "taesd_encoder.safetensors"))
    save_file(dec, os.path.join(args.out, "vae_approx", "taesd_decoder.safetensors"))
    # its own generator, so the models above keep their exact weights
    save_file(build_clip_vision(torch.Generator().manual_seed(SEED + 1)),
              os.path.join(args.out, "tiny", "clip_vision.safetensors"))
    with open(os.path.join(args.out, "tiny", "clip_vision.json"), "w") as f:
        json.dump(CLIP_VISION, f, indent=1)
    for name, (sd, metadata) in build_weight_formats(torch.Generator().manual_seed(SEED + 2)).items():
        save_file({k: v.contiguous() for k, v in sd.items()},
                  os.path.join(args.out, "unet", f"tiny-sd15-{name}.safetensors"), metadata=metadata)
    print(f"tiny models written to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
