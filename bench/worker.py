"""One benchmark job in a fresh process (run by run_bench.py under the host venv).

    python bench/worker.py SPEC.json OUT.json

SPEC "kind": "table" times the gradient methods on one workload (width × latent) at the
given step counts and computes their accuracy; "guidance" runs the optimisation loops;
"budget" times exact with memory budgets of 0, N/4, N/2 and N steps' graphs beside naive
autograd, the floor and one plain sampling pass; "batch" times one per-sample optimisation
of a batch against one-by-one runs of its samples.

Timing: time.perf_counter around one complete gradient (sampling pass included), after
one untimed warm-up call of every method on this workload. Repetitions are interleaved
(rep 0 of every method, then rep 1, …, the method order rotated each rep), so a change of
machine load spreads over all methods instead of landing on one.

Isolation (CPU): every measured call runs in a fresh fork of the warmed-up worker (see
`Forked`), so each starts from the same heap and caches, whatever ran before it: no
method inherits another's heap fragmentation (naive autograd frees 600 MB at N = 50).

Memory (CPU): resident set size, from /proc/self/status, in that child. Before the call
(outside the timer): glibc malloc_trim(0), the kernel's peak-RSS mark reset (write "5" to
/proc/self/clear_refs) and the current RSS read as the baseline; after the call, peak =
VmHWM − baseline. The model's weights and everything else already resident are in the
baseline, so the number is the extra memory the gradient needs at its peak (tensors,
autograd graph, allocator slack). It is the same in every repetition to ~0.1 MB; the row
reports the median. (CUDA: torch.cuda.max_memory_allocated above the memory allocated
before the call; calls run in-process, CUDA does not survive fork.)

Python's cyclic garbage collector is off (a full pass takes ~0.2 s with ComfyUI imported).
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import pickle
import statistics
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workload  # noqa: E402

workload.import_comfy()

import torch  # noqa: E402

import methods  # noqa: E402

_libc = None
MADV_POPULATE_READ = 22   # Linux ≥ 5.14


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class MemoryProbe:
    def __init__(self, device: str):
        self.device = device
        global _libc
        if device == "cpu" and _libc is None:
            try:
                _libc = ctypes.CDLL("libc.so.6")
            except OSError:
                _libc = False
        self.reset_ok = True

    def start(self):
        if self.device == "cpu":
            if _libc:
                _libc.malloc_trim(0)
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.reset_ok = False
            self.base = _status_kb("VmRSS") * 1024
        else:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()

    def stop(self) -> float:
        """Peak extra bytes since start(), in MiB."""
        if self.device == "cpu":
            peak = _status_kb("VmHWM") * 1024
        else:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        return (peak - self.base) / 2 ** 20


class Forked:
    """Run each measured call in a fresh fork of this (warmed-up) process.

    Every call then starts from the same process state: the same heap (so glibc's
    fragmentation left by an earlier method, e.g. naive autograd's 600 MB graph, cannot
    leak into the next method's memory or time), the same caches. A forked child maps the
    shared libraries' code pages lazily, and those faults would count in its RSS (~30 MB of
    libtorch code on the first forward), so before measuring, the child maps every file
    page that is resident in the parent (mincore in the parent, MADV_POPULATE_READ in the
    child: no I/O, the pages are in the page cache).
    """

    def __init__(self):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.libc = libc
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.runs = []

    def snapshot_file_pages(self):
        runs = []
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6 or not parts[5].startswith("/") or "r" not in parts[1]:
                    continue
                a, b = (int(x, 16) for x in parts[0].split("-"))
                n = (b - a) // self.page
                vec = ctypes.create_string_buffer(n)
                if self.libc.mincore(a, b - a, vec) != 0:
                    continue
                raw, i = vec.raw, 0
                while i < n:
                    if raw[i] & 1:
                        j = i
                        while j < n and raw[j] & 1:
                            j += 1
                        runs.append((a + i * self.page, (j - i) * self.page))
                        i = j
                    else:
                        i += 1
        self.runs = runs

    def __call__(self, fn):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:   # child
            try:
                os.close(r)
                for a, length in self.runs:
                    self.libc.madvise(a, length, MADV_POPULATE_READ)
                data = pickle.dumps(("ok", fn()))
            except BaseException:
                data = pickle.dumps(("error", traceback.format_exc()))
            with os.fdopen(w, "wb") as f:
                f.write(data)
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
        status, value = pickle.loads(data)
        if status != "ok":
            raise RuntimeError(f"measured call failed in the forked child:\n{value}")
        return value


def _sync(device):
    if device != "cpu":
        torch.cuda.synchronize()


def rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


def kf_cat(grads) -> torch.Tensor:
    return torch.cat([g.detach().flatten().double() for g in grads])


def measure_call(wl, probe: MemoryProbe, call, keep: bool) -> dict:
    """One measured call of call() -> methods.Grad: time, peak memory, network calls (and
    the gradient if keep)."""
    device = probe.device
    probe.start()
    wl.counter.reset()
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        g = call()
    except torch.OutOfMemoryError as e:     # e.g. naive autograd at large N on a GPU
        if device != "cpu":
            torch.cuda.empty_cache()
        return {"failed": f"out of memory: {str(e).splitlines()[0]}"}
    _sync(device)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"time_s": dt, "cpu_s": cpu, "peak_mb": probe.stop(), "net_counts": wl.counter.snapshot(),
           "core_counts": g.core_counts, "loss": g.loss, "kept_steps": g.kept_steps}
    if keep:
        out["grads"] = (g.grad_x.detach().cpu().double(), kf_cat(g.grad_kf))
    return out


def forked_for(device: str):
    """A Forked runner with the warmed-up process's file pages snapshotted (CPU), or None."""
    if device != "cpu":
        return None
    fork = Forked()
    gc.collect()
    if _libc:
        _libc.malloc_trim(0)
    fork.snapshot_file_pages()
    return fork


