"""What differs between the ComfyUI versions we run on, feature-detected (never by version).

- Empty latents with downscale ratios (ComfyUI 0.33+): `EmptyLatentImage` and other
  empty-latent nodes add `downscale_ratio_spacial` / `downscale_ratio_temporal`; the stock
  samplers hand them to `comfy.sample.fix_empty_latent_channels`, which resizes an *empty*
  latent to the model's own ratios, and drop them from the LATENT they output (it is no
  longer empty). `prepared_samples` and `output_latent` do exactly that where ComfyUI's
  `fix_empty_latent_channels` takes the ratios, and exactly what the stock samplers of older
  versions do (no ratios, the keys passed through) elsewhere.
- Multi-GPU CFG splitting (ComfyUI 0.33+, the "MultiGPU CFG Split" node): the model carries
  deep clones for other devices as additional models under the key "multigpu"; while
  sampling, ComfyUI then puts them into model_options["multigpu_clones"] and evaluates the
  conditionings on worker threads under `torch.no_grad()`, which would cut every gradient.
  `single_device_model` returns a clone without those copies, so the guider runs unsplit.
"""
from __future__ import annotations

import inspect
import logging

import comfy.sample

RATIO_KEYS = ("downscale_ratio_spacial", "downscale_ratio_temporal")
MULTIGPU_KEY = "multigpu"                    # ModelPatcher additional-models key of the clones
MULTIGPU_OPTION = "multigpu_clones"          # model_options key that switches the split on


def takes_downscale_ratios() -> bool:
    """Does this ComfyUI's fix_empty_latent_channels take the empty latent's downscale ratios?"""
    try:
        params = inspect.signature(comfy.sample.fix_empty_latent_channels).parameters
    except (TypeError, ValueError):
        return False
    return all(k in params for k in RATIO_KEYS)


def prepared_samples(model, latent: dict):
    """latent["samples"] as the stock samplers prepare it (channels, empty-latent size)."""
    samples = latent["samples"]
    if takes_downscale_ratios():
        return comfy.sample.fix_empty_latent_channels(model, samples, latent.get(RATIO_KEYS[0], None),
                                                      latent.get(RATIO_KEYS[1], None))
    return comfy.sample.fix_empty_latent_channels(model, samples)


def output_latent(latent: dict, samples) -> dict:
    """The LATENT a sampler outputs, built as the stock samplers build it: a copy of the input
    with the new samples, the empty-latent downscale ratios dropped where ComfyUI uses them."""
    out = dict(latent)
    if takes_downscale_ratios():
        for k in RATIO_KEYS:
            out.pop(k, None)
    out["samples"] = samples
    return out


def multigpu_clones(model) -> list:
    """The other-device copies a MultiGPU CFG Split node attached to the model ([] if none,
    and on ComfyUI versions without multi-GPU splitting)."""
    get = getattr(model, "get_additional_models_with_key", None)
    return list(get(MULTIGPU_KEY)) if callable(get) else []


def single_device_model(node: str, model):
    """The model without its multi-GPU CFG split copies (the model itself if it has none)."""
    clones = multigpu_clones(model)
    if not clones:
        return model
    if not callable(getattr(model, "remove_additional_models", None)):
        raise ValueError(f"{node}: model: it carries multi-GPU CFG split copies that this ComfyUI cannot "
                         "remove; connect the model without the MultiGPU CFG Split node")
    single = model.clone()
    single.remove_additional_models(MULTIGPU_KEY)
    logging.info("%s: model: the MultiGPU CFG Split is ignored (%d extra device(s)): gradients need the "
                 "model evaluated on one device, outside ComfyUI's no-grad worker threads", node, len(clones))
    return single


def check_unsplit(who: str, model_options: dict) -> None:
    """Refuse a guider whose model_options ask for the multi-GPU CFG split (no gradients there)."""
    if model_options and MULTIGPU_OPTION in model_options:
        raise ValueError(f"{who}: model: the model is set up for the multi-GPU CFG split (MultiGPU CFG "
                         "Split node), which evaluates it without gradients; connect the model without "
                         "that node")
