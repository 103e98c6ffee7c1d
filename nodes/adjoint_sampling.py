"""ComfyUI `Sampler`s that run the core's solvers (and optimisation) through the guider.

ComfyUI's own sampling pipeline (guider.sample: model loading, LoRA/patches, CFG,
wrappers, cleanup) calls `Sampler.sample(model_wrap, sigmas, ...)`. Both samplers here
plug into it, so everything a stock sampler gets, ours gets too:

- `ScheduledSolverSampler`: our DPM-Solver++ steps with the Prompt Schedule evaluated
  exactly per step; no gradients (the plain SAMPLER for SamplerCustomAdvanced).
- `AdjointOptimizingSampler`: the Adjoint Sampler's loop: sample, loss, adjoint
  gradient, Adam update, repeat; returns the best iterate's sample. A batch is optimised
  per sample, either in one pass whose network calls take the whole batch ("batched") or
  one sample after another ("one_by_one").

Grad mode is switched on only inside `sample`, with the model's inference weights
aliased by `trainable_view` (see inference_tensors.py).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import comfy.model_management
import comfy.samplers

from ..adjoint import ScheduledConditioning, SDEDPMSolverPP1, optimize, sample
from ..adjoint.optimize import SampleRun, summarize
from .guider_denoiser import GuiderDenoiser, entry_leaves
from .host_compat import check_unsplit
from .inference_tensors import GraphSafety, run_protected, to_normal
from .memory_budget import resolve_memory_budget
from .schedule_conditioning import find_schedule


def sampling_name(model_sampling) -> str:
    """The model's sampling kind as ComfyUI names it (EPS, V_PREDICTION, CONST, IMG_TO_IMG_FLOW, ...)."""
    kinds = [c.__name__ for c in type(model_sampling).__mro__
             if c.__module__ == "comfy.model_sampling" and not c.__name__.startswith("ModelSampling")]
    return kinds[0] if kinds else type(model_sampling).__name__


def _probe(shape=(1, 1, 1, 1)):
    return torch.zeros(shape), torch.ones(shape)


def noise_mix(model_sampling, sigma: float) -> tuple[float, float]:
    """(c, a) with the model's own noise_scaling(σ, ε, latent) = c·ε + a·latent (not max denoise)."""
    zeros, ones = _probe()
    s = torch.tensor(sigma, dtype=torch.float32)
    with torch.inference_mode(False), torch.no_grad():
        c = model_sampling.noise_scaling(s, ones.clone(), zeros.clone(), False)
        a = model_sampling.noise_scaling(s, zeros.clone(), ones.clone(), False)
    return float(c.flatten()[0]), float(a.flatten()[0])


def model_alpha(model_sampling, who: str = "model"):
    """α(σ) of the state x = α·x0 + c·ε the model's own noise_scaling builds: 1 − σ for flow
    models, 1 for the others (EPS, V, EDM; and samplings that start from the latent itself
    without noise, IMG_TO_IMG_FLOW, where σ runs above 1: the state is then no noisy latent,
    and α = 1 solves the ODE dx/dσ = (x − D)/σ that ComfyUI's samplers integrate).

    Both α give that same ODE; α = 1 − σ makes our first-order step exactly ComfyUI's euler
    on flow models. The noise's own scale (CONST.noise_scale, HiDream-O1: 8) changes no
    coefficient of the ODE solvers (it shifts λ by a constant); it enters through
    noise_scaling (initial_state_map) and the SDE noises (solver_for).
    """
    _, a = noise_mix(model_sampling, 0.25)
    if a == 0.75:
        return "flow"
    if a == 1.0:
        return None
    raise ValueError(f"{who}: the model's sampling ({sampling_name(model_sampling)}) mixes the latent with "
                     f"weight {a:.6g} at sigma 0.25, neither 1 (noise-prediction models) nor 1 - sigma (flow "
                     "models); the adjoint solvers do not support it. Use a stock sampler for this model")


