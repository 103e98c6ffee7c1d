"""ComfyUI 0.33's new flow samplings through a real server, with the stock patch nodes:
ModelNoiseScale (scaled noise, HiDream-O1 style) and ModelSamplingDiscrete's
img_to_img_flow (WAN 2.1 FlowRVS style), on the tiny SD1.5 UNet. Skipped on servers that
lack those nodes/options (ComfyUI < 0.33).
"""
import pytest
import torch
from safetensors.torch import load as load_safetensors

STEPS = 4


def base_graph():
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-sd15-unet.safetensors",
                                                        "weight_dtype": "default"}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny-clip-l.safetensors",
                                                        "type": "stable_diffusion", "device": "default"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "a red fox in the snow"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "blurry"}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
    }


def adjoint_inputs(model, loss, **overrides):
    inputs = {"model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
              "loss": loss, "seed": 7, "steps": STEPS, "cfg": 1.0, "scheduler": "simple", "solver": "dpmpp_1",
              "gradient": "exact", "adjoint_steps": 0, "optimize": "noise", "iterations": 1,
              "learning_rate": 0.01, "renormalize_noise": True, "max_grad_norm": 0.0, "early_stop_patience": 0,
              "denoise": 1.0}
    inputs.update(overrides)
    return inputs


def saved(server, entry, node):
    return load_safetensors(server.view(entry["outputs"][node]["latents"][0]))["latent_tensor"]


def test_scaled_noise_first_iterate_is_the_stock_euler_sample(server):
    if "ModelNoiseScale" not in server.object_info():
        pytest.skip("this ComfyUI has no ModelNoiseScale node (scaled-noise flow sampling arrived in 0.33)")
    g = base_graph()
    g["flow"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["unet", 0], "shift": 3.0}}
    g["scaled"] = {"class_type": "ModelNoiseScale", "inputs": {"model": ["flow", 0], "noise_scale": 8.0}}
    g["target"] = {"class_type": "KSampler", "inputs": {
        "model": ["scaled", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
        "seed": 7, "steps": STEPS, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}
    g["loss"] = {"class_type": "AdjointGuidance_LossLatentTarget",
                 "inputs": {"target": ["target", 0], "metric": "mse", "weight": 1.0}}
    g["adjoint"] = {"class_type": "AdjointGuidance_AdjointSampler", "inputs": adjoint_inputs(["scaled", 0], ["loss", 0])}
    g["save_target"] = {"class_type": "SaveLatent", "inputs": {"samples": ["target", 0], "filename_prefix": "ns/target"}}
    g["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["adjoint", 0], "filename_prefix": "ns/adjoint"}}
    entry = server.run(g, timeout=600)
    target = saved(server, entry, "save_target")
    first = entry["outputs"]["adjoint"]["adjoint_guidance_loss"][0]["losses"][0]
    assert first < 1e-10 * float(target.square().mean()), first
    assert torch.isfinite(saved(server, entry, "save")).all()


def test_img_to_img_flow_is_refused_with_a_clear_error(server):
    options = server.object_info("ModelSamplingDiscrete")["input"]["required"]["sampling"][0]
    if "img_to_img_flow" not in options:
        pytest.skip("this ComfyUI has no img_to_img_flow sampling (IMG_TO_IMG_FLOW arrived in 0.33)")
    g = base_graph()
    g["rvs"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["unet", 0], "sampling": "img_to_img_flow",
                                                                 "zsnr": False}}
    g["loss"] = {"class_type": "AdjointGuidance_LossLatentTarget",
                 "inputs": {"target": ["empty", 0], "metric": "mse", "weight": 1.0}}
    g["adjoint"] = {"class_type": "AdjointGuidance_AdjointSampler",
                    "inputs": adjoint_inputs(["rvs", 0], ["loss", 0], optimize="prompt", scheduler="karras")}
    g["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["adjoint", 0], "filename_prefix": "rvs/x"}}
    entry = server.run(g, check=False)
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_id"] == "adjoint"
    assert errors[0]["exception_message"].startswith(
        "Adjoint Sampler: model: its sampling (IMG_TO_IMG_FLOW) starts from the input latent itself"), errors[0]
