"""ComfyUI glue for the pixel-space losses: a differentiable VAE decode, a differentiable
CLIP-vision embedding, and ComfyUI IMAGE / MASK tensors in the core's layouts.

- `VaeDecoder(vae)`: x0 in the user's latent space (what VAE Decode takes) → image
  (B, 3, H, W). It calls the VAE's `first_stage_model.decode` itself (ComfyUI's
  `VAE.decode` may fall back to a tiled decode under `torch.inference_mode()`), with the
  VAE's own output mapping minus its clamp: for image VAEs (x + 1) / 2, so a pixel the
  decoder puts at 1.2 counts as 1.2 and keeps its gradient (VAE Decode would show 1.0).
- `ClipVisionEmbedder(clip_vision)`: image (B, 3, H, W) → the model's `image_embeds`,
  with ComfyUI's clip_preprocess done differentiably: the same bicubic antialiased
  resize of the short side, centre crop and mean/std normalisation, without the 8-bit
  rounding and [0, 1] clip (round has no gradient; the rounding changes pixels by at
  most 1/510). SigLIP, SigLIP 2 and DINOv2/v3 encoders likewise, each with its own
  preprocessing (`vision_pixels`; SigLIP 2 NaFlex: `siglip2_preprocess`'s resize to its
  own patch grid); other kinds are refused (`check_vision_kind`).
- Weights that ComfyUI's loaders made inference tensors are aliased for the duration of
  each call by `trainable_view` (inference_tensors.py: no copy), the same way as the
  model's. ComfyUI's CLIP layers add their residuals in place (`x += ...`), which autograd
  refuses; during our calls each CLIP layer runs an out-of-place copy of its forward.

Work dtype: float32, or float64 when x0 is float64 (the finite-difference tests); the
VAE decodes in its own dtype (`vae.vae_dtype`) on its own device, CLIP vision casts its
weights to the input's dtype (ComfyUI's manual_cast ops), and images come back on x0's
device.
"""
from __future__ import annotations

import contextlib
import types
import weakref
from typing import Optional

import torch

import comfy.model_management

from .inference_tensors import gradient_patcher, to_normal, trainable_view


def work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# -- ComfyUI tensors ------------------------------------------------------------------------
def image_bchw(image: torch.Tensor) -> torch.Tensor:
    """A ComfyUI IMAGE (B, H, W, C) as a normal float tensor (B, 3, H, W); alpha dropped,
    grey expanded to RGB."""
    if image.ndim == 3:
        image = image.unsqueeze(0)
    with torch.inference_mode(False):
        x = image.detach().clone().float().movedim(-1, 1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1).clone()
        elif x.shape[1] >= 4:
            x = x[:, :3].clone()
    return x


