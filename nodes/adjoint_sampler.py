"""Adjoint Sampler and its companions: the nodes that optimise noise and prompts.

- Adjoint Sampler: samples with our solvers, scores the result with a GUIDANCE_LOSS,
  gets exact (or AdjointDEIS) gradients, updates noise and/or prompt embeddings with
  Adam, repeats; outputs the best sample, its noise, its prompt and the loss history.
- Adjoint Solver (SAMPLER): our solvers with exact per-step schedules, no optimisation,
  for SamplerCustomAdvanced.
- Noise From Latent (NOISE): replays an optimised noise in SamplerCustomAdvanced.
The work happens in adjoint_sampling.py (ComfyUI Samplers) and adjoint/ (the core).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from .adjoint_sampling import (BATCH_MODES, AdjointOptimizingSampler, OptimizeSettings,
                               ScheduledSolverSampler, SolverSettings, check_sampling)
from ..adjoint.losses import GuidanceLoss as CoreLoss, LatentTarget, WeightedSum
from .host_compat import output_latent, prepared_samples, single_device_model
from .input_checks import WidgetChecks, check_inputs, conditioning as check_conditioning_values, latent_samples
from .inference_tensors import gradient_patcher
from . import memory_budget
from .live_events import LiveLoss, running_ids
from .loss_plot import render_loss_plot
from . import schedule_conditioning as sc
from .schedule_conditioning import find_schedule

GuidanceLoss = io.Custom("GUIDANCE_LOSS")
CATEGORY = "Adjoint Guidance"
SOLVER_CHOICES = ["dpmpp_2m", "dpmpp_1", "dpmpp_2m_lambda", "sde_dpmpp_1"]
SOLVER_TOOLTIP = ("dpmpp_2m: DPM-Solver++(2M) in ComfyUI's own coordinates: the stock dpmpp_2m sample, so "
                  "the optimised noise replays in a KSampler (dpmpp_2m) on every model family; dpmpp_1: "
                  "first order (= stock euler, DDIM); dpmpp_2m_lambda: DPM-Solver++(2M) in the model's "
                  "λ = log(α/σ), the same as dpmpp_2m on SD/SDXL, a more accurate integrator on flow "
                  "models (SD3, Flux), replayed by our Adjoint Solver (Sampler) only; sde_dpmpp_1: "
                  "SDE-DPM-Solver++(1) with fixed seeded noises.")
METHOD_CHOICES = ["exact", "adjointdeis-1", "adjointdeis-2m", "adjointdeis-sde"]
OPTIMIZE_CHOICES = ["noise", "prompt", "noise + prompt"]
STOP_TEXT = {"iterations": "ran all iterations", "early_stop": "stopped early (no improvement)",
             "non_finite_loss": "stopped: the loss became NaN/inf; kept the best iterate",
             "non_finite_gradient": "stopped: the gradient became NaN/inf; kept the best iterate"}


def sampling_sigmas(model, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
    """ComfyUI KSampler's σ grid, denoise included (the last `steps` of a longer schedule)."""
    ms = model.get_model_object("model_sampling")
    if denoise >= 0.9999:
        return comfy.samplers.calculate_sigmas(ms, scheduler, steps).cpu()
    total = int(steps / denoise)
    return comfy.samplers.calculate_sigmas(ms, scheduler, total).cpu()[-(steps + 1):]


def prepared_latent(node: str, model, latent: dict) -> torch.Tensor:
    samples = prepared_samples(model, latent)   # as the stock samplers: channels, empty-latent ratios
    latent_format = model.get_model_object("latent_format")
    channels = latent_format.latent_channels
    # image models sample (B, C, H, W); models with latent_dimensions 3 (Qwen-Image, Wan) (B, C, T, H, W)
    ndim = 2 + getattr(latent_format, "latent_dimensions", 2)
    layout = "(batch, channels, height, width)" if ndim == 4 else "(batch, channels, frames, height, width)"
    if samples.ndim != ndim:
        raise ValueError(f"{node}: latent_image: a {samples.ndim}-D latent (shape {tuple(samples.shape)}), but "
                         f"this model samples {ndim}-D latents {layout} with {channels} channels; use a "
                         "latent made for this model (its own Empty Latent or VAE Encode)")
    if samples.shape[1] != channels:
        raise ValueError(f"{node}: latent_image: the latent has {samples.shape[1]} channels "
                         f"(shape {tuple(samples.shape)}) but the model expects {channels}; use a "
                         "latent made for this model (its own Empty Latent or VAE Encode)")
    return samples


