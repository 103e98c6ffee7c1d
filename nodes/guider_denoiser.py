"""The core's denoiser D(x, σ, cond), evaluated by ComfyUI's own guider.

Inside a `comfy.samplers.Sampler.sample` call ComfyUI hands us the guider (CFG,
model patches, wrappers, ControlNets all applied) with its conditioning already
processed. The core asks for D at a state x, a σ and a conditioning value it built
inside its autograd graph (a keyframe blend, or the entries' own tensors). We put
those tensors into the guider's positive conditioning for that one call, re-deriving
the model-specific inputs (c_crossattn, SDXL's adm vector, ...) with the model's own
`extra_conds`, so gradients flow to them through exactly what ComfyUI runs.

Two ways of conditioning the positive side:
- scheduled: one entry per step, built from the first positive entry as template
  with the step's blended tensors (our Prompt Schedule evaluated exactly per step);
- entries: every positive entry keeps its own σ range and area, only its tensors are
  swapped for leaves (any stock conditioning, ConditioningSetTimestepRange included).
"""
from __future__ import annotations

import torch

import comfy.samplers

# Keys of a processed entry that belong to its σ range (dropped for per-step entries).
RANGE_KEYS = ("timestep_start", "timestep_end", "start_percent", "end_percent")
TENSOR_KEYS = ("cross_attn", "pooled_output")


def entry_leaves(entries: list[dict]) -> dict[str, torch.Tensor]:
    """The differentiable tensors of processed conditioning entries, keyed 'i:key'."""
    return {f"{i}:{k}": e[k] for i, e in enumerate(entries) for k in TENSOR_KEYS
            if isinstance(e.get(k), torch.Tensor)}


class GuiderDenoiser:
    def __init__(self, guider, extra_args: dict, noise: torch.Tensor, latent_image, denoise_mask,
                 scheduled: bool):
        self.guider = guider
        self.model = guider.inner_model
        self.extra_args = extra_args
        self.base_positive = list(guider.conds["positive"])
        self.scheduled = scheduled
        self.last_output = None   # the latest x0 estimate, for ComfyUI's step previews
        self.encode_kwargs = dict(noise=noise, device=noise.device, latent_image=latent_image,
                                  denoise_mask=denoise_mask, seed=extra_args.get("seed"))

    def _reencode(self, entry: dict, tensors: dict) -> dict:
        new = {k: v for k, v in entry.items() if not (self.scheduled and k in RANGE_KEYS)}
        new.update(tensors)
        kw = dict(self.encode_kwargs)
        noise, device = kw.pop("noise"), kw.pop("device")
        return comfy.samplers.encode_model_conds(self.model.extra_conds, [new], noise, device,
                                                 "positive", **kw)[0]

    def positive_for(self, cond) -> list[dict]:
        if self.scheduled:
            tensors = {k: v for k, v in cond.items() if k in TENSOR_KEYS}
            return [self._reencode(self.base_positive[0], tensors)]
        out = []
        for i, entry in enumerate(self.base_positive):
            tensors = {k: cond[f"{i}:{k}"] for k in TENSOR_KEYS if f"{i}:{k}" in cond}
            out.append(self._reencode(entry, tensors) if tensors else entry)
        return out

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        sigmas = sigma.reshape(1).expand(x.shape[0]).to(x.dtype)
        saved = self.guider.conds["positive"]
        self.guider.conds["positive"] = self.positive_for(cond)
        try:
            out = self.guider(x, sigmas, **self.extra_args)
            self.last_output = out.detach()
            return out
        finally:
            self.guider.conds["positive"] = saved
