"""gradient(memory_budget=...): graphs kept from the forward pass, within a budget.

The budget changes what is recomputed, never the gradient: at every budget the result
equals the budget-0 gradient to round-off (and autograd through the whole sampler, and
float64 central differences), for every solver and gradient method. The counts say what
ran; the kept graphs stay within the budget; the peak of live saved tensors stays within
budget + the budget-0 peak; the saved-tensor hooks of callers keep working.
"""
import contextlib
import gc
import math

import pytest
import torch

import adjoint
from adjoint import Position, ScheduledConditioning, Timeline, memory
from oracles import make_gmm, rel_err
from test_gradients import autograd_reference, build_case, grid_for

F64 = torch.float64
MiB = 2 ** 20
SOLVERS = ["dpmpp_1", "dpmpp_2m", "sde_dpmpp_1"]
ROUND_OFF = 1e-13


def run(case, sig, alpha, solver, budget, **kw):
    den, theta, kfs, tl, x, noises, loss_fn = case
    return adjoint.gradient(den, x, sig, ScheduledConditioning(kfs, tl), loss_fn, alpha=alpha, solver=solver,
                            params=(theta,), sde_noises=noises, memory_budget=budget, **kw)


def budget_for_steps(step_mb, k):
    """Megabytes that hold exactly the graphs of the first k steps (sizes as measured)."""
    return sum(step_mb[:k])


def assert_same_gradient(res, ref, tol=ROUND_OFF):
    assert rel_err(res.x0, ref.x0) <= tol
    assert rel_err(res.grad_x_init, ref.grad_x_init) <= tol
    assert rel_err(res.grad_params[0], ref.grad_params[0]) <= tol
    assert len(res.grad_keyframes) == len(ref.grad_keyframes)
    for got, want in zip(res.grad_keyframes, ref.grad_keyframes):
        if isinstance(want, dict):
            for key in want:
                assert rel_err(got[key], want[key]) <= tol
        else:
            assert rel_err(got, want) <= tol


