"""ComfyUI imported in-process (--cpu): the pack loads and the tiny UNet samples."""
import torch

from comfy_harness import pack_module, tiny_unet32_patcher


def test_pack_loaded_by_comfyui(comfy_nodes):
    mod = pack_module()
    assert hasattr(mod, "comfy_entrypoint")
    assert "adjoint_guidance" in comfy_nodes.LOADED_MODULE_DIRS
    assert any(d.endswith("web") for d in comfy_nodes.EXTENSION_WEB_DIRS.values())


def test_tiny_unet32_samples_with_stock_ksampler(comfy_nodes):
    model = tiny_unet32_patcher()
    cond = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(0)), {}]]
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    with torch.inference_mode():
        (out,) = comfy_nodes.common_ksampler(model, 7, 8, 5.0, "euler", "normal", cond, cond, latent)
    x = out["samples"]
    assert x.shape == (1, 4, 16, 16) and torch.isfinite(x).all() and x.abs().max() > 0
