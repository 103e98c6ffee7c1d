"""Guidance Loss nodes: each builds a GUIDANCE_LOSS (adjoint.losses) for the Adjoint Sampler.

Nodes only turn ComfyUI types (LATENT, IMAGE, MASK, VAE, CLIP_VISION) into the core's loss
objects (pixel_losses.py holds the ComfyUI glue): masks are resized to the latent or the
decoded image the way ComfyUI resizes noise masks (bilinear). Batch sizes against the
sampled latent are checked by `check_batch` when the sampler runs (the loss cannot know
the latent's batch before); inputs that contradict each other are refused here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from comfy_api.latest import io

from ..adjoint.losses import (METRICS, ColourTarget, EmbeddingSimilarity, ImageTarget, LatentTarget,
                              WeightedSum, parse_hex_colour)
from ..adjoint.losses import GuidanceLoss as CoreLoss
from .input_checks import WidgetChecks, check_inputs, image_tensor, latent_samples, mask_tensor
from .pixel_losses import (ClipVisionEmbedder, VaeDecoder, check_counts, check_vision_kind, image_bchw,
                           mask_b1hw)

GuidanceLoss = io.Custom("GUIDANCE_LOSS")
CATEGORY = "Adjoint Guidance/loss"
MASK_TOOLTIP = ("Only count the pixels inside the mask (one mask, or one per sample; resized to the {what} "
                "bilinearly, as ComfyUI resizes noise masks). An all-zero mask selects nothing: that "
                "sample's loss is 0.")
WEIGHT_TOOLTIP = "Scales this loss (its value and its gradient)."


def latent_mask(node: str, mask, size: tuple[int, int], batch: int):
    """A ComfyUI MASK (H, W) or (B, H, W) as (B|1, 1, h, w) at the latent's size."""
    if mask is None:
        return None
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    return m.clamp(0.0, 1.0)


class LatentTargetLoss(io.ComfyNode):
    NAME = "Guidance Loss (Latent Target)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdjointGuidance_LossLatentTarget",
            display_name=cls.NAME,
            category=CATEGORY,
            description="Distance between the sampler's result and a target LATENT, per sample: pulls "
                        "the composition toward a reference without decoding anything.",
            inputs=[
                io.Latent.Input("target", tooltip="The latent to get close to (e.g. VAE Encode of a reference): "
                                                  "one, or one per sample."),
                io.Combo.Input("metric", options=list(METRICS), default="mse",
                               tooltip="mse: mean squared difference; l1: mean absolute difference."),
                io.Float.Input("weight", default=1.0, min=0.0, max=1e4, step=0.01, tooltip=WEIGHT_TOOLTIP),
                io.Mask.Input("mask", optional=True, tooltip=MASK_TOOLTIP.format(what="latent")),
            ],
            outputs=[GuidanceLoss.Output(tooltip="This loss, for the Adjoint Sampler's loss input or a "
                                                 "Guidance Loss (Combine).")],
        )

    validate_inputs = WidgetChecks()     # widget values when queued (input_checks.py)

    @classmethod
    def execute(cls, target, metric, weight, mask=None) -> io.NodeOutput:
        check_inputs(LatentTargetLoss, dict(metric=metric, weight=weight))
        samples = latent_samples(cls.NAME, "target", target)
        m = latent_mask(cls.NAME, mask_tensor(cls.NAME, "mask", mask), tuple(samples.shape[-2:]), samples.shape[0])
        if m is not None:
            check_counts(cls.NAME, {"target": samples.shape[0], "mask": m.shape[0]})
        with torch.inference_mode(False):
            t = samples.detach().clone()
            m = None if m is None else m.detach().clone()
        return io.NodeOutput(LatentTarget(t, metric=metric, weight=weight, mask=m, node=cls.NAME))