def check_conditioning(node: str, name: str, model, conditioning) -> None:
    """Conditioning from another model family fails deep inside the UNet; say so up front."""
    context = getattr(model.model.diffusion_model, "context_dim", None) \
        or model.model.model_config.unet_config.get("context_dim")
    if not conditioning:
        raise ValueError(f"{node}: {name}: the conditioning is empty")
    check_conditioning_values(node, name, conditioning)      # [embedding, options] entries, finite
    for entry in conditioning:
        t = entry[0]
        if context and t.shape[-1] != context:
            raise ValueError(f"{node}: {name}: the text embedding has width {t.shape[-1]} but the "
                             f"model expects {context}; was it encoded with this model's CLIP?")


def latent_targets(loss):
    """The Latent Target losses in a loss (through Combines)."""
    if isinstance(loss, LatentTarget):
        yield loss
    elif isinstance(loss, WeightedSum):
        for _, term in loss.terms:
            yield from latent_targets(term)


def check_loss(node: str, loss, samples) -> None:
    """The loss fits the latent: per-sample references and masks (1 or one per sample), latent
    targets of the latent's shape; refused before the model loads."""
    if not isinstance(loss, CoreLoss):
        raise ValueError(f"{node}: loss: expected a GUIDANCE_LOSS from a Guidance Loss node, got "
                         f"{type(loss).__name__}")
    try:
        loss.check_batch(samples.shape[0])
    except ValueError as e:
        raise ValueError(f"{node}: {e}") from None
    for target in latent_targets(loss):
        if tuple(target.target.shape[1:]) != tuple(samples.shape[1:]):
            raise ValueError(f"{node}: {target.node}: target: the target latent has shape "
                             f"{tuple(target.target.shape[1:])} per sample but latent_image has "
                             f"{tuple(samples.shape[1:])}; use a target of the latent's size")


# The core API's names in its messages → the node's inputs. The core puts its function's name
# first (`optimize: lr: ...`), which would read as our `optimize` input: dropped.
_CORE_FUNCTION = re.compile(r"^(?:optimize|gradients|sample): ")
_CORE_NAMES = ((re.compile(r"^method\b"), "gradient"),
               (re.compile(r"^lr\b"), "learning_rate"),
               (re.compile(r"^nothing to optimise: set optimize_noise.*", re.S),
                "optimize: nothing to optimise (choose noise, prompt or noise + prompt)"))


def node_message(node: str, text: str) -> str:
    if text.startswith(node):
        return text
    text = _CORE_FUNCTION.sub("", text)
    for pattern, name in _CORE_NAMES:
        text = pattern.sub(name, text)
    return f"{node}: {text}"


