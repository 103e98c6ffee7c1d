"""Keyframe schedules evaluated inside the graph: blends, switches, routing of gradients."""

import pytest
import torch

import adjoint
from adjoint import Position, ScheduledConditioning, Timeline, lerp, slerp
from oracles import DictCondGMM, make_gmm, rel_err

F64 = torch.float64


def test_lerp_and_slerp_endpoints_and_midpoint():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 5, 8, generator=g, dtype=F64)
    b = torch.randn(2, 5, 8, generator=g, dtype=F64)
    assert torch.allclose(lerp(a, b, 0.25), 0.75 * a + 0.25 * b)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-14)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-14)
    # unit vectors: the midpoint stays on the sphere, halfway in angle
    ua, ub = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    m = slerp(ua, ub, 0.5)
    assert torch.allclose(m.norm(dim=-1), torch.ones(2, 5, dtype=F64), atol=1e-12)
    ang = lambda x, y: torch.arccos((x * y).sum(-1).clamp(-1, 1))
    assert torch.allclose(ang(ua, m), 0.5 * ang(ua, ub), atol=1e-10)
    # explicit formula per token vector
    theta = ang(ua, ub)[..., None]
    ref = torch.sin(0.7 * theta) / torch.sin(theta) * a + torch.sin(0.3 * theta) / torch.sin(theta) * b
    assert torch.allclose(slerp(a, b, 0.3), ref, atol=1e-12)


def test_slerp_gradcheck_generic_vectors():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: slerp(x, y, 0.35), (a, b))


@pytest.mark.parametrize("case", ["parallel", "antiparallel", "zero", "identical"])
def test_slerp_falls_back_to_lerp_without_nan_gradients(case):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4, 6, generator=g, dtype=F64)
    b = {"parallel": 2.0 * a, "antiparallel": -a, "zero": torch.zeros_like(a), "identical": a.clone()}[case]
    if case == "zero":
        a, b = b, a
    a.requires_grad_(True)
    b.requires_grad_(True)
    out = slerp(a, b, 0.4)
    assert torch.allclose(out, lerp(a, b, 0.4))
    ga, gb = torch.autograd.grad(out.square().sum(), (a, b))
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    la, lb = torch.autograd.grad(lerp(a, b, 0.4).square().sum(), (a, b))
    assert torch.allclose(ga, la) and torch.allclose(gb, lb)


def test_blends_per_step_hold_linear_slerp():
    g = torch.Generator().manual_seed(3)
    kfs = [torch.randn(1, 3, 4, generator=g, dtype=F64) for _ in range(3)]
    starts = (Position(0.0), Position(0.4), Position(0.8))
    n = 10
    hold = ScheduledConditioning(kfs, Timeline(starts, "hold"))
    assert hold.at(3, n) is kfs[0] and hold.at(4, n) is kfs[1] and hold.at(9, n) is kfs[2]
    assert hold.switch_steps(n) == frozenset({4, 8})
    lin = ScheduledConditioning(kfs, Timeline(starts, "linear"))
    assert torch.allclose(lin.at(1, n), 0.75 * kfs[0] + 0.25 * kfs[1])
    assert lin.at(4, n) is kfs[1] and lin.at(9, n) is kfs[2]
    assert lin.switch_steps(n) == frozenset()
    sl = ScheduledConditioning(kfs, Timeline(starts, "slerp"))
    assert torch.allclose(sl.at(6, n), slerp(kfs[1], kfs[2], 0.5))


def test_linear_timeline_with_duplicate_start_is_a_switch():
    kfs = [torch.full((1, 2), float(k), dtype=F64) for k in range(3)]
    sc = ScheduledConditioning(kfs, Timeline((Position(0.0), Position(0.5), Position(0.5)), "linear"))
    # keyframe 1 is skipped at step 5: the conditioning jumps from a 0→1 blend to keyframe 2
    assert sc.switch_steps(10) == frozenset({5})