def mask_b1hw(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A ComfyUI MASK (H, W) or (B, H, W) as a normal float tensor (B, 1, H, W) on [0, 1]."""
    if mask is None:
        return None
    with torch.inference_mode(False):
        return mask.detach().clone().float().reshape(-1, 1, mask.shape[-2], mask.shape[-1]).clamp(0.0, 1.0)


def check_counts(node: str, counted: dict[str, int]) -> None:
    """Two per-sample inputs with more than one row each must agree on the batch."""
    many = {k: v for k, v in counted.items() if v > 1}
    if len(set(many.values())) > 1:
        (a, na), (b, nb) = list(many.items())[:2]
        raise ValueError(f"{node}: {b}: {nb} rows but {a} has {na}; give 1 (shared) or one per sample "
                         "for each, the same number")


# -- differentiable VAE decode --------------------------------------------------------------
def output_map(vae):
    """The VAE's process_output without its clamp, when it is affine on [-1, 1] (image VAEs:
    (x + 1) / 2; identity for the few that map nothing); otherwise process_output itself."""
    probe = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    try:
        with torch.inference_mode(False):
            lo, mid, hi = [float(v) for v in vae.process_output(probe.clone())]
    except Exception:
        return vae.process_output
    scale, offset = (hi - lo) / 2.0, (hi + lo) / 2.0
    if abs(mid - offset) > 1e-9 or scale <= 0:
        return vae.process_output
    if scale == 1.0 and offset == 0.0:
        return lambda x: x
    return lambda x: x * scale + offset


class _LastDecode:
    """The last decode, kept while its x0 lives: the terms of one Combine that share a VAE
    decode x0 once. Keyed by the VAE, the x0 tensor object (weakly) and its version, and
    the grad mode; dropped as soon as that x0 is freed."""

    def __init__(self):
        self.entry = None

    def get(self, vae, x0):
        e = self.entry
        if e is not None and e[0] is vae and e[1]() is x0 and e[2] == x0._version \
                and e[3] == torch.is_grad_enabled():
            return e[4]
        return None

    def put(self, vae, x0, image):
        def drop(ref, self=self):
            if self.entry is not None and self.entry[1] is ref:
                self.entry = None
        self.entry = (vae, weakref.ref(x0, drop), x0._version, torch.is_grad_enabled(), image)

    def clear(self):
        self.entry = None


LAST_DECODE = _LastDecode()


class VaeDecoder:
    """x0 (B, C, h, w) in the user's latent space → image (B, 3, H, W), differentiably."""

    def __init__(self, vae, node: str, input_name: str = "vae"):
        if vae is None or getattr(vae, "first_stage_model", None) is None:
            raise ValueError(f"{node}: {input_name}: the VAE is invalid (no decoder weights)")
        if getattr(vae, "latent_dim", 2) != 2:
            raise ValueError(f"{node}: {input_name}: this is a {vae.latent_dim}-d (video/audio) VAE; "
                             "the pixel losses need an image VAE")
        self.vae, self.node, self.input_name = vae, node, input_name
        self.patcher = gradient_patcher(vae.patcher, f"{node}: {input_name}")
        self.map = output_map(vae)
        self.calls = 0          # decodes actually run (tests)

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        channels = getattr(vae, "latent_channels", x0.shape[1])
        if x0.ndim != 4 or x0.shape[1] != channels:
            raise ValueError(f"{self.node}: {self.input_name}: this VAE decodes {channels}-channel image latents "
                             f"but the sample has shape {tuple(x0.shape)}; use the VAE that goes with the model")
        cached = LAST_DECODE.get(vae, x0)
        if cached is not None:
            return cached
        comfy.model_management.load_models_gpu(
            [self.patcher], memory_required=vae.memory_used_decode(x0.shape, vae.vae_dtype),
            force_full_load=getattr(vae, "disable_offload", False))
        with trainable_view(self.patcher.model) as model:
            out = model.decode(x0.to(device=vae.device, dtype=vae.vae_dtype))
        image = self.map(out.to(device=x0.device, dtype=work_dtype(x0)))
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"{self.node}: {self.input_name}: the VAE decodes to shape {tuple(image.shape)}, "
                             "not an RGB image")
        self.calls += 1
        LAST_DECODE.put(vae, x0, image)
        return image