class AdjointSampler(io.ComfyNode):
    NAME = "Adjoint Sampler"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdjointGuidance_AdjointSampler",
            display_name="Adjoint Sampler",
            category=CATEGORY,
            hidden=[io.Hidden.unique_id],     # the live loss curve's events name the node
            description="Samples, scores the result with a guidance loss, and optimises the initial "
                        "noise and/or the (scheduled) prompt embeddings with exact adjoint gradients.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model, as for KSampler (LoRAs and other patches "
                                                "keep working)."),
                io.Conditioning.Input("positive", tooltip="A Prompt Schedule or any conditioning."),
                io.Conditioning.Input("negative", tooltip="The negative conditioning, as for KSampler (not "
                                                          "optimised)."),
                io.Latent.Input("latent_image", tooltip="The latent to sample, as for KSampler (Empty Latent "
                                                        "Image, or VAE Encode with denoise < 1)."),
                GuidanceLoss.Input("loss", tooltip="What to minimise: a Guidance Loss node."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Initial noise (as KSampler draws it) and the SDE noises."),
                io.Int.Input("steps", default=20, min=1, max=1000,
                             tooltip="Sampling steps of every iteration. A Prompt Schedule on positive "
                                     "must be resolved for the same steps."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale, as for KSampler."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="karras",
                               tooltip="ComfyUI's scheduler (the sigmas of the steps), as for KSampler."),
                io.Combo.Input("solver", options=SOLVER_CHOICES, default="dpmpp_2m", tooltip=SOLVER_TOOLTIP),
                io.Combo.Input("gradient", options=METHOD_CHOICES, default="exact",
                               tooltip="exact: the exact gradient of the sample produced (recommended). "
                                       "adjointdeis-*: the continuous adjoint (AdjointDEIS) solvers; "
                                       "adjointdeis-sde goes with the SDE solver."),
                io.Int.Input("adjoint_steps", default=0, min=0, max=1000,
                             tooltip="Backward steps of the AdjointDEIS methods; 0 = same as steps."),
                io.Combo.Input("optimize", options=OPTIMIZE_CHOICES, default="noise",
                               tooltip="What the gradient changes: noise (the initial noise), prompt (every "
                                       "keyframe embedding and pooled vector of positive) or both."),
                io.Int.Input("iterations", default=20, min=1, max=1000,
                             tooltip="Optimisation iterations, each one sampling pass plus one backward "
                                     "pass; the best iterate is returned."),
                io.Float.Input("learning_rate", default=0.05, min=1e-6, max=10.0, step=0.001, round=1e-6,
                               tooltip="Adam step size (on the unit-variance noise and the embeddings)."),
                io.Boolean.Input("renormalize_noise", default=True,
                                 tooltip="Keep each sample's noise at its initial norm (the Gaussian "
                                         "shell), so it stays noise-like."),
                io.Float.Input("max_grad_norm", default=0.0, min=0.0, max=1e6, step=0.01,
                               tooltip="Clip the gradient to this norm; 0 = no clipping."),
                io.Int.Input("early_stop_patience", default=0, min=0, max=1000,
                             tooltip="Stop after this many iterations without improvement; 0 = never."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="As for KSampler: below 1 samples the tail of a longer schedule "
                                       "(img2img)."),
                # last and optional, so workflows and API prompts from before they existed still run
                io.Combo.Input("batch_mode", options=list(BATCH_MODES), default="batched", optional=True,
                               tooltip="batched: every sample is its own optimisation (own Adam state, "
                                       "clipping, best iterate, early stop) while the batch shares each "
                                       "network call; equal to one_by_one up to float round-off. "
                                       "one_by_one: the samples run one after another, each bit for bit "
                                       "what a batch of 1 gives."),
                io.String.Input(memory_budget.INPUT, default=memory_budget.DEFAULT, optional=True,
                                tooltip=memory_budget.TOOLTIP),
            ],
            outputs=[
                io.Latent.Output("LATENT", display_name="latent",
                                 tooltip="The best sample (lowest loss over the iterations)."),
                io.Latent.Output("NOISE_LATENT", display_name="optimized_noise",
                                 tooltip="The best iterate's initial noise (unit variance); Noise From "
                                         "Latent replays it in SamplerCustomAdvanced."),
                io.Conditioning.Output("CONDITIONING", display_name="optimized_positive",
                                       tooltip="positive with the optimised embeddings (a schedule "
                                               "stays a schedule); usable by the stock samplers."),
                io.Image.Output("LOSS_PLOT", display_name="loss_plot",
                                tooltip="An image of the loss per iteration."),
            ],
        )

    validate_inputs = WidgetChecks()     # widget values when queued (input_checks.py)

    @classmethod
    def input_problems(cls, v: dict, connected):
        """Cross-checks of the widgets: gradient vs solver, adjoint_steps vs steps and gradient;
        the gradient_memory text."""
        node = cls.NAME
        if memory_budget.INPUT in v:
            try:
                memory_budget.parse_memory_budget(node, v[memory_budget.INPUT])
            except ValueError as e:
                yield memory_budget.INPUT, str(e)
        if {"gradient", "solver"} <= v.keys():
            gradient, solver = v["gradient"], v["solver"]
            if gradient != "exact" and (gradient == "adjointdeis-sde") != (solver == "sde_dpmpp_1"):
                yield "gradient", (f"{node}: gradient: {gradient!r} does not go with solver {solver!r}; use "
                                   + ("'exact' or 'adjointdeis-sde'" if solver == "sde_dpmpp_1"
                                      else "'exact', 'adjointdeis-1' or 'adjointdeis-2m'"))
        if {"adjoint_steps", "steps", "gradient"} <= v.keys() and v["adjoint_steps"] != 0:
            m, n, gradient = v["adjoint_steps"], v["steps"], v["gradient"]
            if gradient == "exact":
                if m != n:
                    yield "adjoint_steps", (f"{node}: adjoint_steps: the exact gradient always takes the "
                                            f"sampler's {n} steps back, found {m}; use 0 (= steps), or an "
                                            "adjointdeis gradient for fewer backward steps")
            elif n == 1:
                if m != 1:
                    yield "adjoint_steps", (f"{node}: adjoint_steps: a 1-step sampler has 1 backward step, found "
                                            f"{m}; use 0 or 1")
            elif not 2 <= m <= n:
                yield "adjoint_steps", (f"{node}: adjoint_steps: expected 0 (= steps) or a number from 2 to the "
                                        f"{n} steps (it counts the final denoise step), found {m}")

    @classmethod
    def execute(cls, model, positive, negative, latent_image, loss, seed, steps, cfg, scheduler,
                solver, gradient, adjoint_steps, optimize, iterations, learning_rate,
                renormalize_noise, max_grad_norm, early_stop_patience, denoise, batch_mode="batched",
                gradient_memory=memory_budget.DEFAULT) -> io.NodeOutput:
        node = cls.NAME
        # every value (linked widgets too) and the linked tensors, before the model loads
        check_inputs(AdjointSampler, dict(
            seed=seed, steps=steps, cfg=cfg, scheduler=scheduler, solver=solver, gradient=gradient,
            adjoint_steps=adjoint_steps, optimize=optimize, iterations=iterations,
            learning_rate=learning_rate, renormalize_noise=renormalize_noise, max_grad_norm=max_grad_norm,
            early_stop_patience=early_stop_patience, denoise=denoise, batch_mode=batch_mode,
            gradient_memory=gradient_memory))
        model, samples = checked_model_and_latent(node, model, positive, negative, latent_image, loss, steps)
        noise = comfy.sample.prepare_noise(samples, seed, latent_image.get("batch_index"))
        sigmas = sampling_sigmas(model, scheduler, steps, denoise)

        live = LiveLoss(running_ids(getattr(cls.hidden, "unique_id", None)), samples.shape[0], iterations, loss)
        progress = SamplerProgress(model, samples.shape[0], iterations, steps, live)
        settings = OptimizeSettings(
            solver=solver, method=gradient, adjoint_steps=adjoint_steps or None,
            optimize_noise=optimize in ("noise", "noise + prompt"),
            optimize_prompt=optimize in ("prompt", "noise + prompt"),
            iterations=iterations, lr=learning_rate, renormalize_noise=renormalize_noise,
            max_grad_norm=max_grad_norm or None, early_stop_patience=early_stop_patience or None,
            seed=seed, batch_index=latent_image.get("batch_index"), batch_mode=batch_mode,
            memory_budget=memory_budget.parse_memory_budget(node, gradient_memory),
            iteration_callback=progress.on_iteration, step_callback=progress.on_step)
        sampler = AdjointOptimizingSampler(loss, settings)
        progress.follow(sampler)
        out_samples = run_sampler(node, model, positive, negative, cfg, noise, samples, sampler, sigmas, seed)
        result = sampler.outcome.result
        status = STOP_TEXT.get(result.stop_reason, result.stop_reason)
        live.finish(result, result.stop_reason, status)
        if result.stop_reason.startswith("non_finite"):
            logging.warning("%s: %s (best iteration %d)", node, status, result.best_iteration)
        return node_outputs(latent_image, out_samples, samples.dtype, positive, sampler.outcome, status,
                            f"{gradient} / {solver}", live)


