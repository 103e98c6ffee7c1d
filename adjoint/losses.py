"""Guidance losses: differentiable objectives on the sampler's final x0 latent.

A `GuidanceLoss` maps x0 (B, C, H, W), in the user's latent space (what VAE Encode
produces and VAE Decode takes), to per-sample values (B,), and reports its named
parts (already weighted) for loss plots. Losses compose with `WeightedSum`.

Pixel-space losses take a `decode` callable, x0 → image (B, 3, H, W) with values on
[0, 1] (not clamped: see nodes/pixel_losses.py, which builds it from a ComfyUI VAE),
and the CLIP loss an `embed` callable, image → (B, D). Everything here is plain torch:
no ComfyUI import.

Batches: each loss holds its references and masks with 1 row (shared by every sample)
or one row per sample. `check_batch(batch)` says, before any work, whether they fit a
batch of that size; `select(index, batch)` gives the loss of one sample alone (the
Adjoint Sampler optimises each sample on its own).

An all-zero mask selects nothing: that sample's loss is 0, with zero gradient (no NaN).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

METRICS = ("mse", "l1")
COLOUR_STATS = ("mean_colour", "brightness", "contrast", "saturation")
LUMA = (0.299, 0.587, 0.114)       # ITU-R BT.601, as PIL's convert("L") and most editors

Decode = Callable[[torch.Tensor], torch.Tensor]
Embed = Callable[[torch.Tensor], torch.Tensor]


class GuidanceLoss:
    """Base class: subclasses implement `parts`; calling the loss sums them."""
    name = "loss"

    def parts(self, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(self.parts(x0).values()), dim=0).sum(dim=0)

    def select(self, index: int, batch: int) -> "GuidanceLoss":
        """This loss for sample `index` of a batch of `batch` alone (per-sample references sliced)."""
        return self

    def check_batch(self, batch: int) -> None:
        """Raise ValueError (naming the node and input) unless every per-sample input has 1 row
        or `batch` rows. Called by the sampler before any work; the default has nothing to check."""


# -- helpers -----------------------------------------------------------------------------
def masked_mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-sample mean of values (B, C, H, W) over the mask's support (B|1, 1, H, W); for
    video-shaped values (B, C, T, H, W) the same mask holds for every frame.

    An all-zero mask selects nothing: that sample's loss is 0 (with zero gradient), not NaN.
    """
    b = values.shape[0]
    if mask is None:
        return values.reshape(b, -1).mean(dim=1)
    if mask.ndim < values.ndim:
        mask = mask.reshape(*mask.shape[:2], *([1] * (values.ndim - mask.ndim)), *mask.shape[2:])
    weights = mask.to(values.dtype).expand(b, 1, *values.shape[2:])
    total = (values * weights).reshape(b, -1).sum(dim=1)
    count = weights.reshape(b, -1).sum(dim=1) * values.shape[1]
    return total / count.clamp_min(torch.finfo(values.dtype).tiny) * (count > 0)