def check_sampling(node: str, model_sampling) -> None:
    """Refuse, before any work, a sampling the Adjoint Sampler cannot optimise: one that ignores
    the noise (nothing to optimise) or transforms the sampler's result afterwards (the loss
    would not see what the node outputs); both hold for IMG_TO_IMG_FLOW (WAN 2.1 FlowRVS)."""
    model_alpha(model_sampling, f"{node}: model")
    c, _ = noise_mix(model_sampling, 0.25)
    probe = torch.linspace(-1.0, 1.0, 4).reshape(1, 1, 2, 2)
    with torch.inference_mode(False), torch.no_grad():
        out = model_sampling.inverse_noise_scaling(torch.tensor(0.0), probe.clone())
    reasons = []
    if c == 0.0:
        reasons.append("starts from the input latent itself and ignores the noise")
    if not torch.equal(out, probe):
        reasons.append("transforms the sampled result afterwards (inverse_noise_scaling is not the "
                       "identity at sigma 0)")
    if reasons:
        raise ValueError(f"{node}: model: its sampling ({sampling_name(model_sampling)}) "
                         + " and ".join(reasons) + ", as image-to-image flow models (IMG_TO_IMG_FLOW, e.g. "
                         "WAN 2.1 FlowRVS) do; the Adjoint Sampler cannot optimise such a model. Sample it "
                         "with a stock sampler, or with Adjoint Solver (Sampler) in SamplerCustomAdvanced")


def solver_for(name: str, model_sampling):
    """Our solver for the model: the SDE solver injects its noise at the model's noise scale,
    exactly as ComfyUI's SDE samplers do (s_noise · model_sampling.noise_scale)."""
    if name == "sde_dpmpp_1":
        return SDEDPMSolverPP1(noise_scale=float(getattr(model_sampling, "noise_scale", 1.0)))
    return name.removesuffix(LAMBDA_SUFFIX)


# `dpmpp_2m` and `dpmpp_1` take their steps in ComfyUI's own coordinates, x = x0 + σε with
# λ = −log σ for every family (what its stock samplers integrate), so their samples are the
# stock `dpmpp_2m` / `euler` samples to round-off and an optimised noise replays in a stock
# KSampler. `dpmpp_2m_lambda` is DPM-Solver++(2M) in the model's own λ = log(α/σ): the same
# on α = 1 models, the better integrator of the same ODE on flow models (α = 1 − σ). The
# SDE solver keeps the model's α (its noise injection is defined there).
LAMBDA_SUFFIX = "_lambda"


def solver_alpha(name: str, model_sampling, who: str):
    """The α the core integrates in for solver `name` (None: ComfyUI's α = 1 coordinates)."""
    alpha = model_alpha(model_sampling, who)     # also refuses samplings we cannot follow
    return alpha if name.endswith(LAMBDA_SUFFIX) or name == "sde_dpmpp_1" else None


def is_max_denoise(model_sampling, sigmas) -> bool:
    """ComfyUI's KSAMPLER rule: a start at σ_max scales the noise for full denoise."""
    max_sigma, sigma = float(model_sampling.sigma_max), float(sigmas[0])
    return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma


def initial_state_map(model_sampling, sigmas, latent_image):
    """x_init = scale·ε + offset, exactly as KSAMPLER's noise_scaling does it."""
    max_denoise = is_max_denoise(model_sampling, sigmas)
    zeros = torch.zeros_like(latent_image)
    offset = model_sampling.noise_scaling(sigmas[0], zeros, latent_image, max_denoise)
    unit = model_sampling.noise_scaling(sigmas[0], torch.ones_like(latent_image[:1, :1, :1, :1]),
                                        zeros[:1, :1, :1, :1], max_denoise)
    return float(unit.flatten()[0]), offset


def check_coverage(positive: list[dict], sigmas: torch.Tensor) -> None:
    """Every step's σ must be covered by some positive entry: ComfyUI silently predicts 0
    where none is (a gap between ConditioningSetTimestepRange entries)."""
    for i, sigma in enumerate(sigmas[:-1].tolist()):
        if not any(e.get("timestep_end", 0.0) <= sigma <= e.get("timestep_start", math.inf) for e in positive):
            raise ValueError(f"positive: no conditioning entry covers step {i} (sigma {sigma:.4g}); ComfyUI "
                             "would silently predict nothing there. Make the timestep ranges cover 0-100 % "
                             "or use a Prompt Schedule")