def checked_model_and_latent(node: str, model, positive, negative, latent_image, loss, steps: int):
    """(the model to sample, the prepared latent samples), after every check that needs no
    network call: latent, conditionings, schedule steps, loss against the latent."""
    latent_samples(node, "latent_image", latent_image, ranks=None)   # the rank: prepared_latent
    model = single_device_model(node, model)   # no multi-GPU CFG split: it runs without gradients
    check_sampling(node, model.get_model_object("model_sampling"))
    samples = prepared_latent(node, model, latent_image)
    if latent_image.get("noise_mask") is not None:
        raise ValueError(f"{node}: latent_image: it carries a noise mask (Set Latent Noise Mask / "
                         "inpainting), which the Adjoint Sampler does not support yet; use a latent "
                         "without a mask, and a masked Guidance Loss to focus the optimisation")
    check_conditioning(node, "positive", model, positive)
    check_conditioning(node, "negative", model, negative)
    carrier = find_schedule(positive)
    if carrier is not None:
        carrier.check_steps(steps, who=node)
    check_loss(node, loss, samples)
    return model, samples


def run_sampler(node: str, model, positive, negative, cfg, noise, samples, sampler, sigmas, seed):
    """ComfyUI's CFGGuider with our sampler; the core's and the sampler's ValueErrors name the
    input, the node is added."""
    # never differentiate through dynamic VRAM: ComfyUI's non-dynamic delegate instead
    guider = comfy.samplers.CFGGuider(gradient_patcher(model, f"{node}: model"))
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    try:
        return guider.sample(noise, samples, sampler, sigmas, callback=None, disable_pbar=True, seed=seed)
    except ValueError as e:
        raise ValueError(node_message(node, str(e))) from e