class ImageTargetLoss(io.ComfyNode):
    NAME = "Guidance Loss (Image Target)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdjointGuidance_LossImageTarget",
            display_name=cls.NAME,
            category=CATEGORY,
            description="Decodes the result with the VAE (differentiably) and compares it with an IMAGE, "
                        "per sample: MSE or L1, optionally on blurred images (low frequencies only: layout "
                        "and colours follow the reference, detail stays free).",
            inputs=[
                io.Vae.Input("vae", tooltip="The VAE that decodes the model's latents (the one VAE Decode gets)."),
                io.Image.Input("image", tooltip="The reference: one image, or one per sample. Another size is "
                                                "scaled and centre-cropped to the decoded image."),
                io.Combo.Input("metric", options=list(METRICS), default="mse",
                               tooltip="mse: mean squared difference; l1: mean absolute difference."),
                io.Float.Input("blur_sigma", default=0.0, min=0.0, max=256.0, step=0.5,
                               tooltip="Gaussian blur (sigma in pixels) applied to both images before "
                                       "comparing: the low-frequency variant, which leaves detail free. "
                                       "0 = compare the pixels themselves."),
                io.Float.Input("weight", default=1.0, min=0.0, max=1e4, step=0.01, tooltip=WEIGHT_TOOLTIP),
                io.Mask.Input("mask", optional=True, tooltip=MASK_TOOLTIP.format(what="decoded image")),
            ],
            outputs=[GuidanceLoss.Output(tooltip="This loss, for the Adjoint Sampler's loss input or a "
                                                 "Guidance Loss (Combine).")],
        )

    validate_inputs = WidgetChecks()

    @classmethod
    def execute(cls, vae, image, metric, blur_sigma, weight, mask=None) -> io.NodeOutput:
        check_inputs(ImageTargetLoss, dict(metric=metric, blur_sigma=blur_sigma, weight=weight))
        target = image_bchw(image_tensor(cls.NAME, "image", image))
        m = mask_b1hw(mask_tensor(cls.NAME, "mask", mask))
        if m is not None:
            check_counts(cls.NAME, {"image": target.shape[0], "mask": m.shape[0]})
        decode = VaeDecoder(vae, cls.NAME)
        return io.NodeOutput(ImageTarget(decode, target, metric=metric, blur_sigma=blur_sigma, weight=weight,
                                         mask=m, node=cls.NAME))


class ColourLoss(io.ComfyNode):
    NAME = "Guidance Loss (Colour)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdjointGuidance_LossColour",
            display_name=cls.NAME,
            category=CATEGORY,
            description="Decodes the result with the VAE (differentiably) and pushes its statistics toward "
                        "targets: mean colour, brightness, contrast, saturation, each weight·(value − target)²; "
                        "a weight of 0 leaves that statistic free.",
            inputs=[
                io.Vae.Input("vae", tooltip="The VAE that decodes the model's latents (the one VAE Decode gets)."),
                io.String.Input("colour", default="#808080",
                                tooltip="Target mean colour as #rrggbb (or #rgb), e.g. #2050c0 for a blue."),
                io.Float.Input("colour_weight", default=1.0, min=0.0, max=1e4, step=0.01,
                               tooltip="Weight of the mean colour term (squared error averaged over R, G, B); "
                                       "0 = off."),
                io.Float.Input("brightness", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Target mean luma (0 black … 1 white; BT.601 weights)."),
                io.Float.Input("brightness_weight", default=0.0, min=0.0, max=1e4, step=0.01,
                               tooltip="Weight of the brightness term; 0 = off."),
                io.Float.Input("contrast", default=0.25, min=0.0, max=1.0, step=0.01,
                               tooltip="Target RMS contrast: the standard deviation of luma (0 flat … 0.5 "
                                       "half black, half white)."),
                io.Float.Input("contrast_weight", default=0.0, min=0.0, max=1e4, step=0.01,
                               tooltip="Weight of the contrast term; 0 = off."),
                io.Float.Input("saturation", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="Target mean chroma, max(R,G,B) − min(R,G,B) (0 grey … 1 pure "
                                       "primaries)."),
                io.Float.Input("saturation_weight", default=0.0, min=0.0, max=1e4, step=0.01,
                               tooltip="Weight of the saturation term; 0 = off."),
                io.Mask.Input("mask", optional=True,
                              tooltip=MASK_TOOLTIP.format(what="decoded image") +
                              " The statistics are those of the masked pixels."),
            ],
            outputs=[GuidanceLoss.Output(tooltip="This loss, for the Adjoint Sampler's loss input or a "
                                                 "Guidance Loss (Combine).")],
        )

    WEIGHTS = ("colour_weight", "brightness_weight", "contrast_weight", "saturation_weight")
    validate_inputs = WidgetChecks()

    @classmethod
    def input_problems(cls, v: dict, connected):
        """The colour is #rrggbb; not every weight is 0."""
        if "colour" in v:
            try:
                parse_hex_colour(v["colour"])
            except ValueError as e:
                yield "colour", f"{cls.NAME}: colour: {e}"
        if all(w in v for w in cls.WEIGHTS) and all(v[w] == 0 for w in cls.WEIGHTS):
            yield "colour_weight", (f"{cls.NAME}: colour_weight: every weight is 0 ({', '.join(cls.WEIGHTS)}), so "
                                    "there is nothing to optimise; set the weight of at least one statistic "
                                    "(mean colour, brightness, contrast, saturation) above 0")

    @classmethod
    def execute(cls, vae, colour, colour_weight, brightness, brightness_weight, contrast, contrast_weight,
                saturation, saturation_weight, mask=None) -> io.NodeOutput:
        check_inputs(ColourLoss, dict(
            colour=colour, colour_weight=colour_weight, brightness=brightness, brightness_weight=brightness_weight,
            contrast=contrast, contrast_weight=contrast_weight, saturation=saturation,
            saturation_weight=saturation_weight))
        mask = mask_tensor(cls.NAME, "mask", mask)
        try:
            rgb = parse_hex_colour(colour)
        except ValueError as e:
            raise ValueError(f"{cls.NAME}: colour: {e}") from None
        terms = {"mean_colour": (colour_weight, rgb), "brightness": (brightness_weight, brightness),
                 "contrast": (contrast_weight, contrast), "saturation": (saturation_weight, saturation)}
        decode = VaeDecoder(vae, cls.NAME)
        return io.NodeOutput(ColourTarget(decode, terms, mask=mask_b1hw(mask), node=cls.NAME))