# ---------------------------------------------------------------------------------------
# the gradient does not depend on the budget
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [None, "flow"])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("kind", ["hold", "linear", "slerp_dict"])
def test_exact_gradient_is_the_same_at_every_budget(alpha, solver, kind):
    sig = grid_for(alpha)            # N = 12 steps
    n = len(sig) - 1
    case = build_case(alpha, kind, solver, sig)
    ref = run(case, sig, alpha, solver, 0)
    assert (ref.counts.forwards, ref.counts.forwards_with_grad, ref.counts.vjps) == (n, n, n)
    assert ref.kept_graphs.steps == () and ref.kept_graphs.budget_mb == 0.0
    # the autograd reference through the whole sampler (as test_gradients does)
    den, theta, kfs, tl, x, noises, loss_fn = case
    _, gx, gk, gth = autograd_reference(den, theta, kfs, tl, x, sig, loss_fn, alpha, solver, noises)
    assert rel_err(ref.grad_x_init, gx) < 1e-10 and rel_err(ref.grad_params[0], gth) < 1e-10

    full = run(case, sig, alpha, solver, 1000.0)
    step_mb = full.kept_graphs.step_mb
    assert len(step_mb) == n and all(mb > 0 for mb in step_mb)
    budgets = {"one step": (budget_for_steps(step_mb, 1), 1),
               "a quarter": (budget_for_steps(step_mb, n // 4), n // 4),
               "half": (budget_for_steps(step_mb, n // 2), n // 2),
               "all N": (budget_for_steps(step_mb, n), n),
               "more than N": (10 * budget_for_steps(step_mb, n), n)}
    for name, (budget, k) in budgets.items():
        res = run(case, sig, alpha, solver, budget)
        assert_same_gradient(res, ref)
        kept = res.kept_graphs
        assert kept.steps == tuple(range(len(kept.steps))), name          # a prefix of the steps
        assert kept.kept_mb <= budget * (1 + 1e-12), name
        if len(set(step_mb)) == 1:                                      # equal graphs: exactly k fit
            assert len(kept.steps) == k, name
        else:         # stopped where the next graph (or the last one, its prediction) did not fit
            j = len(kept.steps)
            assert j == n or kept.kept_mb + max(step_mb[j], step_mb[j - 1]) > budget, name
        assert kept.budget_mb == pytest.approx(budget, rel=1e-12)
        # counts: kept steps ran once, with grad; the others plain, then recomputed
        dropped = len(kept.step_mb) - len(kept.steps)
        assert res.counts.forwards == n - len(kept.steps) - dropped, name
        assert res.counts.forwards_with_grad == n + dropped, name
        assert res.counts.vjps == n, name
        assert res.trajectory.counts.forwards_with_grad == len(kept.step_mb), name


@pytest.mark.parametrize("solver", SOLVERS)
def test_budgeted_gradient_matches_central_differences(solver):
    """A directional derivative of the loss of the sample, float64, h = 1e-5: x_T, one
    keyframe and θ, at half of the steps' graphs kept."""
    sig = grid_for(None, 10)
    den, theta, kfs, tl, x, noises, loss_fn = build_case(None, "hold", solver, sig, seed=3)
    full = run((den, theta, kfs, tl, x, noises, loss_fn), sig, None, solver, 1000.0)
    res = run((den, theta, kfs, tl, x, noises, loss_fn), sig, None, solver, sum(full.kept_graphs.step_mb[:5]))
    assert res.kept_graphs.steps == (0, 1, 2, 3, 4)
    g = torch.Generator().manual_seed(9)

    def loss_at(x_, kfs_, theta_):
        den.offsets = theta_
        traj = adjoint.sample(den, x_, sig, ScheduledConditioning(kfs_, tl), solver=solver, sde_noises=noises)
        return float(loss_fn(traj.x0).sum())

    h = 1e-5
    v_x = torch.randn(x.shape, generator=g, dtype=F64)
    v_k = torch.randn(kfs[1].shape, generator=g, dtype=F64)
    v_t = torch.randn(theta.shape, generator=g, dtype=F64)
    base = theta.detach()
    fd_x = (loss_at(x + h * v_x, kfs, base) - loss_at(x - h * v_x, kfs, base)) / (2 * h)
    kp = [kfs[0], kfs[1] + h * v_k, kfs[2]]
    km = [kfs[0], kfs[1] - h * v_k, kfs[2]]
    fd_k = (loss_at(x, kp, base) - loss_at(x, km, base)) / (2 * h)
    fd_t = (loss_at(x, kfs, base + h * v_t) - loss_at(x, kfs, base - h * v_t)) / (2 * h)
    den.offsets = theta
    for fd, grad, v in ((fd_x, res.grad_x_init, v_x), (fd_k, res.grad_keyframes[1], v_k),
                        (fd_t, res.grad_params[0], v_t)):
        analytic = float((grad * v).sum())
        assert abs(analytic - fd) <= 1e-7 * max(1.0, abs(fd))


@pytest.mark.parametrize("solver,method", [("dpmpp_2m", "adjointdeis-1"), ("dpmpp_2m", "adjointdeis-2m"),
                                           ("sde_dpmpp_1", "adjointdeis-sde")])
@pytest.mark.parametrize("adjoint_steps", [None, 7])
def test_continuous_methods_keep_the_graphs_of_their_own_points(solver, method, adjoint_steps):
    """The budget applies to the AdjointDEIS methods too: only the steps they evaluate
    with the step's own conditioning are kept (never a hard switch's left limit)."""
    sig = grid_for(None)
    n = len(sig) - 1
    case = build_case(None, "hold", solver, sig)          # hard switches at steps 3 and 8
    ref = run(case, sig, None, solver, 0, method=method, adjoint_steps=adjoint_steps)
    full = run(case, sig, None, solver, 1000.0, method=method, adjoint_steps=adjoint_steps)
    assert_same_gradient(full, ref)
    switches = case[3].hard_switches(n)
    want = adjoint.get_method(method).graph_steps(n, adjoint_steps, frozenset(switches), False)
    assert set(full.kept_graphs.steps) == set(want)
    assert not set(full.kept_graphs.steps) & set(switches)
    m = ref.counts.vjps
    # step N − 1 is evaluated twice (the final denoise and the last interval): kept once
    assert full.counts == adjoint.CallCounts(n - len(want), m, m)
    assert ref.counts == adjoint.CallCounts(n, m, m)
    half = run(case, sig, None, solver, sum(full.kept_graphs.step_mb[:2]), method=method,
               adjoint_steps=adjoint_steps)
    assert_same_gradient(half, ref)
    assert half.kept_graphs.steps == tuple(sorted(want))[:2]


def test_flow_grid_from_sigma_one_keeps_the_exact_first_step():
    sig = torch.cat([torch.linspace(1.0, 0.05, 10, dtype=F64), torch.zeros(1, dtype=F64)])
    case = build_case("flow", "constant", "dpmpp_2m", sig)
    for method in ("exact", "adjointdeis-2m"):
        ref = run(case, sig, "flow", "dpmpp_2m", 0, method=method)
        full = run(case, sig, "flow", "dpmpp_2m", 1000.0, method=method)
        assert_same_gradient(full, ref)
        assert 0 in full.kept_graphs.steps


# ---------------------------------------------------------------------------------------
# counts and the allowance
# ---------------------------------------------------------------------------------------
class GrowingDenoiser:
    """The GMM, but from step `grow_at` on it also saves a large tensor: a later step
    whose graph is larger than the first ones (a ControlNet switching on, say)."""

    def __init__(self, gmm, grow_at, sigmas):
        self.gmm, self.grow_at = gmm, grow_at
        self.sigmas = [float(s) for s in sigmas]
        self.calls = 0

    def __call__(self, x, sigma, cond):
        self.calls += 1
        d = self.gmm(x, sigma, cond)
        if self.sigmas.index(float(sigma)) >= self.grow_at:
            big = torch.ones(65536, dtype=x.dtype)
            d = d + 0.0 * torch.tanh(big * x.sum()).sum()      # saves big and tanh's output
        return d


def test_a_step_larger_than_predicted_is_dropped_and_keeping_stops():
    sig = adjoint.karras_sigmas(10, 0.05, 10.0)
    gmm = make_gmm(d=4)
    den = GrowingDenoiser(gmm, 3, sig)
    x = 10 * torch.ones(2, 4, dtype=F64)
    loss = lambda x0: (x0 ** 2).sum(1)
    c = torch.zeros(1, 4, dtype=F64)
    ref = adjoint.gradient(den, x, sig, c, loss)
    small = adjoint.gradient(den, x, sig, c, loss, memory_budget=1000.0).kept_graphs.step_mb[0]
    den.calls = 0
    res = adjoint.gradient(den, x, sig, c, loss, memory_budget=4.5 * small)
    assert res.kept_graphs.steps == (0, 1, 2)
    assert len(res.kept_graphs.step_mb) == 4 and res.kept_graphs.step_mb[3] > 10 * small
    assert res.counts == adjoint.CallCounts(forwards=6, forwards_with_grad=11, vjps=10)
    assert den.calls == 17                        # counted by the denoiser itself
    assert torch.equal(res.grad_x_init, ref.grad_x_init)


def test_graphs_not_kept_overrides_the_budget():
    sig = adjoint.karras_sigmas(6, 0.05, 10.0)
    gmm = make_gmm(d=4)
    x = 10 * torch.ones(2, 4, dtype=F64)
    with memory.graphs_not_kept():
        res = adjoint.gradient(gmm, x, sig, torch.zeros(1, 4, dtype=F64), lambda x0: (x0 ** 2).sum(1),
                               memory_budget=1000.0)
    assert res.kept_graphs.steps == () and res.counts == adjoint.CallCounts(6, 6, 6)
    assert memory.keeping_allowed()


def test_auto_budget_on_the_cpu_is_half_the_available_ram():
    sig = adjoint.karras_sigmas(6, 0.05, 10.0)
    gmm = make_gmm(d=4)
    x = 10 * torch.ones(2, 4, dtype=F64)
    res = adjoint.gradient(gmm, x, sig, torch.zeros(1, 4, dtype=F64), lambda x0: (x0 ** 2).sum(1),
                           memory_budget="auto")
    available = memory.available_ram_bytes()
    assert available > 0
    assert res.kept_graphs.budget_mb == pytest.approx(0.5 * available / MiB, rel=0.05)
    assert res.kept_graphs.steps == tuple(range(6)) and res.counts == adjoint.CallCounts(0, 6, 6)
    with open("/proc/meminfo") as f:
        mem_available_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    assert available == pytest.approx(mem_available_kb * 1024, rel=0.05)


# ---------------------------------------------------------------------------------------
# memory: kept graphs within the budget; the peak within budget + the budget-0 peak
# ---------------------------------------------------------------------------------------
class LiveSavedBytes:
    """An outer saved-tensor hook: bytes of the distinct storages saved and still alive."""

    def __init__(self):
        self.live = {}          # storage key → [bytes, references]
        self.bytes = 0
        self.peak = 0
        self.packs = 0

    def pack(self, t):
        self.packs += 1
        key = t.untyped_storage().data_ptr()
        entry = self.live.setdefault(key, [t.untyped_storage().nbytes(), 0])
        if entry[1] == 0:
            self.bytes += entry[0]
            self.peak = max(self.peak, self.bytes)
        entry[1] += 1
        return _Held(t.detach(), self, key)     # detached: no reference cycle (torch's own advice)

    @staticmethod
    def unpack(held):
        return held.t

    def release(self, key):
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.bytes -= entry[0]
            del self.live[key]


class _Held:
    def __init__(self, t, counter, key):
        self.t, self.counter, self.key = t, counter, key

    def __del__(self):
        self.counter.release(self.key)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "sde_dpmpp_1"])
def test_peak_of_saved_tensors_stays_within_budget_plus_the_budget_0_peak(solver):
    gmm = make_gmm(d=64, k=4)
    theta = gmm.offsets.clone().requires_grad_(True)
    gmm.offsets = theta
    sig = adjoint.karras_sigmas(16, 0.05, 10.0)
    x = 10 * torch.randn(8, 64, generator=torch.Generator().manual_seed(1), dtype=F64)
    kfs = [torch.zeros(1, 64, dtype=F64), torch.ones(1, 64, dtype=F64)]
    sc = ScheduledConditioning(kfs, Timeline((Position(0.0), Position(0.5)), "linear"))
    loss = lambda x0: (x0 ** 2).sum(1)
    gen = lambda: torch.Generator().manual_seed(0)

    def measured(budget):
        counter = LiveSavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
            res = adjoint.gradient(gmm, x, sig, sc, loss, solver=solver, params=(theta,), generator=gen(),
                                   memory_budget=budget)
        gc.collect()
        assert counter.bytes == 0 and not counter.live          # nothing kept after the call
        return res, counter

    ref, base = measured(0)
    step = max(measured(1000.0)[0].kept_graphs.step_mb)
    peaks = {}
    for k in (1, 4, 8, 16):
        budget = k * step
        res, counter = measured(budget)
        assert torch.equal(res.grad_x_init, ref.grad_x_init) or rel_err(res.grad_x_init, ref.grad_x_init) < 1e-13
        assert len(res.kept_graphs.steps) == k and res.kept_graphs.kept_mb <= budget
        assert counter.packs > 0                  # the outer hook saw the kept steps' tensors too
        assert counter.peak <= budget * MiB + base.peak
        peaks[k] = counter.peak
    assert peaks[1] < peaks[4] < peaks[8] < peaks[16]           # the budget is what is spent
    assert peaks[16] > 8 * base.peak


# ---------------------------------------------------------------------------------------
# composition with saved-tensor hooks; in-place writes still caught
# ---------------------------------------------------------------------------------------
class StateWritingDenoiser:
    """Writes into a tensor it saves, at the start of every call: harmless when each graph is
    differentiated right after its forward, a hazard for a graph kept across steps."""

    def __init__(self):
        self.state = torch.ones(4, dtype=F64)
        self.gmm = make_gmm(d=4)

    def __call__(self, x, sigma, cond):
        self.state.mul_(1.0)
        return self.gmm(x * self.state, sigma, cond)


def _check_version(packed):
    t, version = packed
    if t._version != version:
        raise RuntimeError("one of the variables needed for gradient computation has been modified by an "
                           "inplace operation (outer test hook)")
    return t


@pytest.mark.parametrize("outer_hook", [False, True])
def test_in_place_writes_into_a_kept_graph_still_raise(outer_hook):
    """Without a hook the meter's own hook checks versions (as autograd would); under a
    caller's hook, that hook's unpack still runs and catches it."""
    den = StateWritingDenoiser()
    sig = adjoint.karras_sigmas(6, 0.05, 10.0)
    args = (den, 10 * torch.ones(2, 4, dtype=F64), sig, torch.zeros(1, 4, dtype=F64), lambda x0: (x0 ** 2).sum(1))
    hooks = (torch.autograd.graph.saved_tensors_hooks(lambda t: (t, t._version), _check_version)
             if outer_hook else contextlib.nullcontext())
    with hooks:
        res = adjoint.gradient(*args)                         # budget 0: no graph outlives its step
        assert res.counts == adjoint.CallCounts(6, 6, 6)
        with pytest.raises(RuntimeError, match="modified by an inplace operation") as info:
            adjoint.gradient(*args, memory_budget=1000.0)
    assert ("outer test hook" in str(info.value)) == outer_hook


def test_a_reporting_hook_is_measured_by_its_reports_and_stays_in_charge():
    """A caller's hook declared with memory.reporting_hook: the meter installs nothing, the
    caller's pack sees every saved tensor, and the step's size is what the caller reported."""
    reported = []

    def pack(t):
        copy = t.detach().clone()
        memory.record_saved(copy)
        reported.append(copy.untyped_storage().nbytes())
        return copy

    gmm = make_gmm(d=4)
    sig = adjoint.karras_sigmas(5, 0.05, 10.0)
    x = 10 * torch.ones(2, 4, dtype=F64)
    c = torch.zeros(1, 4, dtype=F64)
    loss = lambda x0: (x0 ** 2).sum(1)
    ref = adjoint.gradient(gmm, x, sig, c, loss)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), memory.reporting_hook(pack):
        res = adjoint.gradient(gmm, x, sig, c, loss, memory_budget=1000.0)
    assert res.kept_graphs.steps == tuple(range(5))
    per_step = (len(reported) - 1) // 5     # the kept forwards, then the loss (x0 ** 2 saves x0)
    assert len(reported) == 5 * per_step + 1 and per_step > 0
    assert res.kept_graphs.step_mb[0] * MiB == sum(reported[:per_step]) + \
        per_step * memory.SAVED_TENSOR_OVERHEAD_BYTES              # data, and each one's bookkeeping
    assert torch.equal(res.grad_x_init, ref.grad_x_init)


def test_meter_counts_each_storage_once_and_leaves_out_inputs_and_parameters():
    weight = torch.nn.Parameter(torch.randn(8, 8, dtype=F64), requires_grad=False)
    x = torch.randn(3, 8, dtype=F64)
    leaf = torch.randn(8, dtype=F64, requires_grad=True)
    with torch.enable_grad(), memory.measuring(torch.device("cpu"), [x, leaf]) as meter:
        xi = x.detach().requires_grad_(True)
        h = torch.tanh(xi @ weight.t() + leaf)     # saves x (input), weight.t() (a parameter's view), tanh's output
        out = h * h                                 # saves h twice: one storage
    assert meter.measurable
    assert meter.saved_bytes == h.untyped_storage().nbytes() == 3 * 8 * 8
    assert meter.saved_tensors == 4                 # x, weight.t(), h, h: each one's bookkeeping
    assert meter.nbytes == 3 * 8 * 8 + 4 * memory.SAVED_TENSOR_OVERHEAD_BYTES
    del out


# ---------------------------------------------------------------------------------------
# refusals and interrupts
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,error,message", [
    (-1, ValueError, "gradient: memory_budget: must be \"auto\", 0 (recompute every step) or a finite number "
                     "of megabytes > 0, got -1"),
    (float("nan"), ValueError, "finite number of megabytes > 0, got nan"),
    (math.inf, ValueError, "finite number of megabytes > 0, got inf"),
    ("lots", ValueError, "gradient: memory_budget: must be \"auto\", 0 (recompute every step) or a number of "
                         "megabytes > 0, got 'lots'"),
    ("Auto", ValueError, "got 'Auto'"),
    (True, TypeError, "gradient: memory_budget: must be \"auto\", 0 or a number of megabytes, got bool True"),
    ([1], TypeError, "got list [1]"),
    (None, TypeError, "got NoneType None"),
])
def test_bad_budgets_are_refused_before_any_network_call(value, error, message):
    gmm = make_gmm(d=4)
    with pytest.raises(error) as info:
        adjoint.gradient(gmm, torch.ones(2, 4, dtype=F64), adjoint.karras_sigmas(4, 0.05, 10.0),
                         torch.zeros(1, 4, dtype=F64), lambda x0: (x0 ** 2).sum(1), memory_budget=value)
    assert message in str(info.value)
    assert gmm.calls == 0


def test_an_interrupt_leaves_no_kept_graph_alive():
    gmm = make_gmm(d=4)
    sig = adjoint.karras_sigmas(6, 0.05, 10.0)

    class Interrupted(Exception):
        pass

    def interrupt(phase, done, total):
        if phase == "backward" and done == 2:
            raise Interrupted

    counter = LiveSavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        with pytest.raises(Interrupted):
            adjoint.gradient(gmm, 10 * torch.ones(1, 4, dtype=F64), sig, torch.zeros(1, 4, dtype=F64),
                             lambda x0: (x0 ** 2).sum(), memory_budget=1000.0, step_callback=interrupt)
    gc.collect()
    assert counter.peak > 0 and counter.bytes == 0 and not counter.live