class SamplerProgress:
    """ComfyUI's progress bar over passes × iterations × steps, a preview each iteration, and
    the live loss curve's events. The sampler it `follow`s says how many optimisation passes
    run in turn (one per sample, or one for the whole batch) and which one is running."""

    def __init__(self, model, batch: int, iterations: int, steps: int, live: LiveLoss):
        self.batch, self.iterations, self.steps, self.live = batch, iterations, steps, live
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
        self.sample, self.iteration = 0, 0     # iterations done of the current pass
        self.sampler, self.total, self.pbar = None, 0, None

    def follow(self, sampler) -> None:
        self.sampler = sampler
        passes = sampler.passes(self.batch) if hasattr(sampler, "passes") else self.batch
        self.total = passes * self.iterations * self.steps
        self.pbar = comfy.utils.ProgressBar(self.total)
        self.live.current_sample = lambda: getattr(sampler, "current_sample", 0)

    def done_before(self) -> int:
        current = getattr(self.sampler, "current_sample", 0)
        if current != self.sample:      # the next sample has started
            self.sample, self.iteration = current, 0
        return (self.sample * self.iterations + self.iteration) * self.steps

    def on_step(self, phase, done, of) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        # the forward and the backward pass each fill half of an iteration's share
        within = (done if phase == "forward" else of + done) * self.steps / (2 * of)
        self.pbar.update_absolute(min(int(self.done_before() + within), self.total), self.total)

    def on_iteration(self, info) -> None:
        self.done_before()
        self.iteration = info.iteration + 1
        preview = None
        if self.previewer is not None:
            preview = self.previewer.decode_latent_to_preview_image("JPEG", info.x0)
        self.pbar.update_absolute(min(self.done_before(), self.total), self.total, preview)
        self.live.on_iteration(info)


def node_outputs(latent_image, out_samples, dtype, positive, outcome, status: str, method: str,
                 live: LiveLoss) -> io.NodeOutput:
    """latent, optimized_noise, optimized_positive, loss_plot and the ui report of a finished run."""
    result = outcome.result
    out_latent = output_latent(latent_image, out_samples.cpu())
    noise_latent = {"samples": result.noise.detach().cpu().to(dtype)}
    optimized_positive = optimized_conditioning(positive, result, outcome.scheduled)
    plot = render_loss_plot(result.losses, result.best_iteration,
                            f"{method}: best {result.loss:.4g} at {result.best_iteration} ({status})")
    ui = {"adjoint_guidance_loss": [loss_report(result, outcome, status, live)]}
    return io.NodeOutput(out_latent, noise_latent, optimized_positive, plot, ui=ui)


def loss_report(result, outcome, status: str, live: LiveLoss) -> dict:
    """ui["adjoint_guidance_loss"][0]: the histories (null for non-finite values), the best
    iterate, why it stopped, the network calls; per-sample losses and a Combine's parts."""
    report = {
        "losses": [v if math.isfinite(v) else None for v in result.losses],
        "grad_norms": [v if math.isfinite(v) else None for v in result.grad_norms],
        "best_iteration": result.best_iteration, "best_loss": result.loss,
        "stop_reason": result.stop_reason, "status": status,
        "graph_safety": outcome.safety,
        "network_calls": {"forwards": result.counts.forwards,
                          "forwards_with_grad": result.counts.forwards_with_grad,
                          "vjps": result.counts.vjps},
    }
    report.update(live.ui_extra(len(result.losses)))
    per_sample = getattr(result, "samples", None)
    if per_sample is not None:
        report["best_iterations"] = [r.best_iteration for r in per_sample]
    return report