# -- differentiable CLIP vision ---------------------------------------------------------------
def clip_pixels(image: torch.Tensor, size: int, mean, std, crop: bool = True) -> torch.Tensor:
    """comfy.clip_vision.clip_preprocess on (B, 3, H, W), differentiable: same resize and
    crop, no 8-bit rounding or clip to [0, 1]."""
    if not (image.shape[2] == size and image.shape[3] == size):
        if crop:
            scale = size / min(image.shape[2], image.shape[3])
            scale_size = (round(scale * image.shape[2]), round(scale * image.shape[3]))
        else:
            scale_size = (size, size)
        image = torch.nn.functional.interpolate(image, size=scale_size, mode="bicubic", antialias=True)
        h = (image.shape[2] - size) // 2
        w = (image.shape[3] - size) // 2
        image = image[:, :, h:h + size, w:w + size]
    mean = torch.tensor(mean, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    return (image - mean) / std


def siglip2_naflex_pixels(image: torch.Tensor, patch_size: int, num_patches: int, mean, std) -> torch.Tensor:
    """comfy.clip_model.siglip2_preprocess for a NaFlex model (image_size ≤ 0), differentiable:
    the whole image, bilinearly (antialiased) resized to the largest patch grid of its own
    aspect ratio with at most num_patches patches, no 8-bit rounding or clip to [0, 1]."""
    import comfy.clip_model
    h, w = comfy.clip_model.siglip2_flex_calc_resolution(image.shape[2], image.shape[3], patch_size, num_patches)
    image = torch.nn.functional.interpolate(image, size=(h, w), mode="bilinear", antialias=True)
    mean = torch.tensor(mean, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    return (image - mean) / std


# The image encoders ComfyUI's Load CLIP Vision gives (comfy.clip_vision.IMAGE_ENCODERS), by
# their model_type: each embeds through its model's image_embeds (CLIP: the projected class
# token; SigLIP / SigLIP 2: the mean of the token embeddings; DINOv2 / DINOv3: the
# normalised class token), after its own preprocessing as ComfyUI's encode_image does it.
VISION_KINDS = {"clip_vision_model": "CLIP ViT", "siglip_vision_model": "SigLIP",
                "siglip2_vision_model": "SigLIP 2", "dinov2": "DINOv2", "dinov3": "DINOv3"}


def vision_kind(clip_vision) -> str:
    """The model_type of a CLIP_VISION (ComfyUI 0.33+ records it; older versions: from its classes)."""
    kind = getattr(clip_vision, "model_type", None)
    if isinstance(kind, str):
        return kind
    model = getattr(clip_vision, "model", None)
    name = type(model).__name__
    if name == "Dinov2Model":
        return "dinov2"
    if name == "CLIPVisionModelProjection":
        embeddings = getattr(getattr(model, "vision_model", None), "embeddings", None)
        if type(embeddings).__name__ == "CLIPVisionEmbeddings":
            return "siglip_vision_model" if embeddings.class_embedding is None else "clip_vision_model"
    return name


def check_vision_kind(node: str, clip_vision) -> str:
    """The model_type if we embed it exactly as ComfyUI does; a clear error otherwise."""
    kind = vision_kind(clip_vision)
    if kind not in VISION_KINDS:
        raise ValueError(f"{node}: clip_vision: {kind} models are not supported; use a CLIP ViT (e.g. "
                         "clip_vision_h, ViT-L/14), SigLIP, SigLIP 2 or DINOv2 / DINOv3 model")
    return kind


def vision_pixels(clip_vision, kind: str, image: torch.Tensor, crop: bool = True) -> torch.Tensor:
    """The model's own preprocessing of (B, 3, H, W) on [0, 1], differentiable (see encode_image)."""
    cv = clip_vision
    if kind == "siglip2_vision_model" and cv.image_size <= 0:
        config = getattr(cv, "config", {})
        return siglip2_naflex_pixels(image, config.get("patch_size", 16), config.get("num_patches", 256),
                                     cv.image_mean, cv.image_std)
    return clip_pixels(image, cv.image_size, cv.image_mean, cv.image_std, crop=crop)


def _clip_layer_forward(self, x, mask=None, optimized_attention=None):
    """comfy.clip_model.CLIPLayer.forward with out-of-place residual additions."""
    x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
    return x + self.mlp(self.layer_norm2(x))


@contextlib.contextmanager
def out_of_place_residuals(module: torch.nn.Module):
    """Within the block, every CLIP layer of `module` adds its residuals out of place."""
    import comfy.clip_model
    layers = [m for m in module.modules() if isinstance(m, comfy.clip_model.CLIPLayer)]
    for m in layers:
        m.forward = types.MethodType(_clip_layer_forward, m)
    try:
        yield module
    finally:
        for m in layers:
            m.__dict__.pop("forward", None)


class ClipVisionEmbedder:
    """image (B, 3, H, W) on [0, 1] → image_embeds (B, D), differentiably."""

    def __init__(self, clip_vision, crop: bool = True):
        self.cv, self.crop = clip_vision, crop
        self.kind = check_vision_kind("Guidance Loss (CLIP Vision)", clip_vision)
        self.patcher = gradient_patcher(clip_vision.patcher, "Guidance Loss (CLIP Vision): clip_vision")

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        cv = self.cv
        comfy.model_management.load_model_gpu(self.patcher)
        pixels = vision_pixels(cv, self.kind, image.to(device=cv.load_device, dtype=work_dtype(image)),
                               crop=self.crop)
        with trainable_view(self.patcher.model) as model, out_of_place_residuals(model):
            out = model(pixel_values=pixels)
        emb = out[2]
        if emb.ndim == 3:       # SigLIP-style per-token embeddings: their mean
            emb = emb.mean(dim=1)
        return emb.to(image.device)

    def references(self, images: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """Unit-normalised embeddings (N, D) of reference images (N, 3, H, W), no gradient."""
        with torch.inference_mode(False), torch.no_grad():
            embs = [self(images[i:i + chunk]).float() for i in range(0, images.shape[0], chunk)]
            e = torch.cat(embs)
            return to_normal(e / e.norm(dim=1, keepdim=True).clamp_min(1e-12))
