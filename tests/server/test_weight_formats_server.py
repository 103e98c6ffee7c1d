"""Every weight format users load, through a real server: the Adjoint Sampler optimises,
our SAMPLER replays its result in SamplerCustomAdvanced, and the shared MODEL is left
exactly as it was for the stock samplers.

The files are one UNet stored each way (make_tiny_models.build_weight_formats); the fp8
options are UNETLoader's own `weight_dtype` casts of the float32 file. Gradients per
format are checked against float32 in tests/inprocess/test_weight_formats.py.
"""
import pytest
import torch
from safetensors.torch import load as load_safetensors

CLIP = "tiny-clip-l.safetensors"
FORMATS = {
    "fp32": ("tiny-sd15-fp32.safetensors", "default"),
    "fp16": ("tiny-sd15-fp16.safetensors", "default"),
    "bf16": ("tiny-sd15-bf16.safetensors", "default"),
    "fp8_e4m3fn": ("tiny-sd15-fp32.safetensors", "fp8_e4m3fn"),
    "fp8_e4m3fn_fast": ("tiny-sd15-fp32.safetensors", "fp8_e4m3fn_fast"),
    "fp8_e5m2": ("tiny-sd15-fp32.safetensors", "fp8_e5m2"),
    "scaled_fp8": ("tiny-sd15-scaled_fp8.safetensors", "default"),
    "mixed_fp8": ("tiny-sd15-mixed_fp8.safetensors", "default"),
}
STEPS = 4


def base(fmt):
    name, weight_dtype = FORMATS[fmt]
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": weight_dtype}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP, "type": "stable_diffusion",
                                                         "device": "default"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "a lighthouse"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "fog"}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
    }


def ksampler(seed):
    return {"class_type": "KSampler", "inputs": {
        "model": ["unet", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
        "seed": seed, "steps": STEPS, "cfg": 2.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
        "denoise": 1.0}}


def stock_graph(fmt, prefix):
    return {**base(fmt), "stock": ksampler(11),
            "save": {"class_type": "SaveLatent", "inputs": {"samples": ["stock", 0], "filename_prefix": prefix}}}


def adjoint_graph(fmt, prefix):
    return {**base(fmt), "target": ksampler(7),
            "loss": {"class_type": "AdjointGuidance_LossLatentTarget",
                     "inputs": {"target": ["target", 0], "metric": "mse", "weight": 1.0}},
            "adjoint": {"class_type": "AdjointGuidance_AdjointSampler", "inputs": {
                "model": ["unet", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                "latent_image": ["empty", 0], "loss": ["loss", 0], "seed": 1, "steps": STEPS, "cfg": 2.0,
                "scheduler": "karras", "solver": "dpmpp_2m", "gradient": "exact", "adjoint_steps": 0,
                "optimize": "noise + prompt", "iterations": 10, "learning_rate": 0.1,
                "renormalize_noise": False, "max_grad_norm": 0.0, "early_stop_patience": 0, "denoise": 1.0}},
            "save": {"class_type": "SaveLatent", "inputs": {"samples": ["adjoint", 0], "filename_prefix": prefix}},
            # the optimised noise and prompt replayed by our SAMPLER in SamplerCustomAdvanced
            "noise": {"class_type": "AdjointGuidance_NoiseFromLatent", "inputs": {"noise": ["adjoint", 1], "seed": 0}},
            "guider": {"class_type": "CFGGuider", "inputs": {"model": ["unet", 0], "positive": ["adjoint", 2],
                                                             "negative": ["neg", 0], "cfg": 2.0}},
            "solver": {"class_type": "AdjointGuidance_SolverSampler", "inputs": {"solver": "dpmpp_2m"}},
            "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["unet", 0], "scheduler": "karras",
                                                                  "steps": STEPS, "denoise": 1.0}},
            "replay": {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["solver", 0], "sigmas": ["sigmas", 0],
                "latent_image": ["empty", 0]}},
            "save_replay": {"class_type": "SaveLatent", "inputs": {"samples": ["replay", 0],
                                                                   "filename_prefix": prefix + "-replay"}}}


def saved_latent(server, entry, node="save"):
    return load_safetensors(server.view(entry["outputs"][node]["latents"][0]))["latent_tensor"]


def cached_nodes(entry):
    return sum((m[1].get("nodes", []) for m in entry["status"]["messages"] if m[0] == "execution_cached"), [])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_format_optimises_and_leaves_the_model_as_it_was(server, fmt):
    before = saved_latent(server, server.run(stock_graph(fmt, f"fmt/{fmt}-before")))
    entry = server.run(adjoint_graph(fmt, f"fmt/{fmt}-adjoint"), timeout=600)
    report = entry["outputs"]["adjoint"]["adjoint_guidance_loss"][0]
    losses = report["losses"]
    assert report["stop_reason"] == "iterations" and len(losses) == 11
    assert report["best_loss"] <= 0.5 * losses[0], (fmt, losses)
    optimized = saved_latent(server, entry)
    assert torch.isfinite(optimized).all()
    assert torch.equal(saved_latent(server, entry, "save_replay"), optimized), f"{fmt}: the replay differs"

    after_entry = server.run(stock_graph(fmt, f"fmt/{fmt}-after"))
    assert "unet" in cached_nodes(after_entry), "the MODEL was reloaded; the check proves nothing"
    assert "stock" not in cached_nodes(after_entry), "KSampler was served from the cache"
    assert torch.equal(before, saved_latent(server, after_entry)), f"{fmt}: the stock sample changed"