def rebuild_with_keyframes(positive, keyframes: list[dict]):
    """The schedule's stock entries again, with new keyframe tensors and the same windows.

    The windows (and their exact start/end percents) are those of the original schedule:
    a prompt repeated to hold it before a blend was one window there, and stays one,
    conditioned by the first of its (now separately optimised) keyframes.
    """
    carrier, others = sc.split_schedule(positive)
    original = carrier.keyframes
    windows = sc.step_windows(carrier.timeline, carrier.steps,
                              same=lambda a, b: sc.same_conditioning(original[a], original[b]))
    new = dataclasses.replace(carrier, keyframes=keyframes)
    return sc.build_entries(new, windows) + list(others)


def optimized_conditioning(positive, result, scheduled: bool):
    """The positive CONDITIONING with the optimised embeddings, usable by stock samplers."""
    if scheduled:
        return rebuild_with_keyframes(positive, [
            {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in kf.items()}
            for kf in result.keyframes])
    leaves = result.keyframes[0]
    out = []
    for i, (tensor, options) in enumerate(positive):
        options = dict(options)
        if f"{i}:pooled_output" in leaves:
            options["pooled_output"] = leaves[f"{i}:pooled_output"].detach().cpu()
        out.append([leaves.get(f"{i}:cross_attn", tensor).detach().cpu(), options])
    return out


class AdjointSolverSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdjointGuidance_SolverSampler",
            display_name="Adjoint Solver (Sampler)",
            category=CATEGORY,
            description="Our DPM-Solver++ solvers as a SAMPLER for SamplerCustomAdvanced, with Prompt "
                        "Schedules evaluated exactly per step (blends included). No optimisation.",
            inputs=[io.Combo.Input("solver", options=SOLVER_CHOICES, default="dpmpp_2m", tooltip=SOLVER_TOOLTIP)],
            outputs=[io.Sampler.Output(tooltip="A SAMPLER for SamplerCustomAdvanced.")],
        )

    validate_inputs = WidgetChecks()

    @classmethod
    def execute(cls, solver) -> io.NodeOutput:
        check_inputs(AdjointSolverSampler, dict(solver=solver))
        return io.NodeOutput(ScheduledSolverSampler(SolverSettings(solver=solver)))


class LatentNoise:
    """A NOISE for SamplerCustomAdvanced that returns a stored noise tensor."""

    def __init__(self, samples: torch.Tensor, seed: int):
        self.samples, self.seed = samples, seed

    def generate_noise(self, input_latent):
        shape = tuple(input_latent["samples"].shape)
        if tuple(self.samples.shape) != shape:
            raise ValueError(f"Noise From Latent: noise: the stored noise has shape {tuple(self.samples.shape)} "
                             f"but the latent to sample has {shape}")
        return self.samples.clone()


class NoiseFromLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdjointGuidance_NoiseFromLatent",
            display_name="Noise From Latent",
            category=CATEGORY,
            description="Use a stored noise (e.g. the Adjoint Sampler's optimized_noise) as the NOISE "
                        "of SamplerCustomAdvanced.",
            inputs=[io.Latent.Input("noise", tooltip="A LATENT holding unit-variance noise."),
                    io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff,
                                 tooltip="Only used by SDE samplers for their own noise.")],
            outputs=[io.Noise.Output(tooltip="A NOISE for SamplerCustomAdvanced that returns the stored "
                                             "noise.")],
        )

    validate_inputs = WidgetChecks()

    @classmethod
    def execute(cls, noise, seed) -> io.NodeOutput:
        check_inputs(NoiseFromLatent, dict(seed=seed))
        return io.NodeOutput(LatentNoise(latent_samples("Noise From Latent", "noise", noise), seed))


NODES = [AdjointSampler, AdjointSolverSampler, NoiseFromLatent]