class ClipVisionLoss(io.ComfyNode):
    NAME = "Guidance Loss (CLIP Vision)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdjointGuidance_LossClipVision",
            display_name=cls.NAME,
            category=CATEGORY,
            description="Decodes the result with the VAE and embeds it with CLIP vision (ComfyUI's own "
                        "preprocessing, done differentiably); the loss is weight·(1 − cosine similarity) "
                        "to the reference image's embedding (several references: their normalised mean).",
            inputs=[
                io.Vae.Input("vae", tooltip="The VAE that decodes the model's latents (the one VAE Decode gets)."),
                io.ClipVision.Input("clip_vision", tooltip="A CLIP vision model (Load CLIP Vision)."),
                io.Image.Input("image", optional=True,
                               tooltip="The reference image(s) the result should resemble in CLIP's eyes. "
                                       "Required; several images are averaged or matched per sample "
                                       "(see references)."),
                io.Combo.Input("references", options=["average", "one per sample"], default="average",
                               tooltip="average: every sample moves toward the normalised mean of all "
                                       "reference embeddings; one per sample: sample i toward image i "
                                       "(give as many images as samples, or one)."),
                io.Combo.Input("crop", options=["center", "none"], default="center",
                               tooltip="As CLIP Vision Encode: center crops the short side to CLIP's "
                                       "square input; none stretches the image."),
                io.Float.Input("weight", default=1.0, min=-1e4, max=1e4, step=0.01,
                               tooltip=WEIGHT_TOOLTIP + " A negative weight pushes away from the reference."),
            ],
            outputs=[GuidanceLoss.Output(tooltip="This loss, for the Adjoint Sampler's loss input or a "
                                                 "Guidance Loss (Combine).")],
        )

    validate_inputs = WidgetChecks()

    @classmethod
    def execute(cls, vae, clip_vision, references, crop, weight, image=None) -> io.NodeOutput:
        check_inputs(ClipVisionLoss, dict(references=references, crop=crop, weight=weight))
        if clip_vision is None:
            raise ValueError(f"{cls.NAME}: clip_vision: no CLIP vision model; connect Load CLIP Vision")
        check_vision_kind(cls.NAME, clip_vision)   # before any work
        if image is None or image.shape[0] == 0:
            raise ValueError(f"{cls.NAME}: image: no reference image; connect the IMAGE(s) the result should "
                             "resemble (e.g. Load Image)")
        image_tensor(cls.NAME, "image", image)
        decode = VaeDecoder(vae, cls.NAME)
        embed = ClipVisionEmbedder(clip_vision, crop=crop == "center")
        ref = embed.references(image_bchw(image))
        if references == "average":
            with torch.inference_mode(False):
                mean = ref.mean(dim=0, keepdim=True)
                ref = mean / mean.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return io.NodeOutput(EmbeddingSimilarity(decode, embed, ref, weight=weight, node=cls.NAME,
                                                 reference_input="image"))


