"""Patches users stack, through a real ComfyUI server: a LoRA (LoraLoaderModelOnly) and a
ControlNet (ControlNetLoader + ControlNetApplyAdvanced over 20-80 %) on the tiny SD1.5 UNet.
Each changes what a stock KSampler gives; with both, the Adjoint Sampler's loss falls, and a
stock KSampler on the same patched MODEL gives bit-identical output before and after it.

The server is this module's own (its extra model paths hold the LoRA and ControlNet files,
written at set-up from the test host's UNet file: no ComfyUI import here). The exact
gradients under each patch are checked against finite differences in
tests/inprocess/test_patches.py.
"""
import math

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save_file

from comfy_harness import MODELS, ComfyServer

UNET = "tiny-sd15-unet.safetensors"
CLIP = "tiny-clip-l.safetensors"
LORA = "tiny-sd15-lora.safetensors"
CONTROLNET = "tiny-sd15-controlnet.safetensors"
STEPS = 4
CFG = 2.0
RANK = 4


def seeded(shape, g, scale=1.0):
    return (scale * torch.randn(shape, generator=g)).contiguous()


def lora_for(unet: dict, seed=17) -> dict:
    """kohya-style `lora_unet_<ldm key>` LoRA (lora_up / lora_down / alpha) on every attention,
    feed-forward and projection weight of the UNet's transformer and its res-block convs."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, w in sorted(unet.items()):
        if not key.endswith(".weight") or w.ndim not in (2, 4) or not key.startswith("input_blocks.1."):
            continue
        name = "lora_unet_" + key[:-len(".weight")].replace(".", "_")
        fan_in = w[0].numel()
        out[f"{name}.lora_down.weight"] = seeded((RANK, w.shape[1], *w.shape[2:]), g, 1 / math.sqrt(fan_in))
        out[f"{name}.lora_up.weight"] = seeded((w.shape[0], RANK, *([1, 1] if w.ndim == 4 else [])), g,
                                               0.3 / math.sqrt(RANK))
        out[f"{name}.alpha"] = torch.tensor(float(RANK))
    return out


def controlnet_for(unet: dict, seed=23) -> dict:
    """An SD1.5 ControlNet (comfy.cldm.cldm.ControlNet's keys, ldm format) for the UNet: its
    encoder copied from the UNet, as ControlNets are initialised; a middle res block (the tiny
    UNet has no middle block: a copy of its first res block), the hint block and the zero
    convolutions random (a trained ControlNet's are not zero). ControlNetLoader detects it as
    SD1.5 from these keys."""
    g = torch.Generator().manual_seed(seed)
    ch = unet["input_blocks.0.0.weight"].shape[0]
    sd = {k: v.float().clone() for k, v in unet.items() if k.startswith(("time_embed.", "input_blocks."))}
    sd.update({k.replace("input_blocks.1.0.", "middle_block.0."): v.float().clone()
               for k, v in unet.items() if k.startswith("input_blocks.1.0.")})
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("input_blocks.")})
    for i in blocks:
        sd[f"zero_convs.{i}.0.weight"] = seeded((ch, ch, 1, 1), g, 0.5 / math.sqrt(ch))
        sd[f"zero_convs.{i}.0.bias"] = torch.zeros(ch)
    sd["middle_block_out.0.weight"] = seeded((ch, ch, 1, 1), g, 0.5 / math.sqrt(ch))
    sd["middle_block_out.0.bias"] = torch.zeros(ch)
    hint = [(3, 16), (16, 16), (16, 32), (32, 32), (32, 96), (96, 96), (96, 256), (256, ch)]
    for j, (cin, cout) in enumerate(hint):
        sd[f"input_hint_block.{2 * j}.weight"] = seeded((cout, cin, 3, 3), g, 1.0 / math.sqrt(9 * cin))
        sd[f"input_hint_block.{2 * j}.bias"] = torch.zeros(cout)
    return {k: v.half().contiguous() for k, v in sd.items()}   # stored as the UNet is, fp16


@pytest.fixture(scope="module")
def patch_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("patch_server")
    unet = load_file(str(MODELS / "unet" / UNET))
    for folder, name, sd in (("loras", LORA, lora_for(unet)), ("controlnet", CONTROLNET, controlnet_for(unet))):
        (root / "models" / folder).mkdir(parents=True, exist_ok=True)
        save_file(sd, str(root / "models" / folder / name))
    config = root / "extra_model_paths.yaml"
    config.write_text(f"adjoint_guidance_patches:\n  base_path: {root / 'models'}\n"
                      "  loras: loras\n  controlnet: controlnet\n")
    server = ComfyServer(root / "server", extra_model_paths=[config])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def base_graph():
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "lora": {"class_type": "LoraLoaderModelOnly",
                 "inputs": {"model": ["unet", 0], "lora_name": LORA, "strength_model": 1.0}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP, "type": "stable_diffusion",
                                                         "device": "default"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "a lighthouse at dusk"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "fog"}},
        "cnload": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": CONTROLNET}},
        "hint": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1,
                                                         "color": 0x3080C0}},
        "cn": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cnload", 0], "image": ["hint", 0],
            "strength": 1.0, "start_percent": 0.2, "end_percent": 0.8}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
    }


def ksampler(model, positive, negative, seed):
    return {"class_type": "KSampler", "inputs": {
        "model": model, "positive": positive, "negative": negative, "latent_image": ["empty", 0],
        "seed": seed, "steps": STEPS, "cfg": CFG, "sampler_name": "dpmpp_2m", "scheduler": "karras",
        "denoise": 1.0}}


def save(node, prefix):
    return {"class_type": "SaveLatent", "inputs": {"samples": [node, 0], "filename_prefix": prefix}}


def stock_graph(prefix):
    """KSamplers (seed 11) on the plain UNet, with the LoRA, and with LoRA + ControlNet."""
    g = base_graph()
    g["k_plain"] = ksampler(["unet", 0], ["pos", 0], ["neg", 0], 11)
    g["k_lora"] = ksampler(["lora", 0], ["pos", 0], ["neg", 0], 11)
    g["k_both"] = ksampler(["lora", 0], ["cn", 0], ["cn", 1], 11)
    for k in ("k_plain", "k_lora", "k_both"):
        g["save_" + k] = save(k, f"{prefix}/{k}")
    return g


def adjoint_graph():
    g = base_graph()
    g["target"] = ksampler(["lora", 0], ["cn", 0], ["cn", 1], 7)
    g["loss"] = {"class_type": "AdjointGuidance_LossLatentTarget",
                 "inputs": {"target": ["target", 0], "metric": "mse", "weight": 1.0}}
    g["adjoint"] = {"class_type": "AdjointGuidance_AdjointSampler", "inputs": {
        "model": ["lora", 0], "positive": ["cn", 0], "negative": ["cn", 1], "latent_image": ["empty", 0],
        "loss": ["loss", 0], "seed": 1, "steps": STEPS, "cfg": CFG, "scheduler": "karras", "solver": "dpmpp_2m",
        "gradient": "exact", "adjoint_steps": 0, "optimize": "noise + prompt", "iterations": 8,
        "learning_rate": 0.1, "renormalize_noise": False, "max_grad_norm": 0.0, "early_stop_patience": 0,
        "denoise": 1.0}}
    g["save"] = save("adjoint", "patches/adjoint")
    return g


def saved(server, entry, node):
    info = entry["outputs"][node]["latents"][0]
    return load_safetensors(server.view(info))["latent_tensor"]


def cached_nodes(entry):
    return sum((m[1].get("nodes", []) for m in entry["status"]["messages"] if m[0] == "execution_cached"), [])


def test_lora_and_controlnet_adjoint_sampler_optimises_and_leaves_the_model(patch_server):
    server = patch_server
    first = server.run(stock_graph("before"))
    before = {k: saved(server, first, "save_" + k) for k in ("k_plain", "k_lora", "k_both")}
    log = server.log_text()
    assert not any(s in log for s in ("missing controlnet keys", "NOT LOADED", "lora key not loaded")), log[-3000:]
    scale = float(before["k_plain"].abs().max())
    assert float((before["k_lora"] - before["k_plain"]).abs().max()) > 1e-3 * scale, "the LoRA changes nothing"
    assert float((before["k_both"] - before["k_lora"]).abs().max()) > 1e-3 * scale, "the ControlNet changes nothing"

    entry = server.run(adjoint_graph(), timeout=600)
    report = entry["outputs"]["adjoint"]["adjoint_guidance_loss"][0]
    losses = report["losses"]
    assert len(losses) == 9 and report["stop_reason"] == "iterations", report
    assert report["best_loss"] <= 0.5 * losses[0], losses

    after_entry = server.run(stock_graph("after"))
    cached = cached_nodes(after_entry)
    assert {"unet", "lora", "cnload"} <= set(cached), "the models were reloaded; the check proves nothing"
    assert not {"k_plain", "k_lora", "k_both"} & set(cached), "a KSampler was served from the cache"
    for k, v in before.items():
        assert torch.equal(v, saved(server, after_entry, "save_" + k)), f"{k} changed after the Adjoint Sampler ran"