def measure_interleaved(name: str, ns, reps: dict, method_names: list, measure, fork, single=(), t_start=0.0):
    """Every method at every N, repetitions interleaved (rep 0 of every method, then rep 1,
    ..., the order rotated each rep), each call in a fresh fork. Returns the rows (times,
    peaks, counts from the first call) and the first call's gradients."""
    rows = {(m, n): {"method": m, "N": n, "times_s": [], "cpu_s": [], "peak_mb_runs": []}
            for n in ns for m in method_names}
    grads = {}
    for n in ns:
        for rep in range(reps[n]):
            k = rep % len(method_names)
            order = method_names[k:] + method_names[:k]
            for m in order:
                row = rows[(m, n)]
                if (rep > 0 and m in single) or row.get("failed"):
                    continue
                keep = rep == 0
                res = fork(lambda: measure(m, n, keep)) if fork else measure(m, n, keep)
                if "failed" in res:
                    row["failed"] = res["failed"]
                    continue
                if keep:
                    row.update(net_counts=res["net_counts"], core_counts=res["core_counts"], loss=res["loss"],
                               kept_steps=res.get("kept_steps"))
                    grads[(m, n)] = res["grads"]
                elif res["net_counts"] != row["net_counts"]:
                    raise RuntimeError(f"{m} N={n}: network calls changed between repetitions")
                row["times_s"].append(res["time_s"])
                row["cpu_s"].append(res["cpu_s"])
                row["peak_mb_runs"].append(res["peak_mb"])
            print(f"  [{name}] N={n} rep {rep + 1}/{reps[n]} done "
                  f"({time.perf_counter() - t_start:.0f} s)", flush=True)
    return rows, grads


