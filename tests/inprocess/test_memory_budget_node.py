"""The memory budget inside ComfyUI: kept graphs through the real guider, under GraphSafety.

- Through ComfyUI's CFGGuider and a tiny SD1.5 UNet loaded under inference mode, the
  gradient with graphs kept (one step, half, all) equals the budget-0 gradient, and the
  step's size is what the node's guard reports (its activations, never its weights).
- GraphSafety still protects graphs kept across steps: an in-place write into a kept
  activation is caught and recovered (snapshots), one into a resident weight is caught
  and raised; a cast buffer reused by later steps cannot reach a kept graph; a weight
  ComfyUI rewrites in place between steps (hooked LoRA keyframes) is caught and the work
  runs again keeping no graphs.
- `nodes/memory_budget.py`: the `gradient_memory` widget parsed and resolved with
  ComfyUI's own free-memory numbers.
"""
import pytest
import torch

from comfy_harness import pack_submodule, tiny_unet32_patcher
from guider_harness import SharedBufferLinear, run_in_guider

MiB = 2 ** 20


def rel(a, b):
    return float((a - b).norm() / b.norm())


def embeddings(seed, n, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return [torch.randn(1, 77, 768, generator=g).to(dtype) for _ in range(n)]


@pytest.fixture(scope="module")
def unet32(comfy_nodes):
    with torch.inference_mode():
        patcher = tiny_unet32_patcher()
    assert next(patcher.model.diffusion_model.parameters()).is_inference()
    return patcher


def test_kept_graphs_through_the_real_guider_give_the_budget_0_gradient(unet32):
    adjoint = pack_submodule("adjoint")
    gd = pack_submodule("nodes.guider_denoiser")
    inf = pack_submodule("nodes.inference_tensors")
    k0, k1, neg = embeddings(1, 3)
    timeline = adjoint.Timeline((adjoint.Position(0.0), adjoint.Position(0.5)), "hold")
    target = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    weights_mb = sum(p.numel() * p.element_size() for p in unet32.model.parameters()) / MiB

    def body(model_wrap, sigmas, extra_args, noise, latent):
        safety = inf.GraphSafety()

        def gradients():
            den = gd.GuiderDenoiser(model_wrap, extra_args, noise, latent, None, scheduled=True)
            kfs = [{"cross_attn": inf.to_normal(k)} for k in (k0, k1)]
            sched = adjoint.ScheduledConditioning(kfs, timeline)
            x_init = inf.to_normal(noise) * float(sigmas[0])
            sig = inf.to_normal(sigmas)
            loss = lambda x0: (x0 - target).square().mean(dim=(1, 2, 3))
            ref = adjoint.gradient(den, x_init, sig, sched, loss)
            full = adjoint.gradient(den, x_init, sig, sched, loss, memory_budget=10_000.0)
            step_mb = full.kept_graphs.step_mb
            runs = {"budget 0": ref, "all steps": full,
                    "one step": adjoint.gradient(den, x_init, sig, sched, loss, memory_budget=step_mb[0]),
                    "half": adjoint.gradient(den, x_init, sig, sched, loss, memory_budget=sum(step_mb[:3]))}
            return runs
        runs = inf.run_protected(model_wrap.inner_model, safety, gradients)
        return runs, list(safety.active)

    runs, remedies = run_in_guider(unet32, [[k0, {}]], [[neg, {}]], body, (4, 8, 8), steps=6, cfg=3.0,
                                   dtype=torch.float32)
    assert remedies == []
    ref = runs["budget 0"]
    n = 6
    for name, kept in (("budget 0", 0), ("one step", 1), ("half", 3), ("all steps", n)):
        res = runs[name]
        assert rel(res.grad_x_init, ref.grad_x_init) < 1e-6, name
        for got, want in zip(res.grad_keyframes, ref.grad_keyframes):
            assert rel(got["cross_attn"], want["cross_attn"]) < 1e-6, name
        assert len(res.kept_graphs.steps) == kept, name
        assert (res.counts.forwards, res.counts.forwards_with_grad, res.counts.vjps) == (n - kept, n, n), name
    step_mb = runs["all steps"].kept_graphs.step_mb
    # measured by the node's guard: the step's activations, not the resident weights
    assert all(0.1 < mb < weights_mb for mb in step_mb), (step_mb, weights_mb)
    assert max(step_mb) / min(step_mb) < 1.01


@pytest.mark.parametrize("family,remedies", [("sd15", []), ("flux1", ["snapshot_activations"])])
def test_kept_graphs_on_model_families_with_and_without_graphsafety_remedies(comfy_nodes, family, remedies):
    """Flux's blocks add residuals in place into tensors a LayerNorm saved: with graphs kept,
    GraphSafety escalates exactly as at budget 0, and the gradient is the budget-0 one."""
    from guider_harness import two_keyframes
    from model_families import family_or_skip
    fam = family_or_skip(family)
    adjoint = pack_submodule("adjoint")
    gd = pack_submodule("nodes.guider_denoiser")
    inf = pack_submodule("nodes.inference_tensors")
    patcher = fam.build(torch.float32)
    positive, negative = fam.conditioning(1), fam.conditioning(2)
    timeline = adjoint.Timeline((adjoint.Position(0.0), adjoint.Position(0.5)), "hold")
    target = torch.randn(1, *fam.latent_shape, generator=torch.Generator().manual_seed(9))

    def body(model_wrap, sigmas, extra_args, noise, latent):
        ms = model_wrap.inner_model.model_sampling
        scale = float(ms.noise_scaling(sigmas[0], torch.ones(1), torch.zeros(1), True))
        out = {}
        for budget in (0, 10_000.0):
            safety = inf.GraphSafety()

            def gradient():
                den = gd.GuiderDenoiser(model_wrap, extra_args, noise, latent, None, scheduled=True)
                kfs = [{k: inf.to_normal(v) for k, v in kf.items()} for kf in two_keyframes(positive)]
                return adjoint.gradient(den, inf.to_normal(noise) * scale, inf.to_normal(sigmas),
                                        adjoint.ScheduledConditioning(kfs, timeline),
                                        lambda x0: (x0 - target).square().flatten(1).mean(1), memory_budget=budget)
            out[budget] = (inf.run_protected(model_wrap.inner_model, safety, gradient), list(safety.active))
        return out

    out = run_in_guider(patcher, positive, negative, body, fam.latent_shape, steps=4, cfg=fam.cfg,
                        scheduler="simple", dtype=torch.float32)
    (ref, ref_remedies), (kept, kept_remedies) = out[0], out[10_000.0]
    assert ref_remedies == kept_remedies == remedies
    assert kept.kept_graphs.steps == (0, 1, 2, 3) and ref.kept_graphs.steps == ()
    assert (kept.counts.forwards, kept.counts.forwards_with_grad, kept.counts.vjps) == (0, 4, 4)
    assert rel(kept.grad_x_init, ref.grad_x_init) < 1e-6
    for got, want in zip(kept.grad_keyframes, ref.grad_keyframes):
        for key in want:      # (an unread input, SD1.5's pooled_output, has a zero gradient in both)
            assert float((got[key] - want[key]).norm()) <= 1e-6 * float(want[key].norm()), key


# ---------------------------------------------------------------------------------------
# GraphSafety with graphs kept across steps
# ---------------------------------------------------------------------------------------
class CachingNet(torch.nn.Module):
    """Keeps the previous call's activation and scales it in place at the next call (a
    cache touched across steps): harmless when every graph dies within its step."""

    def __init__(self, write_into_buffer=False):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.lin = torch.nn.Linear(8, 8)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(8, 8, generator=g) / 3)
        self.register_buffer("scale", torch.ones(8))
        self.write_into_buffer = write_into_buffer
        self.cache = None

    def forward(self, x, sigma, cond):
        if self.write_into_buffer:
            self.scale.mul_(1.0)                    # a resident buffer, saved below
        elif self.cache is not None:
            self.cache.mul_(1.0)                    # the previous step's saved activation
        h = torch.tanh(self.lin(x) * self.scale + cond)      # tanh saves its output h
        self.cache = h
        return x / (1 + sigma) + h


