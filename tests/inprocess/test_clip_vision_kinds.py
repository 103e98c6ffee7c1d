"""Guidance Loss (CLIP Vision) with every image encoder ComfyUI's Load CLIP Vision gives:
CLIP ViT, SigLIP, SigLIP 2 (NaFlex, and fixed-size), DINOv2, DINOv3 — in-process.

Each model is a tiny one of ComfyUI's own ClipVisionModel class, built from ComfyUI's own
config file of that kind with the sizes shrunk and seeded random weights (loaded under
inference mode, as the loader leaves them). For each kind: our differentiable embedding is
ComfyUI's encode_image image_embeds (exactly when the image is already 8-bit and at the
model's input size, to the 8-bit rounding otherwise), its gradient matches finite
differences in float64, and the loss node builds and backpropagates. Kinds this ComfyUI
lacks (SigLIP 2, DINOv3 before 0.33) are skipped; unknown kinds are refused at node start.
"""
import json
import os
import types

import pytest
import torch

from comfy_harness import pack_submodule

SHRINK = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2}
# kind id → (model_type, ComfyUI's config file of that kind, overrides; image side for the exact check)
KINDS = {
    "clip": ("clip_vision_model", "clip_vision_config_vitl.json",
             {"image_size": 32, "patch_size": 16, "projection_dim": 24}, 32),
    "siglip": ("siglip_vision_model", "clip_vision_siglip_384.json", {"image_size": 32, "patch_size": 16}, 32),
    "siglip2-naflex": ("siglip2_vision_model", "clip_vision_siglip2_base_naflex.json",
                       {"patch_size": 16, "num_patches": 16}, 64),
    "siglip2-fixed": ("siglip2_vision_model", "clip_vision_siglip2_base_naflex.json",
                      {"image_size": 32, "patch_size": 16, "num_patches": 4}, 32),
    # ComfyUI 0.3.75's DINOv2 embeddings are fixed to 518 px / 14 px patches
    "dinov2": ("dinov2", "image_encoders/dino2_large.json", {"image_size": 518, "patch_size": 14}, 518),
    "dinov3": ("dinov3", "image_encoders/dino3_large.json", {"image_size": 32, "patch_size": 16}, 32),
}


def build(kind, tmp_dir):
    import comfy.clip_vision
    import comfy.utils
    model_type, config_file, overrides, _ = KINDS[kind]
    path = os.path.join(os.path.dirname(comfy.clip_vision.__file__), config_file)
    if model_type not in comfy.clip_vision.IMAGE_ENCODERS or not os.path.exists(path):
        pytest.skip(f"this ComfyUI has no {model_type} image encoder (comfy.clip_vision.IMAGE_ENCODERS lacks "
                    "it; SigLIP 2 and DINOv3 arrived in ComfyUI 0.33)")
    with open(path) as f:
        config = {**json.load(f), **SHRINK, **overrides}
    assert config["model_type"] == model_type
    config_path = os.path.join(tmp_dir, f"{kind}.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    g = torch.Generator().manual_seed(sorted(KINDS).index(kind))
    with torch.inference_mode():
        cv = comfy.clip_vision.ClipVisionModel(config_path)
        sd = {}
        for k, v in cv.model.state_dict().items():
            t = 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float32)
            if v.ndim == 1 and ("norm" in k and k.endswith("weight") or k.endswith("lambda1")):
                t = t + 1.0
            sd[k] = t.to(v.dtype)
        missing, _ = cv.load_sd(sd)
    assert not missing, missing
    assert all(p.is_inference() for p in cv.model.parameters())
    return cv


@pytest.fixture(scope="module")
def models(comfy_nodes, tmp_path_factory):
    return {"dir": str(tmp_path_factory.mktemp("clip_vision")), "cache": {}}


def model(models, kind):
    if kind not in models["cache"]:
        models["cache"][kind] = build(kind, models["dir"])
    return models["cache"][kind]


def stock_embeds(cv, images, crop=True):
    """ComfyUI's encode_image image_embeds (SigLIP: their token mean, as the loss uses them).

    DINOv3: ComfyUI 0.33's encode_image preprocesses and runs the model, then fails packaging
    the output (DINOv3 returns no intermediate state: out[1].to on None); the reference is
    its image_embeds computed by those same steps."""
    import comfy.clip_model
    with torch.inference_mode():
        if getattr(cv, "model_type", None) == "dinov3":
            pixels = comfy.clip_model.clip_preprocess(images.to(cv.load_device), size=cv.image_size,
                                                      mean=cv.image_mean, std=cv.image_std, crop=crop).float()
            e = cv.model(pixel_values=pixels, intermediate_output=-2)[2]
        else:
            e = cv.encode_image(images, crop=crop)["image_embeds"]
    return (e.mean(dim=1) if e.ndim == 3 else e).float()