def run_table(spec: dict) -> dict:
    device = spec.get("device", "cpu")
    wl = workload.build_workload(spec["width"], spec["latent"], device)
    method_names = spec["methods"]
    ns = spec["Ns"]
    reps = {int(k): v for k, v in spec["reps"].items()}
    single = set(spec.get("single_rep_methods", ()))   # accuracy rows timed once
    probe = MemoryProbe(device)
    probs = {n: workload.make_problem(wl, n) for n in ns}
    t_start = time.perf_counter()

    # warm-up: one untimed call of every method (first-call allocations, oneDNN caches)
    warm_n = min(ns)
    for m in method_names:
        methods.run_method(wl, probs[warm_n], m)
    _sync(device)

    fork = forked_for(device)

    def measure(m, n, keep):
        return measure_call(wl, probe, lambda: methods.run_method(wl, probs[n], m), keep)

    rows, grads = measure_interleaved(wl.name, ns, reps, method_names, measure, fork, single, t_start)

    # references: exact (2M) at the same N is the "exact" row itself; exact of DPM-Solver++(1)
    # (the sampler odeint's Euler steps reproduce); exact (2M) at ref_N ≈ the continuous problem.
    refs = {}
    ref_info = {}
    needs_ddim = any(m.startswith("odeint") for m in method_names)
    for n in ns:
        if needs_ddim:
            g = methods.ours(wl, probs[n], "exact", solver="dpmpp_1")
            refs[("dpmpp_1", n)] = (g.grad_x.detach().cpu().double(), kf_cat(g.grad_kf))
            ref_info[f"exact_dpmpp_1_N{n}_loss"] = g.loss
    ref_n = spec.get("ref_N")
    if ref_n:
        t0 = time.perf_counter()
        g = methods.ours(wl, workload.make_problem(wl, ref_n), "exact")
        refs[("cont",)] = (g.grad_x.detach().cpu().double(), kf_cat(g.grad_kf))
        ref_info["ref_N"] = ref_n
        ref_info["ref_time_s"] = time.perf_counter() - t0
        ref_info["ref_loss"] = g.loss
        ref_info["ref_grad_x_norm"] = float(refs[("cont",)][0].norm())
        ref_info["ref_grad_kf_norm"] = float(refs[("cont",)][1].norm())

    out_rows = []
    for (m, n), row in rows.items():
        ts = row["times_s"]
        if row.get("failed"):
            row.update(median_s=None, peak_mb=None, reps=0, err_same_N=None, err_cont=None)
            out_rows.append(row)
            continue
        row["median_s"] = statistics.median(ts)
        row["peak_mb"] = statistics.median(row["peak_mb_runs"])
        row["reps"] = len(ts)
        gx, gk = grads[(m, n)]
        if m == "floor":
            row["err_same_N"] = row["err_cont"] = None
        else:
            ex, ek = grads.get(("exact", n), (None, None))
            same = {"x": rel_err(gx, ex), "kf": rel_err(gk, ek)} if ex is not None else None
            row["err_same_N"] = same
            row["err_vs_exact_2m_same_N"] = same
            if m.startswith("odeint") and ("dpmpp_1", n) in refs:
                rx, rk = refs[("dpmpp_1", n)]
                row["err_same_N"] = {"x": rel_err(gx, rx), "kf": rel_err(gk, rk)}
                row["err_same_N_reference"] = "exact adjoint of dpmpp_1 (the sampler Euler reproduces)"
            if ("cont",) in refs:
                cx, ck = refs[("cont",)]
                row["err_cont"] = {"x": rel_err(gx, cx), "kf": rel_err(gk, ck)}
            else:
                row["err_cont"] = None
        out_rows.append(row)
    return {"kind": "table", "workload": workload.describe(wl), "rows": out_rows, "refs": ref_info,
            "memory_reset_ok": probe.reset_ok, "elapsed_s": time.perf_counter() - t_start}


# The memory-budget rows: exact with the graphs of 0, N/4, N/2 and all N steps kept, side by
# side with naive autograd, the floor and one plain sampling pass of the same N.
BUDGET_FRACTIONS = {"exact budget 0": 0.0, "exact budget N/4": 0.25, "exact budget N/2": 0.5,
                    "exact budget N": 1.0}
BUDGET_ROWS = ["plain pass", "floor", "naive autograd", *BUDGET_FRACTIONS]


def budget_mb(fraction: float, n: int, step_mb: float) -> float:
    """The budget of the row: k = round(fraction·N) steps' graphs, plus half a graph of slack
    (k + 0.5 graphs hold exactly k), 0 for budget 0."""
    k = round(fraction * n)
    return 0.0 if k == 0 else (k + 0.5) * step_mb


