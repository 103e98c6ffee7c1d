"""The Adjoint Sampler through a real ComfyUI server, on the tiny models.

Prompts are API-format graphs: tiny SD1.5 UNet (patched to v-prediction with stock
ModelSamplingDiscrete and to a flow model with ModelSamplingSD3), tiny CLIP-L, 64×64
images (8×8 latents). The latent target is a stock KSampler sample of the same model,
so it is reachable by changing the noise.
"""
import time

import pytest
import torch
from safetensors.torch import load as load_safetensors

UNET = "tiny-sd15-unet.safetensors"
CLIP = "tiny-clip-l.safetensors"
STEPS = 4
FAMILIES = {
    "eps": None,
    "v_prediction": {"class_type": "ModelSamplingDiscrete", "inputs": {"sampling": "v_prediction", "zsnr": False}},
    "flow": {"class_type": "ModelSamplingSD3", "inputs": {"shift": 3.0}},
}


def graph(family="eps", sampler_inputs=None, batch=1, target_seed=7, extra=None, positive=None):
    g = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP, "type": "stable_diffusion", "device": "default"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "a red fox in the snow"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "blurry"}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": batch}},
    }
    model = ["unet", 0]
    if FAMILIES[family]:
        g["family"] = {**FAMILIES[family], "inputs": {**FAMILIES[family]["inputs"], "model": ["unet", 0]}}
        model = ["family", 0]
    g["target"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
        "seed": target_seed, "steps": STEPS, "cfg": 1.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
        "denoise": 1.0}}
    g["loss"] = {"class_type": "AdjointGuidance_LossLatentTarget",
                 "inputs": {"target": ["target", 0], "metric": "mse", "weight": 1.0}}
    inputs = {"model": model, "positive": positive or ["pos", 0], "negative": ["neg", 0],
              "latent_image": ["empty", 0], "loss": ["loss", 0], "seed": 1, "steps": STEPS, "cfg": 1.0,
              "scheduler": "karras", "solver": "dpmpp_2m", "gradient": "exact", "adjoint_steps": 0,
              "optimize": "noise", "iterations": 30, "learning_rate": 0.1, "renormalize_noise": False,
              "max_grad_norm": 0.0, "early_stop_patience": 0, "denoise": 1.0}
    inputs.update(sampler_inputs or {})
    g["adjoint"] = {"class_type": "AdjointGuidance_AdjointSampler", "inputs": inputs}
    g["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["adjoint", 0], "filename_prefix": "adjoint/out"}}
    g.update(extra or {})
    return g


def loss_report(entry):
    return entry["outputs"]["adjoint"]["adjoint_guidance_loss"][0]


def saved_latent(server, entry, node):
    info = entry["outputs"][node]["latents"][0]
    return load_safetensors(server.view(info))["latent_tensor"]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", ["exact", "adjointdeis-1", "adjointdeis-2m"])
def test_latent_target_loss_falls_90_percent(server, family, method):
    # The continuous adjoints approximate the gradient of the ODE, not of the sample; on
    # 4 Karras steps AdjointDEIS-2M points the wrong way for v-prediction (cosine -0.34
    # with the exact gradient), on 8 steps it is 0.997. Give them 8.
    steps = STEPS if method == "exact" else 8
    entry = server.run(graph(family, {"gradient": method, "steps": steps}), timeout=600)
    report = loss_report(entry)
    losses = report["losses"]
    assert len(losses) == 31 and report["stop_reason"] == "iterations"
    assert report["best_loss"] <= 0.1 * losses[0], (family, method, losses)


def test_shared_model_is_left_exactly_as_it_was(server):
    # a KSampler that the Adjoint Sampler's prompt does not contain, so the cache drops it
    stock = {k: v for k, v in graph().items() if k in ("unet", "clip", "pos", "neg", "empty", "target")}
    stock["target"]["inputs"]["seed"] = 11
    stock["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["target", 0], "filename_prefix": "shared/k"}}
    before = saved_latent(server, server.run(stock), "save")
    server.run(graph(sampler_inputs={"iterations": 3, "optimize": "noise + prompt"}))
    after_entry = server.run(stock)
    cached = [m[1].get("nodes", []) for m in after_entry["status"]["messages"] if m[0] == "execution_cached"]
    assert "unet" in sum(cached, []), "the MODEL was reloaded; the check proves nothing"
    assert "target" not in sum(cached, []), "KSampler was served from the cache; the check proves nothing"
    assert torch.equal(before, saved_latent(server, after_entry, "save"))


def test_same_seed_same_inputs_same_output(server):
    g = graph(sampler_inputs={"iterations": 4, "optimize": "noise + prompt", "solver": "sde_dpmpp_1"})
    first = saved_latent(server, server.run(g), "save")
    server.run({"x": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
                "s": {"class_type": "SaveLatent", "inputs": {"samples": ["x", 0], "filename_prefix": "evict"}}})
    entry = server.run(g)
    cached = [m[1].get("nodes", []) for m in entry["status"]["messages"] if m[0] == "execution_cached"]
    assert "adjoint" not in sum(cached, [])
    assert torch.equal(first, saved_latent(server, entry, "save"))


@pytest.mark.parametrize("batch_mode", ["one_by_one", "batched"])
def test_batch_equals_samples_run_one_by_one(server, batch_mode):
    """one_by_one: each sample bit for bit its batch-1 run; batched (one network call for the
    batch, every sample its own optimisation): the same up to float32 round-off."""
    inputs = {"iterations": 5, "batch_mode": batch_mode}
    batch = saved_latent(server, server.run(graph(batch=2, sampler_inputs=inputs), timeout=600), "save")
    assert batch.shape[0] == 2
    for b in range(2):
        g = graph(batch=2, sampler_inputs=inputs)
        g["one"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["empty", 0], "batch_index": b, "length": 1}}
        g["target_one"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["target", 0], "batch_index": b, "length": 1}}
        g["loss"]["inputs"]["target"] = ["target_one", 0]
        g["adjoint"]["inputs"]["latent_image"] = ["one", 0]
        single = saved_latent(server, server.run(g, timeout=600), "save")
        if batch_mode == "one_by_one":
            assert torch.equal(single[0], batch[b]), f"sample {b} differs from its one-by-one run"
        else:   # README: batched = one-by-one to 1e-4 of the sample's scale in float32
            error = float((single[0] - batch[b]).abs().max() / batch[b].abs().max())
            assert error < 1e-4, f"sample {b}: batched differs from its one-by-one run by {error:.2e}"


