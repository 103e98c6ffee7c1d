"""The parts of a Combine loss, recorded at every evaluation for the live loss curve, and the
live-curve bookkeeping (nodes/live_events.py) that turns iteration callbacks into events.

The Combine node's GUIDANCE_LOSS records its parts (already weighted, per sample, detached)
each time the sampler evaluates it: no evaluation of its own, so no extra network call.
"""
import math
from dataclasses import dataclass
from typing import Optional

import pytest
import torch

from comfy_harness import pack_submodule, tiny_unet32_patcher


@pytest.fixture(scope="module")
def gl(comfy_nodes):
    return pack_submodule("nodes.guidance_loss")


@pytest.fixture(scope="module")
def core(comfy_nodes):
    return pack_submodule("adjoint.losses")


@pytest.fixture(scope="module")
def live(comfy_nodes):
    return pack_submodule("nodes.live_events")


def targets(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.randn(batch, 4, 8, 8, generator=g)


def combine(gl, core, t1, t2, w1=2.0, w2=0.5):
    (loss,) = gl.CombineLoss.execute(core.LatentTarget(t1), w1, w2, loss_2=core.LatentTarget(t2, metric="l1")).args
    return loss


def test_combine_records_each_part_of_each_sample_at_every_evaluation(gl, core):
    t1, t2 = targets()
    loss = combine(gl, core, t1, t2)
    x0 = torch.randn(2, 4, 8, 8)
    total = loss(x0)
    record = loss.parts_record
    expected = {"1.latent_target": 2.0 * (x0 - t1).square().mean(dim=(1, 2, 3)),
                "2.latent_target": 0.5 * (x0 - t2).abs().mean(dim=(1, 2, 3))}
    for b in range(2):
        count, parts = record.latest(b)
        assert count == 1 and parts.keys() == expected.keys()
        for name, values in expected.items():
            assert parts[name] == pytest.approx(float(values[b]), rel=1e-6)
        assert sum(parts.values()) == pytest.approx(float(total[b]), rel=1e-6)
    loss(x0 + 1.0)                       # a new evaluation replaces the values and counts
    count, parts = record.latest(0)
    assert count == 2 and parts["1.latent_target"] == pytest.approx(
        float(2.0 * (x0[0] + 1.0 - t1[0]).square().mean()), rel=1e-6)


def test_a_selected_sample_records_into_the_shared_record_under_its_own_index(gl, core):
    t1, t2 = targets()
    loss = combine(gl, core, t1, t2)
    one = loss.select(1, 2)
    assert one.parts_record is loss.parts_record
    x1 = torch.randn(1, 4, 8, 8)
    one(x1)
    assert loss.parts_record.latest(0) == (0, {})          # sample 0 untouched
    count, parts = loss.parts_record.latest(1)
    assert count == 1
    assert parts["1.latent_target"] == pytest.approx(float(2.0 * (x1[0] - t1[1]).square().mean()), rel=1e-6)


def test_recorded_values_are_detached_and_the_gradient_is_the_plain_sums(gl, core):
    t1, t2 = targets(batch=1)
    recorded = combine(gl, core, t1, t2)
    plain = core.WeightedSum([(2.0, core.LatentTarget(t1)), (0.5, core.LatentTarget(t2, metric="l1"))])
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    recorded(x).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    plain(x).sum().backward()
    assert torch.equal(grad, x.grad)
    assert all(not v.requires_grad for row in recorded.parts_record.rows.values() for v in row.values())


def test_recording_makes_no_extra_decoder_call(gl, core):
    calls = []

    def decode(x0):
        calls.append(x0.shape[0])
        return torch.sigmoid(x0[:, :3])

    colour = core.ColourTarget(decode, {"mean_colour": (1.0, (0.2, 0.3, 0.8)), "brightness": (0.5, 0.4)})
    (loss,) = gl.CombineLoss.execute(colour, 1.0, loss_2=colour).args
    loss(torch.randn(2, 4, 8, 8))
    # one decode per term, as the plain weighted sum does; the record reads what was computed
    assert calls == [2, 2]
    count, parts = loss.parts_record.latest(1)
    assert count == 1 and sorted(parts) == ["1.colour.brightness", "1.colour.mean_colour",
                                            "2.colour.brightness", "2.colour.mean_colour"]


def test_losses_other_than_combine_have_no_record(core):
    assert getattr(core.LatentTarget(torch.zeros(1, 4, 8, 8)), "parts_record", None) is None


# --------------------------------------------------------------------------- live events

@dataclass
class Info:                     # IterationInfo's fields the live curve reads (no per-sample extras)
    iteration: int
    num_iterations: int
    loss: float
    per_sample_loss: Optional[torch.Tensor]
    grad_norm: float
    best_loss: float
    best_iteration: int


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def tracker(live, batch, iterations, loss=None, current=lambda: 0):
    sent, clock = [], Clock()
    t = live.LiveLoss({"node": "7", "display_node": "7", "prompt_id": "p"}, batch, iterations, loss,
                      current_sample=current, send=sent.append, clock=clock)
    return t, sent, clock


@dataclass
class Result:                    # what the node passes to finish: OptimizeResult-like
    losses: list
    best_iteration: int
    loss: float


def test_one_sample_events_carry_the_losses_timing_and_a_final_event(live):
    t, sent, clock = tracker(live, batch=1, iterations=3)
    losses = [4.0, 2.0, 1.0, 0.5]
    for k in range(3):
        clock.now += 2.0 if k == 0 else 1.5      # the first iteration includes the model load
        t.on_iteration(Info(k, 3, losses[k], torch.tensor([losses[k]]), 10.0 - k, min(losses[:k + 1]), k))
    t.finish(Result(losses, 3, 0.5), "iterations", "ran all iterations")
    assert [e["iteration"] for e in sent] == [0, 1, 2, 3]
    assert [e["loss"] for e in sent] == losses
    assert [e["per_sample_loss"] for e in sent] == [[v] for v in losses]
    assert [e["final"] for e in sent] == [False, False, False, True]
    assert sent[-1]["stop_reason"] == "iterations" and sent[-1]["status"] == "ran all iterations"
    assert sent[-1]["best_iteration"] == 3 and sent[-1]["best_loss"] == 0.5
    assert sent[2]["seconds_per_iteration"] == pytest.approx(1.5) and sent[2]["eta_seconds"] == pytest.approx(0.0)
    assert sent[1]["eta_seconds"] == pytest.approx(1.5)            # one gradient iteration left
    assert all(e["node"] == "7" and e["prompt_id"] == "p" and e["parts"] == {} for e in sent)
    assert t.ui_extra(4) == {"num_samples": 1, "per_sample_losses": [losses], "parts": {}}


def test_samples_one_at_a_time_sum_into_the_total_as_the_final_report_does(live):
    current = {"b": 0}
    t, sent, _ = tracker(live, batch=2, iterations=2, current=lambda: current["b"])
    s0, s1 = [3.0, 2.0, 1.0], [5.0, 4.0]           # sample 1 stopped early (no final iterate)
    for k in range(2):
        t.on_iteration(Info(k, 2, s0[k], torch.tensor([s0[k]]), 1.0, s0[k], k))
    current["b"] = 1
    for k in range(2):
        t.on_iteration(Info(k, 2, s1[k], torch.tensor([s1[k]]), 1.0, s1[k], k))
    per_sample = [Result(s0, 2, 1.0), Result(s1, 1, 4.0)]
    totals = [s0[0] + s1[0], s0[1] + s1[1], s0[2] + s1[1]]       # a stopped sample keeps its last value

    class Batch:
        samples = per_sample
        losses = totals
        best_iteration = -1
        loss = 5.0

    t.finish(Batch(), "iterations")
    assert [(e["sample"], e["iteration"]) for e in sent] == [(0, 0), (0, 1), (1, 0), (1, 1), (None, 2)]
    assert [e["loss"] for e in sent[2:]] == totals       # once sample 1 runs, the totals are the report's
    assert sent[0]["per_sample_loss"] == [3.0, None]      # sample 1 not started
    assert sent[0]["eta_seconds"] is not None
    assert t.ui_extra(3)["per_sample_losses"] == [s0, s1 + [None]]


def test_all_samples_together_and_combine_parts_from_the_record(live, gl, core):
    t1, t2 = targets()
    loss = combine(gl, core, t1, t2)
    t, sent, _ = tracker(live, batch=2, iterations=1, loss=loss)
    x0 = torch.randn(2, 4, 8, 8)
    per = loss(x0)
    t.on_iteration(Info(0, 1, float(per.sum()), per, 3.0, float(per.sum()), 0))
    final = loss(x0 * 0.5)                     # the final, forward-only iterate
    t.finish(Result([float(per.sum()), float(final.sum())], 1, float(final.sum())), "iterations")
    assert [e["sample"] for e in sent] == [None, None]
    assert sent[0]["per_sample_loss"] == pytest.approx(per.tolist(), rel=1e-6)
    for event, values in zip(sent, (per, final)):
        parts = event["parts"]
        assert sorted(parts) == ["1.latent_target", "2.latent_target"]
        assert sum(parts.values()) == pytest.approx(float(values.sum()), rel=1e-5)
    extra = t.ui_extra(2)
    assert extra["parts"]["1.latent_target"][1] == pytest.approx(sent[1]["parts"]["1.latent_target"])


@dataclass
class BatchInfo(Info):          # the per-sample fields of a batch optimised in one pass
    active: Optional[torch.Tensor] = None
    per_sample_best_iteration: Optional[list] = None


def test_a_sample_stopped_in_a_batch_pass_keeps_its_last_value(live):
    t, sent, _ = tracker(live, batch=2, iterations=3)
    frames = [([4.0, 6.0], [True, True]), ([3.0, 6.5], [True, False]), ([2.0, 6.5], [True, False])]
    for k, (values, active) in enumerate(frames):
        t.on_iteration(BatchInfo(k, 3, sum(v for v, a in zip(values, active) if a), torch.tensor(values), 1.0,
                                 2.0, -1, active=torch.tensor(active), per_sample_best_iteration=[k, 0]))
    assert [e["sample"] for e in sent] == [None, None, None]
    assert [e["per_sample_loss"] for e in sent] == [[4.0, 6.0], [3.0, 6.0], [2.0, 6.0]]
    assert [e["loss"] for e in sent] == [10.0, 9.0, 8.0]
    assert sent[-1]["per_sample_best_iteration"] == [2, 0]
    assert t.ui_extra(3)["per_sample_losses"] == [[4.0, 3.0, 2.0], [6.0, None, None]]


def test_non_finite_values_are_sent_as_null(live):
    t, sent, _ = tracker(live, batch=1, iterations=2)
    t.on_iteration(Info(0, 2, 1.0, torch.tensor([1.0]), math.inf, 1.0, 0))
    t.finish(Result([1.0, math.nan], 0, 1.0), "non_finite_loss", "stopped: the loss became NaN/inf")
    assert sent[0]["grad_norm"] is None
    assert sent[1]["loss"] is None and sent[1]["final"] and sent[1]["stop_reason"] == "non_finite_loss"


def test_the_sampler_node_reports_per_sample_losses_and_parts(gl, core, live, monkeypatch):
    node = pack_submodule("nodes.adjoint_sampler").AdjointSampler
    sent = []
    monkeypatch.setattr(live, "send_event", sent.append)
    t1, t2 = targets(seed=3)
    loss = combine(gl, core, t1, t2)
    with torch.inference_mode():
        model = tiny_unet32_patcher()
        cond = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1)), {}]]
        out = node.execute(model=model, positive=cond, negative=cond, latent_image={"samples": torch.zeros(2, 4, 8, 8)},
                           loss=loss, seed=1, steps=3, cfg=1.0, scheduler="karras", solver="dpmpp_2m",
                           gradient="exact", adjoint_steps=0, optimize="noise", iterations=2, learning_rate=0.1,
                           renormalize_noise=True, max_grad_norm=0.0, early_stop_patience=0, denoise=1.0)
    report = out.ui["adjoint_guidance_loss"][0]
    losses = report["losses"]
    assert report["num_samples"] == 2 and len(losses) == 3
    per_sample = report["per_sample_losses"]
    parts = report["parts"]
    assert sorted(parts) == ["1.latent_target", "2.latent_target"]
    for k in range(3):
        assert per_sample[0][k] + per_sample[1][k] == pytest.approx(losses[k], rel=1e-6)
        assert parts["1.latent_target"][k] + parts["2.latent_target"][k] == pytest.approx(losses[k], rel=1e-5)
    assert len(report["best_iterations"]) == 2 and all(0 <= r <= 2 for r in report["best_iterations"])
    assert [e["loss"] for e in sent if e["sample"] in (1, None)] == pytest.approx(losses, rel=1e-6)
    assert sent[-1]["final"] and sent[-1]["node"] is None     # called directly: no unique id