def test_dict_keyframes_blend_per_entry_and_pass_through_non_tensors():
    g = torch.Generator().manual_seed(4)
    kf = lambda: {"cross_attn": torch.randn(1, 3, 4, generator=g, dtype=F64),
                  "pooled_output": torch.randn(1, 5, generator=g, dtype=F64),
                  "token_ids": torch.arange(3), "label": "x"}
    kfs = [kf(), kf()]
    sc = ScheduledConditioning(kfs, Timeline((Position(0.0), Position(1.0)), "linear"))
    c = sc.at(5, 10)
    assert torch.allclose(c["cross_attn"], 0.5 * kfs[0]["cross_attn"] + 0.5 * kfs[1]["cross_attn"])
    assert torch.allclose(c["pooled_output"], 0.5 * kfs[0]["pooled_output"] + 0.5 * kfs[1]["pooled_output"])
    assert c["token_ids"] is kfs[0]["token_ids"] and c["label"] == "x"
    leaves = sc.leaves()
    assert len(leaves) == 4    # two float tensors per keyframe
    back = sc.unflatten(leaves)
    assert set(back[0]) == {"cross_attn", "pooled_output"}
    new = sc.with_leaves([2 * t for t in leaves])
    assert torch.allclose(new.keyframes[1]["pooled_output"], 2 * kfs[1]["pooled_output"])
    assert new.keyframes[1]["label"] == "x"


def test_keyframe_validation_messages():
    a = torch.zeros(1, 3, 4, dtype=F64)
    with pytest.raises(ValueError, match="keyframes: 1 keyframes but the timeline has 2"):
        ScheduledConditioning([a], Timeline((Position(0.0), Position(0.5))))
    with pytest.raises(ValueError, match="equal shapes"):
        ScheduledConditioning([a, torch.zeros(1, 6, 4, dtype=F64)],
                              Timeline((Position(0.0), Position(0.5)), "linear"))
    # a hard switch does not need equal token lengths
    ScheduledConditioning([a, torch.zeros(1, 6, 4, dtype=F64)], Timeline((Position(0.0), Position(0.5))))
    with pytest.raises(ValueError, match="same structure"):
        ScheduledConditioning([{"cross_attn": a}, {"cross_attn": a, "pooled_output": a[:, 0]}],
                              Timeline((Position(0.0), Position(0.5)), "slerp"))
    with pytest.raises(TypeError, match="Tensor or a dict"):
        ScheduledConditioning([[1, 2]])
    with pytest.raises(ValueError, match=r"keyframe 0 'pooled_output' has batch 3 .* must be 1 or 2"):
        ScheduledConditioning([{"pooled_output": torch.zeros(3, 4)}]).check_batch(2)


@pytest.mark.parametrize("interpolation", ["hold", "linear", "slerp"])
def test_equal_keyframes_gradients_sum_to_constant_gradient(interpolation):
    """If every keyframe equals c, the schedule is constant c: Σ_k ∂L/∂c_k = ∂L/∂c.

    DPM-Solver++(1), because 2M would (rightly) restart its history at the hold switches.
    """
    g = torch.Generator().manual_seed(5)
    d, n = 4, 9
    gmm = make_gmm(d=d, seed=5)
    den = DictCondGMM(gmm, torch.randn(3, d, generator=g, dtype=F64), torch.randn(2, d, generator=g, dtype=F64))
    c = {"cross_attn": torch.randn(1, 5, 3, generator=g, dtype=F64), "pooled_output": torch.randn(1, 2, generator=g, dtype=F64)}
    x = 10 * torch.randn(2, d, generator=g, dtype=F64)
    sig = adjoint.karras_sigmas(n, 0.05, 10.0)
    loss = lambda x0: (x0 ** 2).sum(1)
    const = adjoint.gradient(den, x, sig, c, loss, solver="dpmpp_1")
    tl = Timeline((Position(0.0), Position(0.3), Position(0.6)), interpolation)
    sched = adjoint.gradient(den, x, sig, ScheduledConditioning([c, c, c], tl), loss, solver="dpmpp_1")
    for key in c:
        total = sum(gk[key] for gk in sched.grad_keyframes)
        assert rel_err(total, const.grad_cond[key]) < 1e-12
    assert rel_err(sched.grad_x_init, const.grad_x_init) < 1e-12


def test_keyframe_gets_exactly_the_steps_where_it_is_active():
    """A keyframe that never becomes active has zero gradient; the others are nonzero."""
    g = torch.Generator().manual_seed(6)
    d, n = 4, 8
    gmm = make_gmm(d=d, seed=6)
    kfs = [torch.randn(1, d, generator=g, dtype=F64) for _ in range(3)]
    tl = Timeline((Position(0.0), Position(4, "step"), Position(20, "step")))   # the third: never
    x = 10 * torch.randn(2, d, generator=g, dtype=F64)
    res = adjoint.gradient(gmm, x, adjoint.karras_sigmas(n, 0.05, 10.0), ScheduledConditioning(kfs, tl),
                           lambda x0: (x0 ** 2).sum(1))
    assert res.grad_keyframes[2].abs().max() == 0
    assert res.grad_keyframes[0].abs().max() > 0 and res.grad_keyframes[1].abs().max() > 0