def test_interrupt_ends_the_sampler_within_one_step_and_server_keeps_serving(server):
    """POST /interrupt mid-way through an iteration of the Adjoint Sampler: it stops at the end
    of the network step it is in (every forward and backward step checks), long before the
    iteration would end, and the next prompt runs. An iteration is `steps` forwards and
    `steps` backward steps, so no step takes longer than iteration / steps. (ComfyUI 0.33
    throttles progress events: only the first and each iteration's last, with its preview,
    are sure to come; they time the iterations.)"""
    import asyncio

    import aiohttp

    steps = 40
    g = graph(sampler_inputs={"iterations": 1000, "seed": 99, "steps": steps})
    g["empty"]["inputs"].update(width=128, height=128)     # 16x16 latents: iterations of seconds

    async def watch():
        ends, timing = {}, None
        async with aiohttp.ClientSession() as session:
            async for prompt_id, event in server.events(session, g):
                if event is None:
                    continue
                data, now = event.get("data", {}), time.monotonic()
                if event["type"] == "progress" and data.get("node") == "adjoint" and timing is None:
                    for k in (1, 2):
                        if data["value"] >= k * steps:
                            ends.setdefault(k, now)          # iteration k ended
                    if 2 in ends:
                        iteration = ends[2] - ends[1]
                        await asyncio.sleep(iteration / 2)   # into the middle of iteration 3
                        interrupted_at = time.monotonic()
                        async with session.post(f"{server.url}/interrupt", json={}) as r:
                            assert r.status == 200
                        timing = iteration, interrupted_at
                elif event["type"] == "execution_interrupted" and data.get("prompt_id") == prompt_id:
                    return prompt_id, timing, now
        raise AssertionError("the prompt ended without execution_interrupted")

    prompt_id, (iteration, interrupted_at), ended_at = asyncio.run(asyncio.wait_for(watch(), 300))
    latency, step = ended_at - interrupted_at, iteration / steps
    print(f"interrupt: ended {latency * 1000:.0f} ms after POST /interrupt; an iteration {iteration * 1000:.0f} ms, "
          f"a step at most {step * 1000:.0f} ms")
    assert latency < step + 0.5, (latency, step)
    assert iteration / 2 > 2 * (step + 0.5), "an iteration is too short for this test to tell a step from it"
    entry = server.wait(prompt_id, timeout=60, check=False)
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    ok = server.run(graph(sampler_inputs={"iterations": 1, "seed": 5}))
    assert ok["status"]["status_str"] == "success"