def run_core(module, denoiser, budget, safety=None, guard=True):
    adjoint = pack_submodule("adjoint")
    inf = pack_submodule("nodes.inference_tensors")
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
    cond = torch.randn(1, 8, generator=torch.Generator().manual_seed(4))
    sig = adjoint.karras_sigmas(5, 0.1, 10.0, dtype=torch.float32)

    def work():
        if hasattr(module, "cache"):
            module.cache = None
        return adjoint.gradient(denoiser, x, sig, cond, lambda x0: x0.square().sum(1), memory_budget=budget)
    if not guard:
        return work()
    return inf.run_protected(module, safety if safety is not None else inf.GraphSafety(), work)


def test_in_place_write_into_a_kept_activation_is_caught_and_run_again_with_snapshots(comfy_nodes):
    inf = pack_submodule("nodes.inference_tensors")
    net = CachingNet()
    ref = run_core(net, net, 0)
    safety = inf.GraphSafety()
    res = run_core(net, net, 1000.0, safety)
    assert safety.active == ["snapshot_activations"]         # the guard fired, the remedy held
    assert len(res.kept_graphs.steps) == 5
    assert rel(res.grad_x_init, ref.grad_x_init) < 1e-6 and rel(res.grad_cond, ref.grad_cond) < 1e-6


def test_in_place_write_into_a_weight_saved_by_a_kept_graph_is_raised(comfy_nodes):
    inf = pack_submodule("nodes.inference_tensors")
    net = CachingNet(write_into_buffer=True)
    safety = inf.GraphSafety()
    assert run_core(net, net, 0, safety).kept_graphs.steps == ()
    assert safety.active == []                      # budget 0: no graph outlives its step
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        run_core(net, net, 1000.0, safety)
    assert safety.active == ["snapshot_activations"]   # tried, and still refused: never a wrong gradient