def run_budget(spec: dict) -> dict:
    device = spec.get("device", "cpu")
    wl = workload.build_workload(spec["width"], spec["latent"], device)
    ns = spec["Ns"]
    reps = {int(k): v for k, v in spec["reps"].items()}
    probe = MemoryProbe(device)
    probs = {n: workload.make_problem(wl, n) for n in ns}
    t_start = time.perf_counter()
    step_mb = {n: methods.step_graph_mb(wl, probs[n]) for n in ns}      # (also a warm-up)
    budgets = {(m, n): budget_mb(f, n, step_mb[n]) for m, f in BUDGET_FRACTIONS.items() for n in ns}

    def call(m, n):
        if m == "plain pass":
            return methods.plain_pass(wl, probs[n])
        if m in BUDGET_FRACTIONS:
            return methods.ours(wl, probs[n], "exact", memory_budget=budgets[(m, n)])
        return methods.run_method(wl, probs[n], m)

    for m in BUDGET_ROWS:           # warm-up: one untimed call of every row
        call(m, min(ns))
    _sync(device)
    fork = forked_for(device)
    rows, grads = measure_interleaved(wl.name + " budget", ns, reps, BUDGET_ROWS,
                                      lambda m, n, keep: measure_call(wl, probe, lambda: call(m, n), keep),
                                      fork, (), t_start)
    out_rows = []
    for (m, n), row in rows.items():
        row["median_s"] = statistics.median(row["times_s"])
        row["median_cpu_s"] = statistics.median(row["cpu_s"])
        row["peak_mb"] = statistics.median(row["peak_mb_runs"])
        row["reps"] = len(row["times_s"])
        row["budget_mb"] = budgets.get((m, n))
        row["step_graph_mb"] = step_mb[n]
        if m in BUDGET_FRACTIONS or m == "naive autograd":
            gx, gk = grads[(m, n)]
            ex, ek = grads[("exact budget 0", n)]
            row["err_vs_budget_0"] = {"x": rel_err(gx, ex), "kf": rel_err(gk, ek)}
        out_rows.append(row)
    return {"kind": "budget", "workload": workload.describe(wl), "rows": out_rows,
            "memory_reset_ok": probe.reset_ok, "elapsed_s": time.perf_counter() - t_start}