def rand_image(h, w, seed, b=2):
    with torch.inference_mode():
        return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", list(KINDS))
def test_embedding_is_comfyuis_encode_image(models, kind):
    pl = pack_submodule("nodes.pixel_losses")
    cv = model(models, kind)
    side = KINDS[kind][3]
    # already 8-bit and at the model's input size: ComfyUI's rounding and resizing change nothing
    with torch.inference_mode():
        q = (rand_image(side, side, seed=1) * 255).round() / 255
    ours = pl.ClipVisionEmbedder(cv, crop=True)(q.movedim(-1, 1).clone())
    torch.testing.assert_close(ours, stock_embeds(cv, q), rtol=1e-5, atol=1e-5)
    # any image: the same resize (bicubic + crop, or SigLIP 2 NaFlex's own grid), up to 8-bit rounding
    for crop in (True, False):
        images = rand_image(40, 56, seed=2)
        ours = pl.ClipVisionEmbedder(cv, crop=crop)(images.movedim(-1, 1).clone())
        cos = torch.nn.functional.cosine_similarity(ours, stock_embeds(cv, images, crop), dim=1)
        assert (cos > 0.999).all(), (kind, crop, cos)


@pytest.mark.parametrize("kind", list(KINDS))
def test_embedding_gradient_matches_finite_differences(models, kind):
    pl = pack_submodule("nodes.pixel_losses")
    cv = model(models, kind)
    embed = pl.ClipVisionEmbedder(cv, crop=True)
    g = torch.Generator().manual_seed(5)
    side = 20 if kind != "dinov2" else 30
    image = torch.rand(1, 3, side, side + 8, generator=g, dtype=torch.float64)
    direction = torch.randn(image.shape, generator=g, dtype=torch.float64)
    probe = None

    def f(x):
        nonlocal probe
        e = embed(x)
        assert e.dtype == torch.float64
        if probe is None:
            probe = torch.randn(e.shape, generator=g, dtype=torch.float64)
        return (e * probe).sum()

    x = image.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    eps = 1e-6
    with torch.no_grad():
        fd = (f(image + eps * direction) - f(image - eps * direction)) / (2 * eps)
    analytic = (grad * direction).sum()
    assert abs(float(fd - analytic)) <= 1e-6 * max(1.0, abs(float(analytic))), (kind, float(fd), float(analytic))


@pytest.mark.parametrize("kind", list(KINDS))
def test_loss_node_builds_and_backpropagates(models, kind, comfy_nodes):
    gl = pack_submodule("nodes.guidance_loss")
    cv = model(models, kind)
    with torch.inference_mode():
        (vae,) = comfy_nodes.VAELoader().load_vae("taesd")
        loss = gl.ClipVisionLoss.execute(vae, cv, "average", "center", 1.0, image=rand_image(48, 40, seed=3)).args[0]
    x0 = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    value = loss(x0)
    (grad,) = torch.autograd.grad(value.sum(), x0)
    assert torch.isfinite(value).all() and 0 <= float(value.detach().sum()) <= 2
    assert torch.isfinite(grad).all() and grad.abs().max() > 0


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2"])
def test_kind_is_recognised_on_every_version(models, kind):
    """ComfyUI 0.33 records model_type; older versions do not, the kind comes from the classes."""
    pl = pack_submodule("nodes.pixel_losses")
    cv = model(models, kind)
    assert pl.vision_kind(cv) == KINDS[kind][0]
    bare = types.SimpleNamespace(model=cv.model)    # as a CLIP_VISION of ComfyUI < 0.33
    assert pl.vision_kind(bare) == KINDS[kind][0]


@pytest.mark.parametrize("cv, name", [
    (types.SimpleNamespace(model_type="mystery_vision_model"), "mystery_vision_model"),
    (types.SimpleNamespace(model=torch.nn.Linear(2, 2)), "Linear"),
])
def test_unknown_encoders_are_refused_at_node_start(cv, name, comfy_nodes):
    gl = pack_submodule("nodes.guidance_loss")
    # vae=None: a check made after any other work would fail on the VAE first
    with torch.inference_mode(), pytest.raises(ValueError, match=(
            rf"^Guidance Loss \(CLIP Vision\): clip_vision: {name} models are not supported; use a CLIP "
            r"ViT \(e\.g\. clip_vision_h, ViT-L/14\), SigLIP, SigLIP 2 or DINOv2 / DINOv3 model$")):
        gl.ClipVisionLoss.execute(None, cv, "average", "center", 1.0, image=rand_image(8, 8, seed=0))