def test_a_cast_buffer_reused_by_later_steps_cannot_reach_a_kept_graph(comfy_nodes):
    g = torch.Generator().manual_seed(4)
    buffer = torch.empty(64)
    weights = [torch.randn(8, 8, generator=g) / 3 for _ in range(2)]
    net = torch.nn.Sequential(*[SharedBufferLinear(w, buffer) for w in weights])
    plain = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False), torch.nn.Tanh())
                                  for _ in weights])
    with torch.no_grad():
        for layer, w in zip(plain, weights):
            layer[0].weight.copy_(w)

    def denoiser(module):
        return lambda x, sigma, cond: x / (1 + sigma) + module(x + cond)
    exact = run_core(plain, denoiser(plain), 0, guard=False)
    unguarded = run_core(net, denoiser(net), 1000.0, guard=False)
    assert rel(unguarded.grad_x_init, exact.grad_x_init) > 1e-3, "the hazard is not reproduced"
    guarded = run_core(net, denoiser(net), 1000.0)
    assert len(guarded.kept_graphs.steps) == 5
    assert rel(guarded.grad_x_init, exact.grad_x_init) < 1e-6


class HookedWeightNet(torch.nn.Module):
    """Rewrites its weight for every step's σ through comfy.utils.copy_to_param, as ComfyUI
    does when hooked LoRA weights change keyframe during sampling."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(6)
        self.base = torch.randn(8, 8, generator=g) / 3
        self.weight = torch.nn.Parameter(self.base.clone(), requires_grad=False)

    def __call__(self, x, sigma, cond):
        import comfy.utils
        comfy.utils.copy_to_param(self, "weight", self.base * (1 + float(sigma) / 10))
        return x / (1 + sigma) + torch.tanh(torch.nn.functional.linear(x + cond, self.weight))


def test_a_weight_rewritten_between_steps_makes_graphsafety_keep_no_graphs(comfy_nodes):
    inf = pack_submodule("nodes.inference_tensors")
    net = HookedWeightNet()
    ref = run_core(net, net, 0)
    unguarded = run_core(net, net, 1000.0, guard=False)
    assert rel(unguarded.grad_x_init, ref.grad_x_init) > 1e-3, "the hazard is not reproduced"
    safety = inf.GraphSafety()
    res = run_core(net, net, 1000.0, safety)
    assert safety.active == ["keep_no_graphs"]
    assert res.kept_graphs.steps == () and (res.counts.forwards, res.counts.vjps) == (5, 5)
    assert rel(res.grad_x_init, ref.grad_x_init) < 1e-6


# ---------------------------------------------------------------------------------------
# the gradient_memory widget
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,megabytes", [("0", 0.0), (0, 0.0), ("512", 512.0), (" 1.5 ", 1.5),
                                             (256.0, 256.0), ("64 MB", 64.0)])
def test_gradient_memory_numbers(comfy_nodes, value, megabytes):
    mb = pack_submodule("nodes.memory_budget")
    assert mb.parse_memory_budget("Adjoint Sampler", value) == megabytes
    assert mb.resolve_memory_budget("Adjoint Sampler", value, torch.device("cpu")) == megabytes


@pytest.mark.parametrize("value", ["-1", "lots", "nan", "inf", -3.0, None, True, "1e400"])
def test_gradient_memory_refusals_name_the_node_and_the_input(comfy_nodes, value):
    mb = pack_submodule("nodes.memory_budget")
    with pytest.raises(ValueError) as info:
        mb.resolve_memory_budget("Adjoint Sampler", value, torch.device("cpu"))
    assert str(info.value) == ("Adjoint Sampler: gradient_memory: expected \"auto\", 0 (recompute every step) "
                               f"or a number of megabytes > 0, found {value!r}")


def test_gradient_memory_auto_uses_comfyuis_free_memory(comfy_nodes, unet32, monkeypatch):
    import comfy.model_management as mm
    mb = pack_submodule("nodes.memory_budget")
    cpu_free = mm.get_free_memory(torch.device("cpu"))
    auto = mb.resolve_memory_budget("Adjoint Sampler", "auto", unet32)       # a ModelPatcher: its load device
    assert auto == pytest.approx(0.5 * cpu_free / MiB, rel=0.05)
    assert mb.resolve_memory_budget("Adjoint Sampler", "auto", None) == pytest.approx(auto, rel=0.05)
    # on a GPU: half of ComfyUI's free memory after its inference reserve (minimum_inference_memory)
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: 10 * 2 ** 30)
    reserve = mm.minimum_inference_memory()
    assert mb.resolve_memory_budget("Adjoint Sampler", "auto", torch.device("cuda", 0)) == \
        pytest.approx(0.5 * (10 * 2 ** 30 - reserve) / MiB)
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: reserve // 2)
    assert mb.resolve_memory_budget("Adjoint Sampler", "auto", torch.device("cuda", 0)) == 0.0