def positive_conditioning(guider, num_steps: int) -> tuple[ScheduledConditioning, bool]:
    """The conditioning the core differentiates: our schedule if present, else the entries."""
    positive = guider.conds["positive"]
    carrier = find_schedule(positive)
    if carrier is not None:
        carrier.check_steps(num_steps)
        keyframes = [{k: to_normal(v) if isinstance(v, torch.Tensor) else v for k, v in kf.items()}
                     for kf in carrier.keyframes]
        return ScheduledConditioning(keyframes, carrier.timeline), True
    leaves = {k: to_normal(v) for k, v in entry_leaves(positive).items()}
    return ScheduledConditioning.constant(leaves), False


@dataclass
class SolverSettings:
    solver: str = "dpmpp_2m"
    seed: int = 0
    step_callback: Optional[Callable] = None


class ScheduledSolverSampler(comfy.samplers.Sampler):
    """Our exponential-integrator solver, per-step schedules, no optimisation."""

    NODE = "Adjoint Solver (Sampler)"

    def __init__(self, settings: SolverSettings):
        self.settings = settings

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
               denoise_mask=None, disable_pbar=False):
        # SamplerCustomAdvanced reports what we raise as its own error: name our node
        try:
            return self._sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask)
        except ValueError as e:
            if str(e).startswith(self.NODE):
                raise
            raise ValueError(f"{self.NODE}: {e}") from e

    def _sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask):
        ms = model_wrap.inner_model.model_sampling
        alpha = solver_alpha(self.settings.solver, ms, f"{self.NODE}: model")
        scale, offset = initial_state_map(ms, sigmas, latent_image)
        cond, scheduled = positive_conditioning(model_wrap, len(sigmas) - 1)
        if not scheduled:
            check_coverage(model_wrap.conds["positive"], sigmas)
        denoiser = GuiderDenoiser(model_wrap, extra_args, noise, latent_image, denoise_mask, scheduled)

        def on_step(phase, done, total):
            comfy.model_management.throw_exception_if_processing_interrupted()
            if callback is not None:   # ComfyUI's preview callback wants the step's x0 estimate
                callback(done - 1, denoiser.last_output, None, total)

        gen = torch.Generator(device="cpu").manual_seed(int(self.settings.seed))
        traj = sample(denoiser, (scale * noise + offset).to(noise.device), sigmas, cond,
                      alpha=alpha, solver=solver_for(self.settings.solver, ms), step_callback=on_step,
                      generator=gen if "sde" in self.settings.solver else None)
        return ms.inverse_noise_scaling(sigmas[-1], traj.x0)


BATCH_MODES = ("batched", "one_by_one")


@dataclass
class OptimizeSettings:
    solver: str = "dpmpp_2m"
    method: str = "exact"
    adjoint_steps: Optional[int] = None
    optimize_noise: bool = True
    optimize_prompt: bool = False
    iterations: int = 20
    lr: float = 0.05
    renormalize_noise: bool = True
    max_grad_norm: Optional[float] = None
    early_stop_patience: Optional[int] = None
    seed: int = 0
    batch_index: Optional[list] = None      # LATENT["batch_index"]: SDE noise seeds follow it
    # "batched": every sample its own optimisation, the batch sharing each network call;
    # "one_by_one": one optimisation run after another (bit for bit a batch-1 run each)
    batch_mode: str = "batched"
    memory_budget: object = 0   # the gradient_memory widget: "auto" or megabytes (0 = recompute every step), resolved in sample()
    iteration_callback: Optional[Callable] = None
    step_callback: Optional[Callable] = None


def sample_seeds(settings: OptimizeSettings, batch: int) -> list[int]:
    """Sample b's seed for its SDE noises: seed + batch_index[b] (b without a batch_index),
    so a sample gets the same noises in a batch as cut out of it (LatentFromBatch)."""
    index = settings.batch_index or list(range(batch))
    return [settings.seed + int(index[b]) for b in range(batch)]