class PartsRecord:
    """The named parts of a Combine loss at its latest evaluation, for the live loss curve.

    Each evaluation (the sampler's own calls: nothing is evaluated for this) replaces the
    parts of the samples it covered: a per-sample loss from `select(index, ...)` covers
    sample `index`, a batch evaluation samples 0 … B−1. `latest(sample)` gives that
    sample's parts (detached values, already weighted) and how many evaluations covered it,
    so a reader can tell a new evaluation from the one it read.
    """

    def __init__(self):
        self.rows: dict[int, dict[str, torch.Tensor]] = {}
        self.counts: dict[int, int] = {}
        self.evaluations = 0

    def record(self, parts: dict, first_sample: int) -> None:
        values = {name: value.detach().reshape(-1) for name, value in parts.items()}
        rows = max((v.numel() for v in values.values()), default=0)
        for i in range(rows):
            sample = first_sample + i
            self.rows[sample] = {name: v[i if v.numel() > 1 else 0] for name, v in values.items()}
            self.counts[sample] = self.counts.get(sample, 0) + 1
        self.evaluations += 1

    def latest(self, sample: int) -> tuple[int, dict[str, float]]:
        """(evaluations that covered `sample`, {part name: value}) — (0, {}) before any."""
        row = self.rows.get(sample, {})
        return self.counts.get(sample, 0), {name: float(v) for name, v in row.items()}


class RecordedSum(WeightedSum):
    """The Combine node's GUIDANCE_LOSS: a WeightedSum that records its parts (`parts_record`)
    each time it is evaluated; per-sample losses made by `select` share the record."""

    def __init__(self, terms, record: PartsRecord | None = None, first_sample: int = 0):
        super().__init__(terms)
        self.parts_record = record if record is not None else PartsRecord()
        self.first_sample = first_sample

    def parts(self, x0):
        out = super().parts(x0)
        self.parts_record.record(out, self.first_sample)
        return out

    def select(self, index, batch):
        return RecordedSum([(w, loss.select(index, batch)) for w, loss in self.terms], self.parts_record,
                           first_sample=index if batch > 1 else 0)


class CombineLoss(io.ComfyNode):
    NAME = "Guidance Loss (Combine)"
    SLOTS = 4

    @classmethod
    def define_schema(cls):
        inputs = []
        for i in range(1, cls.SLOTS + 1):
            inputs.append(GuidanceLoss.Input(f"loss_{i}", optional=i > 1,
                                             tooltip="A guidance loss (any Guidance Loss node, also another "
                                                     "Combine)." + (" Optional." if i > 1 else "")))
            inputs.append(io.Float.Input(f"weight_{i}", default=1.0, min=-1e4, max=1e4, step=0.01,
                                         tooltip=f"Multiplies loss_{i}."))
        return io.Schema(
            node_id="AdjointGuidance_LossCombine",
            display_name=cls.NAME,
            category=CATEGORY,
            description="A weighted sum of guidance losses: weight_1·loss_1 + … (unconnected slots are "
                        "skipped). Chain Combines for more than four.",
            inputs=inputs,
            outputs=[GuidanceLoss.Output(tooltip="The weighted sum, for the Adjoint Sampler's loss input "
                                                 "or another Combine.")],
        )

    validate_inputs = WidgetChecks()

    @classmethod
    def input_problems(cls, v: dict, connected):
        """Not every connected loss has weight 0 (known when the prompt is queued: the connected
        slots and, where they are widgets, their weights)."""
        if connected is None or "loss_1" not in connected:
            return
        names = [f"weight_{i}" for i in range(1, cls.SLOTS + 1) if f"loss_{i}" in connected]
        if all(n in v for n in names) and all(v[n] == 0 for n in names):
            yield names[0], (f"{cls.NAME}: {names[0]}: every connected loss has weight 0 ("
                             + ", ".join(f"{n} = 0" for n in names) + "), so there is nothing to optimise; "
                             "give at least one connected loss a non-zero weight")

    @classmethod
    def execute(cls, loss_1, weight_1, weight_2=1.0, weight_3=1.0, weight_4=1.0, loss_2=None, loss_3=None,
                loss_4=None) -> io.NodeOutput:
        check_inputs(CombineLoss, dict(loss_1=loss_1, loss_2=loss_2, loss_3=loss_3, loss_4=loss_4,
                                       weight_1=weight_1, weight_2=weight_2, weight_3=weight_3, weight_4=weight_4))
        for i, loss in enumerate((loss_1, loss_2, loss_3, loss_4), start=1):
            if loss is not None and not isinstance(loss, CoreLoss):
                raise ValueError(f"{cls.NAME}: loss_{i}: expected a GUIDANCE_LOSS from a Guidance Loss node, got "
                                 f"{type(loss).__name__}")
        pairs = [(weight_1, loss_1), (weight_2, loss_2), (weight_3, loss_3), (weight_4, loss_4)]
        return io.NodeOutput(RecordedSum([(w, l) for w, l in pairs if l is not None]))


NODES = [LatentTargetLoss, ImageTargetLoss, ColourLoss, ClipVisionLoss, CombineLoss]