def distance(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "mse":
        return (a - b).square()
    if metric == "l1":
        return (a - b).abs()
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def check_batch(name: str, t: torch.Tensor, batch: int) -> None:
    if t.shape[0] not in (1, batch):
        raise ValueError(f"{name} has batch size {t.shape[0]} but the sample has {batch}; "
                         "use one (shared) or one per sample")


def check_count(who: str, count: int, batch: int, noun: str) -> None:
    """`who` (e.g. "Guidance Loss (Image Target): image") holds `count` rows: 1 or `batch`?"""
    if count not in (1, batch):
        plural = "" if count == 1 else "s"
        give = "1" if batch == 1 else f"1 or {batch}"
        raise ValueError(f"{who}: {count} {noun}{plural} for a batch of {batch} latent"
                         f"{'' if batch == 1 else 's'}; give {give}")


def select_sample(t: torch.Tensor, index: int, batch: int) -> torch.Tensor:
    """Row `index` of a per-sample tensor (batch rows); a shared one (1 row) as it is."""
    return t[index:index + 1] if batch > 1 and t.shape[0] == batch else t


def _select_opt(t: Optional[torch.Tensor], index: int, batch: int) -> Optional[torch.Tensor]:
    return None if t is None else select_sample(t, index, batch)


# -- image operations (B, C, H, W), values on [0, 1] ---------------------------------------
def fit_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scale `image` to `size` (H, W), centre-cropping the excess of a different aspect
    ratio first (as ComfyUI's common_upscale with crop="center"), bilinear with antialias."""
    h, w = image.shape[-2:]
    th, tw = int(size[0]), int(size[1])
    if (h, w) == (th, tw):
        return image
    old, new = w / h, tw / th
    if old > new:                 # too wide: crop the width
        keep = round(w * new / old)
        x = (w - keep) // 2
        image = image[..., :, x:x + keep]
    elif old < new:               # too tall: crop the height
        keep = round(h * old / new)
        y = (h - keep) // 2
        image = image[..., y:y + keep, :]
    return F.interpolate(image, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)


def resize_mask(mask: Optional[torch.Tensor], size: tuple[int, int]) -> Optional[torch.Tensor]:
    """A (B|1, 1, h, w) mask at `size`, stretched bilinearly as ComfyUI resizes noise masks."""
    if mask is None or tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False).clamp(0.0, 1.0)


def gaussian_kernel(sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (σ in pixels, kernel radius ⌈3σ⌉, edges replicated): linear,
    so the gradient of any loss on it is the blurred gradient. σ ≤ 0 returns the image."""
    if sigma <= 0:
        return image
    b, c, h, w = image.shape
    k = gaussian_kernel(sigma, image.dtype, image.device)
    r = (k.numel() - 1) // 2
    x = image.reshape(b * c, 1, h, w)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(b, c, h, w)


def colour_statistics(image: torch.Tensor, mask: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """Per-sample statistics of an RGB image (B, 3, H, W) over the mask (B|1, 1, H, W):

    mean_colour (B, 3): mean R, G, B; brightness (B,): mean luma Y (BT.601);
    contrast (B,): standard deviation of Y (RMS contrast); saturation (B,): mean chroma
    max(R,G,B) − min(R,G,B) (0 grey … 1 a pure primary); selected (B,): whether the mask
    selects any pixel (statistics of an empty selection are 0).
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"colour statistics need an RGB image (B, 3, H, W), got shape {tuple(image.shape)}")
    b = image.shape[0]
    luma = (image * image.new_tensor(LUMA).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    mean_colour = torch.stack([masked_mean(image[:, i:i + 1], mask) for i in range(3)], dim=1)
    brightness = masked_mean(luma, mask)
    variance = masked_mean((luma - brightness.view(b, 1, 1, 1)).square(), mask)
    contrast = torch.sqrt(variance + 1e-8)          # smooth at a flat image
    chroma = image.amax(dim=1, keepdim=True) - image.amin(dim=1, keepdim=True)
    saturation = masked_mean(chroma, mask)
    if mask is None:
        selected = torch.ones(b, dtype=torch.bool, device=image.device)
    else:
        selected = mask.expand(b, 1, *image.shape[2:]).reshape(b, -1).sum(dim=1) > 0
    return {"mean_colour": mean_colour, "brightness": brightness, "contrast": contrast,
            "saturation": saturation, "selected": selected}


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − cos(a, b) per row: 0 for the same direction, 2 for opposite ones."""
    return 1.0 - F.cosine_similarity(a.flatten(1), b.flatten(1).to(a), dim=1, eps=1e-12)


def parse_hex_colour(text: str) -> tuple[float, float, float]:
    """'#rrggbb' or '#rgb' (the '#' optional, any case) → (r, g, b) on [0, 1]."""
    s = str(text).strip()
    h = s[1:] if s.startswith("#") else s
    if len(h) == 3:
        h = "".join(ch * 2 for ch in h)
    if len(h) != 6 or any(ch not in "0123456789abcdefABCDEF" for ch in h):
        raise ValueError(f"{text!r} is not a colour; write it as #rrggbb, e.g. #2050c0")
    return tuple(int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4))


# -- losses --------------------------------------------------------------------------------
class LatentTarget(GuidanceLoss):
    """Distance of x0 to a target latent, per sample, optionally inside a mask."""
    name = "latent_target"

    def __init__(self, target: torch.Tensor, metric: str = "mse", weight: float = 1.0,
                 mask: Optional[torch.Tensor] = None, node: str = "Guidance Loss (Latent Target)"):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.target, self.metric, self.weight, self.mask = target, metric, float(weight), mask
        self.node = node

    def check_batch(self, batch):
        check_count(f"{self.node}: target", self.target.shape[0], batch, "latent")
        if self.mask is not None:
            check_count(f"{self.node}: mask", self.mask.shape[0], batch, "mask")

    def parts(self, x0):
        check_batch("the target latent", self.target, x0.shape[0])
        if self.target.shape[1:] != x0.shape[1:]:
            raise ValueError(f"{self.node}: target: the target latent has shape {tuple(self.target.shape[1:])} "
                             f"per sample, the sample has {tuple(x0.shape[1:])}")
        if self.mask is not None:
            check_batch("the mask", self.mask, x0.shape[0])
        target = self.target.to(x0)
        mask = None if self.mask is None else resize_mask(self.mask.to(x0), x0.shape[-2:])
        return {self.name: self.weight * masked_mean(distance(x0, target, self.metric), mask)}

    def select(self, index, batch):
        self.check_batch(batch)
        return LatentTarget(select_sample(self.target, index, batch), self.metric, self.weight,
                            _select_opt(self.mask, index, batch), self.node)


class PixelLoss(GuidanceLoss):
    """A loss on the decoded image: `decode(x0)` → (B, 3, H, W) on [0, 1], a mask (B|1, 1, h, w)
    resized to the image. Subclasses implement `image_parts(image, mask)`."""

    def __init__(self, decode: Decode, mask: Optional[torch.Tensor] = None, node: str = "Guidance Loss"):
        self.decode, self.mask, self.node = decode, mask, node

    def check_batch(self, batch):
        if self.mask is not None:
            check_count(f"{self.node}: mask", self.mask.shape[0], batch, "mask")

    def image_parts(self, image: torch.Tensor, mask: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def parts(self, x0):
        self.check_batch(x0.shape[0])
        image = self.decode(x0)
        mask = None if self.mask is None else resize_mask(self.mask.to(image), image.shape[-2:])
        return self.image_parts(image, mask)


class ImageTarget(PixelLoss):
    """Distance between the decoded image and a target image (B|1, 3, H, W), optionally both
    Gaussian-blurred first (σ in pixels: the low frequencies only, detail left free)."""
    name = "image_target"

    def __init__(self, decode: Decode, target: torch.Tensor, metric: str = "mse", blur_sigma: float = 0.0,
                 weight: float = 1.0, mask: Optional[torch.Tensor] = None,
                 node: str = "Guidance Loss (Image Target)"):
        super().__init__(decode, mask, node)
        if metric not in METRICS:
            raise ValueError(f"{node}: metric: must be one of {METRICS}, got {metric!r}")
        if target.ndim != 4 or target.shape[1] != 3:
            raise ValueError(f"{node}: image: expected RGB images (B, 3, H, W), got shape {tuple(target.shape)}")
        self.target, self.metric, self.blur_sigma, self.weight = target, metric, float(blur_sigma), float(weight)
        self._fitted = {}

    def check_batch(self, batch):
        check_count(f"{self.node}: image", self.target.shape[0], batch, "image")
        super().check_batch(batch)

    def target_at(self, size, like: torch.Tensor) -> torch.Tensor:
        """The target fitted to the decoded size (and blurred), cached per size/dtype/device."""
        key = (tuple(size), like.dtype, like.device)
        if key not in self._fitted:
            with torch.no_grad():
                t = fit_image(self.target.to(like), size)
                self._fitted[key] = gaussian_blur(t, self.blur_sigma)
        return self._fitted[key]

    def image_parts(self, image, mask):
        target = self.target_at(image.shape[-2:], image)
        image = gaussian_blur(image, self.blur_sigma)
        return {self.name: self.weight * masked_mean(distance(image, target, self.metric), mask)}

    def select(self, index, batch):
        self.check_batch(batch)
        return ImageTarget(self.decode, select_sample(self.target, index, batch), self.metric, self.blur_sigma,
                           self.weight, _select_opt(self.mask, index, batch), self.node)


class ColourTarget(PixelLoss):
    """Pushes the decoded image's statistics toward targets, each term weight·(stat − target)²
    (the mean colour's averaged over R, G, B). `terms` maps names of COLOUR_STATS to
    (weight, target): a float target, or an (r, g, b) triple for mean_colour."""
    name = "colour"

    def __init__(self, decode: Decode, terms: dict, mask: Optional[torch.Tensor] = None,
                 node: str = "Guidance Loss (Colour)"):
        super().__init__(decode, mask, node)
        unknown = set(terms) - set(COLOUR_STATS)
        if unknown:
            raise ValueError(f"{node}: unknown colour statistics {sorted(unknown)}; use {COLOUR_STATS}")
        self.terms = {k: (float(w), t) for k, (w, t) in terms.items() if float(w) != 0.0}
        if not self.terms:
            raise ValueError(f"{node}: every weight is 0, so there is nothing to optimise; set the weight "
                             "of at least one statistic (mean colour, brightness, contrast, saturation) above 0")

    def image_parts(self, image, mask):
        stats = colour_statistics(image, mask)
        keep = stats["selected"].to(image.dtype)
        out = {}
        for key in COLOUR_STATS:
            if key not in self.terms:
                continue
            weight, target = self.terms[key]
            value = stats[key]
            if key == "mean_colour":
                err = (value - value.new_tensor(target).view(1, 3)).square().mean(dim=1)
            else:
                err = (value - float(target)).square()
            out[f"{self.name}.{key}"] = weight * err * keep
        return out

    def select(self, index, batch):
        self.check_batch(batch)
        return ColourTarget(self.decode, self.terms, _select_opt(self.mask, index, batch), self.node)


class EmbeddingSimilarity(GuidanceLoss):
    """weight·(1 − cos(embed(decode(x0)), reference)) per sample; reference (B|1, D) (e.g. the
    normalised mean of several reference images' embeddings)."""
    name = "clip_vision"

    def __init__(self, decode: Decode, embed: Embed, reference: torch.Tensor, weight: float = 1.0,
                 node: str = "Guidance Loss (CLIP Vision)", reference_input: str = "image"):
        if reference.ndim != 2 or reference.shape[0] == 0:
            raise ValueError(f"{node}: {reference_input}: no reference embedding")
        self.decode, self.embed, self.reference, self.weight = decode, embed, reference, float(weight)
        self.node, self.reference_input = node, reference_input

    def check_batch(self, batch):
        check_count(f"{self.node}: {self.reference_input}", self.reference.shape[0], batch, "reference")

    def parts(self, x0):
        self.check_batch(x0.shape[0])
        emb = self.embed(self.decode(x0))
        return {self.name: self.weight * cosine_distance(emb, self.reference.to(emb))}

    def select(self, index, batch):
        self.check_batch(batch)
        return EmbeddingSimilarity(self.decode, self.embed, select_sample(self.reference, index, batch),
                                   self.weight, self.node, self.reference_input)


class WeightedSum(GuidanceLoss):
    """Σ wᵢ·lossᵢ; parts are the terms' parts, scaled and prefixed with their position."""
    name = "sum"

    def __init__(self, terms: Sequence[tuple[float, GuidanceLoss]]):
        if not terms:
            raise ValueError("a weighted sum needs at least one loss")
        self.terms = [(float(w), loss) for w, loss in terms]

    def check_batch(self, batch):
        for _, loss in self.terms:
            loss.check_batch(batch)

    def select(self, index, batch):
        return WeightedSum([(w, loss.select(index, batch)) for w, loss in self.terms])

    def parts(self, x0):
        out = {}
        for i, (w, loss) in enumerate(self.terms):
            for key, value in loss.parts(x0).items():
                out[f"{i + 1}.{key}"] = w * value
        return out