def run_batch(spec: dict) -> dict:
    """One optimisation of a batch of B samples (per_sample=True: each its own Adam) against
    B batch-1 runs of the same samples: the same total work, wall time and peak memory."""
    import adjoint
    device = spec.get("device", "cpu")
    wl = workload.build_workload(spec["width"], spec["latent"], device)
    b, n, iters, reps = spec["batch"], spec["N"], spec["iterations"], spec["reps"]
    prob = workload.make_problem(wl, n)
    noise = torch.randn((b, 4, wl.latent, wl.latent), generator=torch.Generator().manual_seed(11)).to(device)
    opts = dict(iterations=iters, lr=0.05, renormalize_noise=True, per_sample=True)

    def batched():
        return adjoint.optimize(wl.denoiser, noise, prob.sigmas, prob.schedule, prob.loss_fn, **opts).losses

    def one_by_one():
        runs = [adjoint.optimize(wl.denoiser, noise[i:i + 1], prob.sigmas, prob.schedule, prob.loss_fn, **opts)
                for i in range(b)]
        return [sum(r.losses[k] for r in runs) for k in range(len(runs[0].losses))]

    calls = {f"batch {b}": batched, f"{b} × batch 1": one_by_one}
    for fn in calls.values():       # warm-up
        fn()
    fork = forked_for(device)
    probe = MemoryProbe(device)
    t_start = time.perf_counter()

    def measure(fn):
        probe.start()
        wl.counter.reset()
        t0, c0 = time.perf_counter(), time.process_time()
        losses = fn()
        return {"time_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                "peak_mb": probe.stop(), "losses": losses, "net_counts": wl.counter.snapshot()}

    rows = {name: {"run": name, "times_s": [], "cpu_s": [], "peak_mb_runs": []} for name in calls}
    for rep in range(reps):
        order = list(calls) if rep % 2 == 0 else list(calls)[::-1]
        for name in order:
            res = fork(lambda: measure(calls[name])) if fork else measure(calls[name])
            for key, runs in (("time_s", "times_s"), ("cpu_s", "cpu_s"), ("peak_mb", "peak_mb_runs")):
                rows[name][runs].append(res[key])
            rows[name].update(losses=res["losses"], net_counts=res["net_counts"])
        print(f"  [{wl.name} batch] rep {rep + 1}/{reps} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    for row in rows.values():
        row["median_s"] = statistics.median(row["times_s"])
        row["median_cpu_s"] = statistics.median(row["cpu_s"])
        row["peak_mb"] = statistics.median(row["peak_mb_runs"])
    first, second = (rows[name] for name in calls)
    loss_diff = max(abs(x - y) / abs(y) for x, y in zip(first["losses"], second["losses"]))
    return {"kind": "batch", "workload": workload.describe(wl), "batch": b, "N": n, "iterations": iters,
            "rows": list(rows.values()), "time_ratio": first["median_s"] / second["median_s"],
            "cpu_time_ratio": first["median_cpu_s"] / second["median_cpu_s"],
            "max_rel_loss_difference": loss_diff, "elapsed_s": time.perf_counter() - t_start}


def _cos(a, b) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _sampler_jvp(wl, prob, seed: int, h: float = 1e-1):
    """(Jv, v): how far the sampler map x_T -> x_0 is from the identity (what greedy
    assumes), as a finite-difference Jacobian-vector product along a seeded random v."""
    import adjoint
    v = torch.randn(prob.x_init.shape, generator=torch.Generator().manual_seed(seed)).to(prob.x_init)
    x0a = adjoint.sample(wl.denoiser, prob.x_init, prob.sigmas, prob.schedule).x0
    x0b = adjoint.sample(wl.denoiser, prob.x_init + h * v, prob.sigmas, prob.schedule).x0
    return (x0b - x0a) / h, v


def run_guidance(spec: dict) -> dict:
    """Adam on the unit noise ε (x_T = σ_max·ε), lr, betas as adjoint.optimize's defaults,
    ε renormalised to its initial norm after every step (as the Adjoint Sampler does).
    Every method gets the same loop; only the gradient differs."""
    import adjoint
    device = spec.get("device", "cpu")
    wl = workload.build_workload(spec["width"], spec["latent"], device)
    n, iters, lr = spec["N"], spec["iterations"], spec.get("lr", 0.05)
    prob = workload.make_problem(wl, n)
    sigma0 = float(prob.sigmas[0])
    curves = {}
    # warm-up (untimed), and how good the cheaper gradients' directions are at the start
    ex = methods.ours(wl, prob, "exact")
    d1 = methods.ours(wl, prob, "adjointdeis-1")
    _, g_greedy = methods.greedy_gradient(wl, prob)
    jv, v = _sampler_jvp(wl, prob, seed=7)
    diagnostics = {"cos_greedy_vs_exact": _cos(g_greedy, ex.grad_x),
                   "cos_adjointdeis1_vs_exact": _cos(d1.grad_x, ex.grad_x),
                   "cos_Jv_v": _cos(jv, v), "norm_Jv_over_v": float(jv.norm() / v.norm())}
    print(f"  [guidance] at x_T: cos(greedy, exact) = {diagnostics['cos_greedy_vs_exact']:.3f}, "
          f"cos(adjointdeis-1, exact) = {diagnostics['cos_adjointdeis1_vs_exact']:.3f}; "
          f"sampler Jacobian: cos(Jv, v) = {diagnostics['cos_Jv_v']:.3f}, "
          f"|Jv|/|v| = {diagnostics['norm_Jv_over_v']:.3f}", flush=True)
    for name in spec["methods"]:
        gc.collect()
        eps = prob.noise.detach().clone()
        init_norm = eps.norm()
        opt = torch.optim.Adam([eps], lr=lr, foreach=False)
        wl.counter.reset()
        times, losses = [], []
        _sync(device)
        t0 = time.perf_counter()
        for k in range(iters):
            x_init = sigma0 * eps
            if name == "greedy":
                loss, gx = methods.greedy_gradient(wl, workload.Problem(
                    x_init=x_init, noise=eps, sigmas=prob.sigmas, schedule=prob.schedule,
                    loss_fn=prob.loss_fn, target=prob.target, num_steps=n))
            else:
                res = adjoint.gradient(wl.denoiser, x_init, prob.sigmas, prob.schedule, prob.loss_fn,
                                       method=name)
                loss, gx = float(res.loss), res.grad_x_init
            with torch.no_grad():
                eps.grad = sigma0 * gx
                opt.step()
                opt.zero_grad(set_to_none=True)
                eps.mul_(init_norm / eps.norm())
            _sync(device)
            times.append(time.perf_counter() - t0)
            losses.append(loss)
        # the last iterate, forward only (not part of the timed loop)
        traj = adjoint.sample(wl.denoiser, sigma0 * eps, prob.sigmas, prob.schedule)
        final = float(prob.loss_fn(traj.x0).sum())
        counts = wl.counter.snapshot()
        curves[name] = {"time_s": times, "loss": losses, "final_iterate_loss": final,
                        "net_counts": counts, "best_loss": min(losses + [final])}
        print(f"  [guidance] {name}: loss {losses[0]:.3f} -> {final:.3f} in {times[-1]:.1f} s", flush=True)
    # at equal wall time: the best loss each method had reached when the fastest finished
    t_eq = min(c["time_s"][-1] for c in curves.values())
    for c in curves.values():
        c["loss_at_equal_time"] = min(v for t, v in zip(c["time_s"], c["loss"]) if t <= t_eq * 1.0001)
    return {"kind": "guidance", "workload": workload.describe(wl), "N": n, "iterations": iters,
            "lr": lr, "curves": curves, "equal_time_s": t_eq, "diagnostics": diagnostics}


def _greedy_loop(wl, prob, iterations: int, lr: float, on_iteration, gradient_fn=None):
    """adjoint.optimize's loop (joint mode, optimize_noise only, renormalize_noise=True, no
    clipping, no early stop) with gradient_fn(wl, prob) -> (loss, ∂L/∂x_T) (default: the
    greedy gradient, methods.greedy_gradient) in place of adjoint.gradient: Adam
    (lr, betas (0.9, 0.999), foreach=False) on ε, ε.grad = σ_0·∂L/∂x_T, ε renormalised to
    its initial norm after every step, then the final iterate forward-only. Returns that
    final iterate's loss. on_iteration(k, loss) runs after each gradient, as optimize's
    callback does."""
    import adjoint
    gradient_fn = gradient_fn or methods.greedy_gradient
    eps = prob.noise.detach().clone()
    init_norms = eps.flatten(1).norm(dim=1)
    sigma0 = float(prob.sigmas[0])
    opt = torch.optim.Adam([eps], lr=lr, betas=(0.9, 0.999), foreach=False)
    for k in range(iterations):
        loss, gx = gradient_fn(wl, workload.Problem(
            x_init=sigma0 * eps, noise=eps, sigmas=prob.sigmas, schedule=prob.schedule,
            loss_fn=prob.loss_fn, target=None, num_steps=prob.num_steps))
        on_iteration(k, loss)
        with torch.no_grad():
            eps.grad = (sigma0 * gx).to(eps.dtype)
            opt.step()
            opt.zero_grad(set_to_none=True)
            eps.mul_((init_norms / eps.flatten(1).norm(dim=1).clamp_min(1e-30)).reshape(-1, 1, 1, 1))
    with torch.no_grad():
        traj = adjoint.sample(wl.denoiser, sigma0 * eps, prob.sigmas, prob.schedule)
        return float(prob.loss_fn(traj.x0).sum())


def _optimize_run(wl, prob, method: str, iterations: int, lr: float, on_iteration) -> float:
    """adjoint.optimize on ε alone (the Adjoint Sampler's defaults: Adam, renormalize_noise);
    returns the final iterate's loss (its forward-only evaluation)."""
    import adjoint
    res = adjoint.optimize(wl.denoiser, prob.noise, prob.sigmas, prob.schedule, prob.loss_fn, method=method,
                           iterations=iterations, lr=lr, renormalize_noise=True,
                           callback=lambda info: on_iteration(info.iteration, float(info.loss)))
    return float(res.losses[-1])


def run_demo_guidance(spec: dict) -> dict:
    """Guidance on the toy-world demo model (bench/demo_guidance.py): for every seed and every
    method, K Adam iterations on ε from that seed's noise, the loss of each iterate against
    the wall time at which it was known, and the peak memory of the whole run.

    exact / adjointdeis-1 / adjointdeis-2m run adjoint.optimize itself (timestamps from its
    per-iteration callback); greedy runs the same loop by hand (`_greedy_loop`; that it is the
    same loop is checked: with the exact gradient it reproduces adjoint.optimize's losses,
    `loop_check`). Each run is one call in a fresh fork of the warmed-up worker (memory:
    peak RSS above the fork's baseline), seeds outer, the method order rotated per seed.
    Before the runs, at every seed's x_T (untimed, also the warm-up): the cosine of the
    greedy gradient (and of the methods in spec["diagnose"]) with the exact one and a
    finite-difference probe of the sampler's Jacobian along a random direction. Seed i's
    objective uses the objective's reference picture i (demo_guidance.DEFAULT_OBJECTIVE)."""
    import adjoint
    import demo_guidance
    device = spec.get("device", "cpu")
    t_start = time.perf_counter()
    wl, extras = demo_guidance.build_workload(spec)
    n, iters, lr = spec["N"], spec["iterations"], spec.get("lr", 0.05)
    seeds, names = list(spec["seeds"]), list(spec["methods"])
    probs, descs = {}, {}
    for i, s in enumerate(seeds):     # seed i: its noise and the objective's reference i
        loss_fn, descs[s] = demo_guidance.make_loss(wl, extras, i)
        probs[s] = demo_guidance.make_problem(wl, extras, loss_fn, n, s)
    loss_desc = descs[seeds[0]] if len(set(descs.values())) == 1 else (
        "Guidance Loss (Image Target): MSE of the decoded picture to a reference picture of another scene, one per "
        f"seed (toy_world.render), blur σ {float(extras['objective'].get('blur_sigma', 0.0)):g} px")
    print(f"  [demo] loaded in {time.perf_counter() - t_start:.1f} s; {loss_desc}", flush=True)

    # diagnostics at x_T (and the warm-up of every method)
    diagnostics = {}
    for s in seeds:
        prob = probs[s]
        t0 = time.perf_counter()
        grads = {m: methods.ours(wl, prob, m).grad_x for m in spec.get("diagnose", ["exact"])}
        loss0, grads["greedy"] = methods.greedy_gradient(wl, prob)
        ex = grads["exact"]
        jv, v = _sampler_jvp(wl, prob, seed=7 + s)
        d = {f"cos_{m}_vs_exact": _cos(g, ex) for m, g in grads.items() if m != "exact"}
        d.update(norm_ratio_greedy_vs_exact=float(grads["greedy"].norm() / ex.norm()),
                 cos_Jv_v=_cos(jv, v), norm_Jv_over_v=float(jv.norm() / v.norm()), start_loss=loss0)
        diagnostics[str(s)] = d
        print(f"  [demo] seed {s}: loss {loss0:.4g}; cos vs exact: "
              + ", ".join(f"{k[4:-9]} {v:.3f}" for k, v in d.items() if k.startswith("cos_") and k.endswith("_vs_exact"))
              + f"; sampler Jacobian cos(Jv, v) {d['cos_Jv_v']:.3f}, "
              f"|Jv|/|v| {d['norm_Jv_over_v']:.3f} ({time.perf_counter() - t0:.1f} s)", flush=True)
    _sync(device)

    fork = forked_for(device)
    probe = MemoryProbe(device)

    def one_run(m: str, seed: int, k_iters: int, loop: str = "auto") -> dict:
        prob = probs[seed]
        times, cpu_times, losses = [], [], []
        gc.collect()
        probe.start()
        wl.counter.reset()
        c0 = time.process_time()
        t0 = time.perf_counter()

        def on_iteration(k, loss):
            _sync(device)
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
            losses.append(loss)
        if m == "greedy":
            final = _greedy_loop(wl, prob, k_iters, lr, on_iteration)
        elif loop == "hand":       # the check: the hand loop with adjoint.gradient's exact gradient
            final = _hand_loop_exact(wl, prob, k_iters, lr, on_iteration)
        else:
            final = _optimize_run(wl, prob, m, k_iters, lr, on_iteration)
        _sync(device)
        total = time.perf_counter() - t0
        return {"time_s": times, "cpu_time_s": cpu_times, "loss": losses, "final_iterate_loss": final, "total_s": total,
                "cpu_s": time.process_time() - c0, "peak_mb": probe.stop(), "net_counts": wl.counter.snapshot()}

    def call(fn):
        return fork(fn) if fork else fn()

    loop_check = None
    if spec.get("check_iterations", 0):
        k = int(spec["check_iterations"])
        a = call(lambda: one_run("exact", seeds[0], k))
        b = call(lambda: one_run("exact", seeds[0], k, loop="hand"))
        diff = max(abs(x - y) / max(abs(y), 1e-30) for x, y in zip(a["loss"] + [a["final_iterate_loss"]],
                                                                   b["loss"] + [b["final_iterate_loss"]]))
        loop_check = {"iterations": k, "seed": seeds[0], "optimize_losses": a["loss"] + [a["final_iterate_loss"]],
                      "hand_loop_losses": b["loss"] + [b["final_iterate_loss"]], "max_rel_difference": diff}
        print(f"  [demo] loop check: the hand loop (greedy's) with the exact gradient vs adjoint.optimize, "
              f"{k} iterations: max rel. loss difference {diff:.1e}", flush=True)

    runs = {m: {} for m in names}
    for i, s in enumerate(seeds):
        order = names[i % len(names):] + names[:i % len(names)]
        for m in order:
            r = call(lambda: one_run(m, s, iters))
            runs[m][str(s)] = r
            print(f"  [demo] seed {s} {m:15s} loss {r['loss'][0]:.4g} -> best {min(r['loss'] + [r['final_iterate_loss']]):.4g} "
                  f"in {r['time_s'][-1]:.1f} s ({r['total_s']:.1f} s with the final pass), peak {r['peak_mb']:.1f} MB "
                  f"({time.perf_counter() - t_start:.0f} s)", flush=True)
    return {"kind": "demo_guidance", "workload": demo_guidance.describe(wl, extras, loss_desc), "N": n,
            "iterations": iters, "lr": lr, "seeds": seeds, "methods": names, "runs": runs,
            "diagnostics": diagnostics, "loop_check": loop_check, "memory_reset_ok": probe.reset_ok,
            "optimiser": "Adam (lr, betas (0.9, 0.999)) on ε, renormalised to its initial norm after every "
                         "step; the same lr for every method; adjoint.optimize for exact / adjointdeis-*, "
                         "the same loop by hand for greedy",
            "elapsed_s": time.perf_counter() - t_start}


def _hand_loop_exact(wl, prob, iterations, lr, on_iteration):
    """_greedy_loop's loop with adjoint.gradient's exact gradient (only for the loop check)."""
    import adjoint

    def exact_gradient(wl_, p):
        res = adjoint.gradient(wl_.denoiser, p.x_init, p.sigmas, p.schedule, p.loss_fn, method="exact")
        return float(res.loss), res.grad_x_init
    return _greedy_loop(wl, prob, iterations, lr, on_iteration, exact_gradient)


def main():
    spec = json.loads(Path(sys.argv[1]).read_text())
    # Python's cyclic collector takes ~0.2 s per full pass with ComfyUI imported; a pass
    # landing inside a timed call would add that to one method at random. It is switched
    # off and run explicitly between rounds instead (tensors are freed by refcounting).
    gc.disable()
    torch.set_num_threads(int(spec.get("threads", 1)))
    torch.manual_seed(0)
    runners = {"table": run_table, "guidance": run_guidance, "budget": run_budget, "batch": run_batch,
               "demo_guidance": run_demo_guidance}
    result = runners[spec["kind"]](spec)
    result["spec"] = spec
    result["torch_threads"] = torch.get_num_threads()
    result["env"] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    Path(sys.argv[2]).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