def optimize_options(settings: OptimizeSettings, noise_scale: float, alpha) -> dict:
    """The keywords of `optimize` that both batch modes pass alike."""
    s = settings
    return dict(noise_scale=noise_scale, alpha=alpha, solver=s.solver, method=s.method,
                adjoint_steps=s.adjoint_steps, optimize_noise=s.optimize_noise,
                optimize_keyframes=s.optimize_prompt, iterations=s.iterations, lr=s.lr,
                renormalize_noise=s.renormalize_noise, max_grad_norm=s.max_grad_norm,
                early_stop_patience=s.early_stop_patience, memory_budget=s.memory_budget,
                callback=s.iteration_callback, step_callback=s.step_callback)


def cond_for_sample(cond: ScheduledConditioning, b: int, batch: int) -> ScheduledConditioning:
    """Sample b's conditioning: batch-sized embeddings are sliced, shared ones kept."""
    if batch == 1:
        return cond
    return cond.with_leaves([l[b:b + 1] if l.shape[0] == batch else l for l in cond.leaves()])


class BatchResult:
    """The batch's optimisation results for the node's outputs: every sample's best iterate
    joined along the batch, and every sample's own history (`samples[b]`, a SampleRun:
    losses, grad_norms, best_iteration, best_loss, stop_reason, iterations_run).

    The batch's own losses / grad_norms / best_iteration / loss / stop_reason join the
    samples' as `adjoint.optimize.summarize` says (for one sample: that sample's). Without
    prompt optimisation the keyframes are the conditioning's own (shared ones stay shared).
    """

    def __init__(self, x0, noise, keyframes: list, per_sample_loss, samples: list, counts):
        self.x0, self.noise, self.keyframes = x0, noise, keyframes
        self.per_sample_loss = per_sample_loss
        self.samples = samples
        self.counts = counts
        summary = summarize(samples)
        self.losses, self.grad_norms = summary.losses, summary.grad_norms
        self.best_iteration, self.loss = summary.best_iteration, summary.loss
        self.stop_reason, self.iterations_run = summary.stop_reason, summary.iterations_run

    @classmethod
    def from_batched(cls, result) -> "BatchResult":
        """From one per-sample optimisation of the whole batch."""
        return cls(result.x0, result.noise, result.keyframes, result.per_sample_loss, result.samples,
                   result.counts)

    @classmethod
    def from_one_by_one(cls, results: list, cond: ScheduledConditioning, optimize_prompt: bool) -> "BatchResult":
        """From one batch-1 optimisation per sample."""
        samples = [SampleRun(losses=r.losses, grad_norms=r.grad_norms, best_iteration=r.best_iteration,
                             best_loss=r.loss, stop_reason=r.stop_reason, iterations_run=r.iterations_run)
                   for r in results]
        keyframes = ([_cat_keyframes([r.keyframes[k] for r in results]) for k in range(len(results[0].keyframes))]
                     if optimize_prompt else cond.keyframes)
        per_sample = [r.per_sample_loss for r in results]
        return cls(torch.cat([r.x0 for r in results]), torch.cat([r.noise for r in results]), keyframes,
                   torch.cat(per_sample) if all(p is not None for p in per_sample) else None, samples,
                   sum((r.counts for r in results[1:]), results[0].counts))


def _cat_keyframes(per_sample: list):
    if isinstance(per_sample[0], torch.Tensor):
        return torch.cat(per_sample) if len(per_sample) > 1 else per_sample[0]
    out = dict(per_sample[0])
    for k, v in per_sample[0].items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and len(per_sample) > 1:
            out[k] = torch.cat([kf[k] for kf in per_sample])
    return out


@dataclass
class OptimizeOutcome:
    result: object = None
    scheduled: bool = False
    history: list = field(default_factory=list)
    safety: list = field(default_factory=list)     # GraphSafety remedies that were needed