@pytest.mark.parametrize("bad, expected", [
    ({"iterations": 0}, "iterations"),
    ({"learning_rate": 0.0}, "learning_rate"),
])
def test_out_of_range_settings_are_rejected_before_running(server, bad, expected):
    status, body = server.post("/prompt", {"prompt": graph(sampler_inputs=bad)})
    assert status == 400
    errors = body["node_errors"]["adjoint"]["errors"]
    assert any(expected in (e.get("details", "") + e.get("message", "")) for e in errors), errors


def test_gap_in_conditioning_is_a_clear_error(server):
    extra = {"half": {"class_type": "ConditioningSetTimestepRange",
                      "inputs": {"conditioning": ["pos", 0], "start": 0.0, "end": 0.5}}}
    entry = server.run(graph(sampler_inputs={"iterations": 1}, extra=extra, positive=["half", 0]), check=False)
    assert entry["status"]["status_str"] == "error"
    msg = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"][0]["exception_message"]
    assert msg.startswith("Adjoint Sampler: positive: no conditioning entry covers step"), msg
    assert server.run(graph(sampler_inputs={"iterations": 1, "seed": 3}))["status"]["status_str"] == "success"


def test_progress_over_iterations_times_steps_and_a_preview_each_iteration(server):
    import asyncio

    import aiohttp

    async def watch():
        events, previews = [], 0
        async with aiohttp.ClientSession() as session:
            async for _, event in server.events(session, graph(sampler_inputs={"iterations": 3, "seed": 21})):
                if event is None:
                    previews += 1
                else:
                    events.append(event)
        return events, previews

    events, previews = asyncio.run(asyncio.wait_for(watch(), 300))
    ours = [e["data"] for e in events if e["type"] == "progress" and e["data"].get("node") == "adjoint"]
    assert ours and all(p["max"] == 3 * STEPS for p in ours)
    assert ours[-1]["value"] == 3 * STEPS
    assert [p["value"] for p in ours] == sorted(p["value"] for p in ours)
    assert previews >= 3
    executed = [e["data"] for e in events if e["type"] == "executed" and e["data"]["node"] == "adjoint"]
    assert executed and len(executed[0]["output"]["adjoint_guidance_loss"][0]["losses"]) == 4


def test_optimized_noise_replays_in_sampler_custom_advanced(server):
    """Noise From Latent + our SAMPLER in SamplerCustomAdvanced reproduce the Adjoint Sampler's
    result; our solver as a plain SAMPLER agrees with ComfyUI's own dpmpp_2m."""
    g = graph(sampler_inputs={"iterations": 2, "optimize": "noise"})
    g.update({
        "noise": {"class_type": "AdjointGuidance_NoiseFromLatent", "inputs": {"noise": ["adjoint", 1], "seed": 0}},
        "guider": {"class_type": "CFGGuider", "inputs": {"model": ["unet", 0], "positive": ["pos", 0],
                                                         "negative": ["neg", 0], "cfg": 1.0}},
        "ours": {"class_type": "AdjointGuidance_SolverSampler", "inputs": {"solver": "dpmpp_2m"}},
        "stock": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["unet", 0], "scheduler": "karras",
                                                              "steps": STEPS, "denoise": 1.0}},
        "replay": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["ours", 0], "sigmas": ["sigmas", 0],
            "latent_image": ["empty", 0]}},
        "replay_stock": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["stock", 0], "sigmas": ["sigmas", 0],
            "latent_image": ["empty", 0]}},
        "save_replay": {"class_type": "SaveLatent", "inputs": {"samples": ["replay", 0], "filename_prefix": "replay/ours"}},
        "save_stock": {"class_type": "SaveLatent", "inputs": {"samples": ["replay_stock", 0], "filename_prefix": "replay/stock"}},
    })
    entry = server.run(g)
    optimized = saved_latent(server, entry, "save")
    ours = saved_latent(server, entry, "save_replay")
    stock = saved_latent(server, entry, "save_stock")
    assert torch.equal(ours, optimized)
    assert torch.allclose(ours, stock, rtol=1e-4, atol=1e-4 * float(stock.abs().max())), \
        float((ours - stock).abs().max())
