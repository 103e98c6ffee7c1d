"""Multi-GPU CFG splitting (ComfyUI 0.33's MultiGPU CFG Split node), in-process on CPU.

The node attaches deep clones of the model for other devices ("multigpu" additional
models); while sampling, ComfyUI then evaluates the conditionings on worker threads under
torch.no_grad() (comfy.samplers._calc_cond_batch_multigpu), which would cut the Adjoint
Sampler's gradients. On a CPU-only machine the split is built by hand the way the node
builds it (a clone flagged is_multigpu_base_clone under the "multigpu" key): ComfyUI then
really runs the split path, on worker threads (checked first, or the test proves nothing).
The Adjoint Sampler must run unsplit and give exactly the unsplit result; the Adjoint
Solver (no gradients) may run split and gives the same result; the optimising sampler
refuses a guider that still asks for the split.
"""
import threading

import pytest
import torch

from comfy_harness import pack_submodule, tiny_unet32_patcher

STEPS = 3
ADJOINT = dict(seed=2, steps=STEPS, cfg=2.0, scheduler="karras", solver="dpmpp_2m", gradient="exact",
               adjoint_steps=0, optimize="noise + prompt", iterations=2, learning_rate=0.1,
               renormalize_noise=True, max_grad_norm=0.0, early_stop_patience=0, denoise=1.0)


@pytest.fixture(scope="module")
def setup(comfy_nodes):
    import comfy.samplers
    if not hasattr(comfy.samplers, "_calc_cond_batch_multigpu"):
        pytest.skip("this ComfyUI has no multi-GPU CFG split (comfy.samplers._calc_cond_batch_multigpu "
                    "appeared in ComfyUI 0.33)")
    with torch.inference_mode():
        model = tiny_unet32_patcher()
        g = torch.Generator().manual_seed(0)
        pos = [[torch.randn(1, 77, 768, generator=g), {}]]
        neg = [[torch.randn(1, 77, 768, generator=g), {}]]
        target = torch.randn(1, 4, 8, 8, generator=g)
    return {"model": model, "pos": pos, "neg": neg, "target": target}


def recording(model, calls):
    """A clone whose every model call records (thread is main, grad enabled)."""
    m = model.clone()

    def wrapper(apply_model, args):
        calls.append((threading.current_thread() is threading.main_thread(), torch.is_grad_enabled()))
        return apply_model(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(wrapper)
    return m


def split(model):
    """The model as MultiGPU CFG Split leaves it, with a second 'device' cpu:1 (this CPU again)."""
    with torch.inference_mode():
        m = model.clone()
        extra = model.clone()
        extra.is_multigpu_base_clone = True
        extra.load_device = torch.device("cpu", 1)
        m.set_additional_models("multigpu", [extra])
    return m


def stock_sample(setup, model, sampler_name="euler"):
    import comfy.sample
    import comfy.samplers
    with torch.inference_mode():
        noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", STEPS).cpu()
        sampler = comfy.samplers.sampler_object(sampler_name) if isinstance(sampler_name, str) else sampler_name
        return comfy.sample.sample_custom(model, noise, 2.0, sampler, sigmas,
                                          setup["pos"], setup["neg"], torch.zeros_like(noise), seed=3)


def adjoint(setup, model):
    losses = pack_submodule("adjoint.losses")
    node = pack_submodule("nodes.adjoint_sampler").AdjointSampler
    with torch.inference_mode():
        return node.execute(model=model, positive=setup["pos"], negative=setup["neg"],
                            latent_image={"samples": torch.zeros(1, 4, 8, 8)},
                            loss=losses.LatentTarget(setup["target"]), **ADJOINT)


def test_the_hand_made_split_really_runs_comfyuis_split_path(setup):
    calls = []
    stock_sample(setup, split(recording(setup["model"], calls)))
    assert calls and not any(main for main, _ in calls), "the model ran on the main thread: no split"
    assert not any(grad for _, grad in calls)


def test_adjoint_sampler_runs_unsplit_and_gives_the_unsplit_result(setup):
    calls = []
    shared = split(recording(setup["model"], calls))
    out = adjoint(setup, shared)
    plain = adjoint(setup, setup["model"])
    assert len(shared.get_additional_models_with_key("multigpu")) == 1   # the input MODEL is left as it was
    assert calls and all(main for main, _ in calls), "the Adjoint Sampler's model ran on a worker thread"
    assert any(grad for _, grad in calls)       # the backward passes ran with grad
    report, plain_report = out.ui["adjoint_guidance_loss"][0], plain.ui["adjoint_guidance_loss"][0]
    assert report["losses"] == plain_report["losses"]
    assert report["grad_norms"][0] > 0
    assert torch.equal(out.args[0]["samples"], plain.args[0]["samples"])
    assert torch.equal(out.args[1]["samples"], plain.args[1]["samples"])


def test_solver_sampler_may_run_split(setup):
    """No gradients there: the split is ComfyUI's business, the result the same."""
    sampling = pack_submodule("nodes.adjoint_sampling")
    calls = []
    solver = sampling.ScheduledSolverSampler(sampling.SolverSettings(solver="dpmpp_2m"))
    a = stock_sample(setup, split(recording(setup["model"], calls)), solver)
    b = stock_sample(setup, setup["model"], solver)
    assert calls and not any(main for main, _ in calls)
    # split, cond and uncond run as two batches of 1 instead of one of 2: float32 round-off
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))


def test_optimising_sampler_refuses_a_guider_set_up_for_the_split(setup):
    """Defence in depth: a guider whose model still carries the split copies is refused."""
    import comfy.samplers
    sampling = pack_submodule("nodes.adjoint_sampling")
    losses = pack_submodule("adjoint.losses")
    sampler = sampling.AdjointOptimizingSampler(losses.LatentTarget(setup["target"]),
                                                sampling.OptimizeSettings(iterations=1))
    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(split(setup["model"]))
        guider.set_conds(setup["pos"], setup["neg"])
        guider.set_cfg(2.0)
        noise = torch.randn(1, 4, 8, 8)
        sigmas = comfy.samplers.calculate_sigmas(setup["model"].get_model_object("model_sampling"), "karras",
                                                 STEPS).cpu()
        with pytest.raises(ValueError, match=r"^Adjoint Sampler: model: the model is set up for the multi-GPU "
                                             r"CFG split \(MultiGPU CFG Split node\), which evaluates it "
                                             r"without gradients; connect the model without that node"):
            guider.sample(noise, torch.zeros_like(noise), sampler, sigmas, seed=1)