class AdjointOptimizingSampler(comfy.samplers.Sampler):
    """Sample → loss → adjoint gradient → Adam, `iterations` times; returns the best sample.

    Batches (settings.batch_mode): "batched" optimises every sample on its own (own Adam
    state, clipping, best iterate, early stop) in ONE pass whose network calls take the
    whole batch; "one_by_one" runs one optimisation per sample in turn. Both give every
    sample what a batch-1 run gives: one_by_one bit for bit, batched up to the network's
    round-off from batching. Progress: `passes(batch)` optimisation passes run in turn,
    each of `iterations` iterations; `current_sample` is the index of the running pass
    (the sample in one_by_one, always 0 in batched, where an iteration covers every sample).
    """

    def __init__(self, loss, settings: OptimizeSettings):
        if settings.batch_mode not in BATCH_MODES:
            raise ValueError(f"Adjoint Sampler: batch_mode: expected one of {', '.join(BATCH_MODES)}, found "
                             f"{settings.batch_mode!r}")
        self.loss = loss
        self.settings = settings
        self.outcome = OptimizeOutcome()
        self.current_sample = 0
        self.safety = GraphSafety()

    def passes(self, batch: int) -> int:
        """How many optimisation passes run one after the other for a batch of `batch`."""
        return batch if self.settings.batch_mode == "one_by_one" else 1

    def with_safety(self, model, run):
        def report(error, remedy):
            logging.info("Adjoint Sampler: %s; running again with %s", str(error).split(":")[0],
                         remedy.replace("_", " "))
        return run_protected(model, self.safety, run, report)

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
               denoise_mask=None, disable_pbar=False):
        model = model_wrap.inner_model
        ms = model.model_sampling
        check_unsplit("Adjoint Sampler", extra_args.get("model_options"))
        check_sampling("Adjoint Sampler", ms)
        alpha = solver_alpha(self.settings.solver, ms, "Adjoint Sampler: model")
        # "auto" resolved now that the model is loaded, so its weights do not count as free
        s = dataclasses.replace(self.settings, solver=solver_for(self.settings.solver, ms),
                                memory_budget=resolve_memory_budget("Adjoint Sampler", self.settings.memory_budget,
                                                                    model_wrap.model_patcher))
        scale, offset = initial_state_map(ms, sigmas, latent_image)
        cond, scheduled = positive_conditioning(model_wrap, len(sigmas) - 1)
        if not scheduled:
            check_coverage(model_wrap.conds["positive"], sigmas)
        batch = noise.shape[0]
        # The loss sees the user's latent space (what VAE Encode gives, VAE Decode takes).
        self.loss.check_batch(batch)   # references/masks fit the batch: refused before any work
        seeds = sample_seeds(s, batch)
        common = optimize_options(s, scale, alpha)

        def denoiser_for(rows: slice):
            return GuiderDenoiser(model_wrap, extra_args, noise[rows], latent_image[rows],
                                  None if denoise_mask is None else denoise_mask[rows], scheduled)

        def optimize_batch():
            self.current_sample = 0
            return optimize(denoiser_for(slice(None)), noise, sigmas, cond,
                            lambda x0: self.loss(model.process_latent_out(x0)),
                            x_offset=offset, per_sample=True, seed=seeds, **common)

        def optimize_sample(b: int):
            self.current_sample = b
            sample_loss = self.loss.select(b, batch)
            return optimize(denoiser_for(slice(b, b + 1)), noise[b:b + 1], sigmas, cond_for_sample(cond, b, batch),
                            lambda x0, loss=sample_loss: loss(model.process_latent_out(x0)),
                            x_offset=offset[b:b + 1], seed=seeds[b], **common)

        if s.batch_mode == "batched":
            result = BatchResult.from_batched(self.with_safety(model, optimize_batch))
        else:
            results = [self.with_safety(model, lambda b=b: optimize_sample(b)) for b in range(batch)]
            result = BatchResult.from_one_by_one(results, cond, s.optimize_prompt)
        self.outcome = OptimizeOutcome(result=result, scheduled=scheduled, safety=list(self.safety.active))
        return ms.inverse_noise_scaling(sigmas[-1], self.outcome.result.x0.to(noise.dtype))
