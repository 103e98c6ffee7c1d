"""Benchmarks: cost, memory and accuracy of our gradients against the methods peers use.

    python3 bench/run_bench.py [--quick] [--out bench/results] [--threads 1] [--only LABEL,...]

Sets up the test host if it is missing (scripts/host/setup_host.py), re-runs itself under
the host venv (.host/venv: torch CPU + ComfyUI 0.3.75), installs the benchmark's own
dependency (bench/requirements.txt: torchdiffeq, --no-deps, into the host venv only,
never into the pack's dependencies) when it is missing, then runs each job in a fresh
worker process (bench/worker.py) and writes

    <out>/bench.json   every row, every repetition, the references, the machine, the load
    <out>/bench.png    time / memory / accuracy / guidance plots
    <out>/table.md     the table as Markdown

and prints the table and the targets. A full run (not --quick) with the default --out also
copies bench.json and bench.png to bench/ (committed; the README embeds bench/bench.png).

Jobs (CPU): the main workload (UNet width 32, 16² latent) at N = 5, 10, 20, 50 with every
method; widths 64 and 128 (16² latent) at N = 5 with exact / naive / checkpoint / floor;
the guidance loops; the memory budget (exact keeping the graphs of 0, N/4, N/2, N steps,
beside naive autograd, the floor and one plain sampling pass, N = 20 and 50); a batch of 4
optimised per sample against four batch-1 runs. On a CUDA machine the same rows also run
on a full-width SD1.5 UNet at 64² latents.

--only runs the jobs with those labels and merges them into the published bench/bench.json
(replacing the jobs of the same label; every job records when and under what load it ran).

Job demo-guidance (CPU; bench/demo_guidance.py, worker.run_demo_guidance): guidance on the
toy-world demo model (demo_model/: a trained SD1.5-class UNet at 8x8 latents, loaded with
ComfyUI's own loaders, with its text encoder and TAESD VAE), where the sampling steps
interact: Guidance Loss (Image Target, blur 4 px) on the decoded 64x64 picture toward a
reference picture of another scene (a red circle of a given size and place; one reference
per seed), caption "a red circle on a blue background", CFG 7, 20 steps of DPM-Solver++(2M)
(karras). Per seed (5) and method (exact, adjointdeis-1, adjointdeis-2m, greedy), 20 Adam
iterations on the noise at the same lr (0.1, as in the Reference Image example: at the
Adjoint Sampler's default 0.05 and 10 iterations the trained model's contracting sampler
left all four methods within noise of each other), the loss of
every iterate against the time it was known (wall and the worker's CPU time), the peak
memory of the run; the medians over seeds (loss at fixed times, time to reach 75 / 50 /
25 % of the start loss and its ratio to exact; on the wall clock when the worker had its
core to itself, else on its CPU time) go to

    <out>/demo_guidance.json, demo_guidance.png, demo_guidance.md

(not into bench.json; a full run with the default --out, or --only demo-guidance, copies
the JSON and the plot to bench/). Skipped, with a note, when the demo model's files are
missing. `--only demo-guidance` runs just it (~25 min on 2 cores); `--report
bench/demo_guidance.json` rebuilds its table and plot from the saved runs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "scripts" / "host"))

VENV_PY = REPO / ".host" / "venv" / "bin" / "python"


def ensure_torchdiffeq():
    try:
        import torchdiffeq  # noqa: F401
        return
    except ImportError:
        pass
    print("[bench] installing bench/requirements.txt (torchdiffeq, --no-deps) into the host venv", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-r",
                    str(HERE / "requirements.txt")], check=True)


ALL = ["exact", "adjointdeis-1", "adjointdeis-2m", "adjointdeis-1 M=N/2", "adjointdeis-2m M=N/2",
       "naive autograd", "checkpoint", "odeint_adjoint", "odeint_adjoint stored", "floor"]
SUBSET = ["exact", "naive autograd", "checkpoint", "floor"]


DEMO_METHODS = ["exact", "adjointdeis-1", "adjointdeis-2m", "greedy"]


def demo_job(quick: bool, device: str) -> dict:
    """The demo-guidance job (see the module docstring); CPU only."""
    if quick:
        return {"kind": "demo_guidance", "width": "toyworld", "latent": 8, "N": 5, "cfg": 7.0, "iterations": 2,
                "seeds": [0, 1], "lr": 0.05, "check_iterations": 2, "methods": DEMO_METHODS, "diagnose": ["exact"],
                "device": device, "label": "demo-guidance (quick)"}
    return {"kind": "demo_guidance", "width": "toyworld", "latent": 8, "N": 20, "cfg": 7.0, "iterations": 20,
            "seeds": [0, 1, 2, 3, 4], "lr": 0.1, "check_iterations": 2, "methods": DEMO_METHODS,
            "diagnose": ["exact"], "device": device, "label": "demo-guidance"}


def jobs(quick: bool, device: str):
    if device == "cpu":
        return _jobs(quick, device) + [demo_job(quick, device)]
    return _jobs(quick, device)


def _jobs(quick: bool, device: str):
    if quick:
        return [
            {"kind": "table", "width": "w32", "latent": 16, "Ns": [5], "reps": {"5": 2},
             "methods": ALL, "ref_N": 20, "device": device, "label": "main (quick)"},
            {"kind": "guidance", "width": "w32", "latent": 16, "N": 5, "iterations": 3,
             "methods": ["exact", "adjointdeis-1", "greedy"], "device": device, "label": "guidance (quick)"},
            {"kind": "budget", "width": "w32", "latent": 16, "Ns": [8], "reps": {"8": 2}, "device": device,
             "label": "memory budget (quick)"},
            {"kind": "batch", "width": "w32", "latent": 16, "N": 5, "iterations": 2, "batch": 4, "reps": 1,
             "device": device, "label": "batch (quick)"},
        ]
    if device == "cuda":
        return [
            {"kind": "table", "width": "sd15", "latent": 64, "Ns": [5, 10, 20, 50],
             "reps": {"5": 5, "10": 5, "20": 5, "50": 5}, "methods": ALL, "ref_N": 200,
             "device": device, "label": "gpu main"},
            {"kind": "guidance", "width": "sd15", "latent": 64, "N": 20, "iterations": 30,
             "methods": ["exact", "adjointdeis-1", "greedy"], "device": device, "label": "gpu guidance"},
        ]
    return [
        {"kind": "table", "width": "w32", "latent": 16, "Ns": [5, 10, 20, 50],
         "reps": {"5": 7, "10": 5, "20": 5, "50": 2}, "methods": ALL, "ref_N": 200,
         "single_rep_methods": ["odeint_adjoint stored"], "device": device, "label": "main"},
        {"kind": "table", "width": "w64", "latent": 16, "Ns": [5], "reps": {"5": 5},
         "methods": SUBSET, "ref_N": None, "device": device, "label": "width 64"},
        {"kind": "table", "width": "w128", "latent": 16, "Ns": [5], "reps": {"5": 5},
         "methods": SUBSET, "ref_N": None, "device": device, "label": "width 128"},
        {"kind": "guidance", "width": "w32", "latent": 16, "N": 10, "iterations": 30,
         "methods": ["exact", "adjointdeis-1", "greedy"], "device": device, "label": "guidance"},
        {"kind": "budget", "width": "w32", "latent": 16, "Ns": [20, 50], "reps": {"20": 7, "50": 3},
         "device": device, "label": "memory budget"},
        {"kind": "batch", "width": "w32", "latent": 16, "N": 10, "iterations": 3, "batch": 4, "reps": 3,
         "device": device, "label": "batch"},
    ]


def run_job(spec: dict, workdir: Path, threads: int) -> dict:
    spec = {**spec, "threads": threads}
    tag = spec["label"].replace(" ", "_").replace("(", "").replace(")", "")
    spec_path = workdir / f"spec_{tag}.json"
    out_path = workdir / f"result_{tag}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONWARNINGS": "ignore"}
    load_before = os.getloadavg()
    t0 = time.time()
    print(f"[bench] job {spec['label']}: {spec['kind']} {spec['width']} {spec['latent']}x{spec['latent']} "
          f"(load {load_before[0]:.2f})", flush=True)
    subprocess.run([sys.executable, str(HERE / "worker.py"), str(spec_path), str(out_path)],
                   check=True, env=env, cwd=REPO)
    res = json.loads(out_path.read_text())
    res["label"] = spec["label"]
    res["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    res["wall_s"] = time.time() - t0
    res["loadavg_before"] = load_before
    res["loadavg_after"] = os.getloadavg()
    print(f"[bench] job {spec['label']} done in {res['wall_s']:.0f} s "
          f"(load {res['loadavg_after'][0]:.2f})", flush=True)
    return res


def machine_info(threads: int) -> dict:
    import torch
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": threads, "OMP_NUM_THREADS": str(threads),
            "cuda_available": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform()}


def _json_safe(v):
    """inf / NaN as None (strict JSON), recursively."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def write_demo(res: dict, out: Path, machine: dict, command: str, quick: bool, load0, load1, total: float,
               publish: bool) -> None:
    """The demo-guidance job's outputs: <out>/demo_guidance.json (the job's every run, the
    medians), demo_guidance.md (the table), demo_guidance.png; printed; copied to bench/
    when publish."""
    import report
    # the clock: wall time when the worker had its core to itself (CPU time ≥ 90 % of wall time
    # in the median run), else its CPU time (one thread: what the wall time is on an idle core)
    all_runs = [r for per_seed in res["runs"].values() for r in per_seed.values()]
    share = report.median([r["cpu_s"] / r["total_s"] for r in all_runs])
    has_cpu = all("cpu_time_s" in r for r in all_runs)
    clock = "time_s" if share >= 0.9 or not has_cpu else "cpu_time_s"
    summ = report.demo_summary(res, clock=clock)
    summ["cpu_share"] = share
    other = report.demo_summary(res, clock="cpu_time_s" if clock == "time_s" else "time_s") if has_cpu else None
    doc = {"command": command, "quick": quick, "machine": machine, "loadavg_start": list(load0),
           "loadavg_end": list(load1), "total_s": total, "summary": _json_safe(summ),
           "summary_other_clock": _json_safe(other), "demo_guidance": res}
    (out / "demo_guidance.json").write_text(json.dumps(doc, indent=1))
    table, text = report.demo_markdown(res, summ), report.demo_text(res, summ)
    text += (f"\n  clock: {summ['clock_name']} (the worker had the CPU {share:.0%} of its wall time in the median run)")
    if other:
        text += (f"; on the {other['clock_name']} instead, time to 0.5·L₀ vs exact: " + ", ".join(
            f"{m} {report._fmt_ratio(o['ratio_vs_exact']['0.5'])}" for m, o in other["methods"].items()
            if m != "exact" and "0.5" in o["ratio_vs_exact"]))
    (out / "demo_guidance.md").write_text(table + "\n\n```\n" + text + "\n```\n")
    wl = res["workload"]
    kind = {"image_target": "image-target", "colour": "colour"}.get(wl["objective"]["kind"], wl["objective"]["kind"])
    title = (f"Guidance on the toy-world demo model: {kind} loss on the decoded picture, N = {res['N']}, "
             f"CFG {wl['cfg']:g}, {res['iterations']} Adam iterations; CPU ({machine.get('cpu') or 'cpu'}, "
             f"{machine.get('torch_threads')} thread)")
    report.demo_plot(res, summ, str(out / "demo_guidance.png"), title)
    print()
    print(table)
    print()
    print(text)
    print(f"load average {load0[0]:.2f} -> {load1[0]:.2f}; the job took {total:.0f} s")
    print(f"results: {out / 'demo_guidance.json'}, {out / 'demo_guidance.png'}, {out / 'demo_guidance.md'}")
    if publish:
        shutil.copyfile(out / "demo_guidance.json", HERE / "demo_guidance.json")
        shutil.copyfile(out / "demo_guidance.png", HERE / "demo_guidance.png")
        print(f"published: {HERE / 'demo_guidance.json'}, {HERE / 'demo_guidance.png'}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    import setup_host  # noqa: E402  (scripts/host)
    setup_host.run_under_host(__file__, argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a ~1-minute smoke run (N = 5 only, 2 reps)")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="output folder (default bench/results)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch / OpenMP threads per worker (default 1: this machine's 2 cores are shared)")
    ap.add_argument("--no-publish", action="store_true",
                    help="do not copy bench.json / bench.png to bench/ after a full run")
    ap.add_argument("--report", type=Path, metavar="BENCH_JSON",
                    help="measure nothing: rebuild the table, targets and plot from a saved bench.json")
    ap.add_argument("--only", metavar="LABELS",
                    help="run only the jobs with these labels (comma-separated, e.g. 'memory budget,batch') and "
                         "merge them into bench/bench.json's jobs")
    args = ap.parse_args(argv)
    t_start = time.time()
    sys.path.insert(0, str(HERE))
    import report

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        summary = json.loads(args.report.read_text())
        if "demo_guidance" in summary:      # a saved demo_guidance.json: rebuild its table and plot
            write_demo(summary["demo_guidance"], out, summary["machine"], summary["command"], summary["quick"],
                       summary["loadavg_start"], summary["loadavg_end"], summary["total_s"], publish=False)
            return 0
        results, gpu, load0 = summary["jobs"], summary["gpu"], summary["loadavg_start"]
        threads = summary["machine"]["torch_threads"]
        cpu_results = [r for r in results if r["workload"]["device"] == "cpu"]
        summary["targets"] = tgt = report.targets(cpu_results)
        summary["budget_targets"] = report.budget_targets(cpu_results)
        rows = report.table_rows(cpu_results)
        total = summary["total_s"]
        args.quick = summary["quick"]
        args.no_publish = True
    else:
        ensure_torchdiffeq()
        import torch
        import torchdiffeq
        threads = args.threads
        work = out / "work"
        work.mkdir(exist_ok=True)
        load0 = os.getloadavg()
        print(f"[bench] load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; "
              f"OMP_NUM_THREADS={threads}", flush=True)

        selected = jobs(args.quick, "cpu")
        labels = set()
        if args.only:
            labels = {label.strip() for label in args.only.split(",")}
            unknown = labels - {spec["label"] for spec in selected}
            if unknown:
                ap.error(f"--only: no job labelled {', '.join(sorted(unknown))}; labels: "
                         + ", ".join(spec["label"] for spec in selected))
            selected = [spec for spec in selected if spec["label"] in labels]
        import demo_guidance
        if any(spec["kind"] == "demo_guidance" for spec in selected) and not demo_guidance.models_present():
            try:
                demo_guidance.model_paths({})
            except FileNotFoundError as e:
                missing = str(e)
            if args.only:
                ap.error(f"--only: the demo-guidance job needs the demo model: {missing}")
            print(f"[bench] skipping the demo-guidance job: {missing}", flush=True)
            selected = [spec for spec in selected if spec["kind"] != "demo_guidance"]
        cuda_selected = [spec for spec in jobs(args.quick, "cuda") if not args.only or spec["label"] in labels] \
            if torch.cuda.is_available() else []
        results = []
        for spec in selected:
            results.append(run_job(spec, work, threads))
        demo_results = [r for r in results if r["kind"] == "demo_guidance"]
        results = [r for r in results if r["kind"] != "demo_guidance"]
        publish = not args.quick and not args.no_publish and out == (HERE / "results").resolve()
        for r in demo_results:
            write_demo(r, out, machine_info(threads), "python3 bench/run_bench.py"
                       + (" --quick" if args.quick else "") + (f" --only '{args.only}'" if args.only else ""),
                       args.quick, load0, os.getloadavg(), r["wall_s"], publish=publish)
        if args.only and not results and not cuda_selected:
            print(f"total {time.time() - t_start:.0f} s")
            return 0
        if args.only:
            earlier = json.loads((HERE / "bench.json").read_text())["jobs"]
            measured = {r["label"]: r for r in results}
            results = [measured.pop(r["label"], r) for r in earlier] + list(measured.values())
        gpu = {"available": torch.cuda.is_available()}
        if torch.cuda.is_available():
            gpu["name"] = torch.cuda.get_device_name(0)
            for spec in cuda_selected:
                results.append(run_job(spec, work, threads))
        else:
            gpu["note"] = ("No GPU was available to this run (torch.cuda.is_available() is False); the GPU rows "
                           "(full-width SD1.5 UNet at 64² latents) were not measured.")

        cpu_results = [r for r in results if r["workload"]["device"] == "cpu"]
        rows = report.table_rows(cpu_results)
        tgt = report.targets(cpu_results)
        total = time.time() - t_start
        summary = {
            "command": "python3 bench/run_bench.py" + (" --quick" if args.quick else "")
                       + (f" --only '{args.only}'" if args.only else ""),
            "quick": args.quick, "total_s": total, "machine": machine_info(threads),
            "torchdiffeq": torchdiffeq.__version__, "loadavg_start": load0, "loadavg_end": os.getloadavg(),
            "gpu": gpu, "targets": tgt, "budget_targets": report.budget_targets(cpu_results), "jobs": results,
        }
    (out / "bench.json").write_text(json.dumps(summary, indent=1))
    budget_rows = report.budget_rows(cpu_results)
    (out / "table.md").write_text(report.markdown_table(rows) + "\n\n" + report.targets_text(tgt) + "\n\n"
                                  + report.budget_markdown_table(budget_rows) + "\n\n"
                                  + report.targets_text(summary["budget_targets"]) + "\n\n"
                                  + report.batch_text(cpu_results) + "\n")
    title = (f"Adjoint Guidance gradients vs peers: ComfyUI SD1.5 UNet class, random weights, CFG 7, float32, "
             f"CPU ({summary['machine']['cpu'] or 'cpu'}, {threads} thread)")
    report.plot(results, str(out / "bench.png"), title)

    print()
    print(report.text_table(rows))
    print()
    print("† odeint rows: 'vs exact@N' is against the exact adjoint of DPM-Solver++(1), the sampler "
          "its Euler steps reproduce; the other rows are against exact (DPM-Solver++(2M)) at the same N.")
    print("kf = the two keyframe embeddings of the prompt schedule; x_T = the initial noise.")
    for r in results:
        if r["kind"] == "guidance":
            print(f"\nGuidance ({r['workload']['name']}, N = {r['N']}, {r['iterations']} Adam iterations on x_T):")
            t_eq = r["equal_time_s"]
            dg = r["diagnostics"]
            print(f"  at the start: cos(greedy, exact) = {dg['cos_greedy_vs_exact']:.3f}, cos(adjointdeis-1, exact) "
                  f"= {dg['cos_adjointdeis1_vs_exact']:.3f}; sampler Jacobian dx_0/dx_T along a random v: "
                  f"cos(Jv, v) = {dg['cos_Jv_v']:.3f}, |Jv|/|v| = {dg['norm_Jv_over_v']:.3f} "
                  f"(1 and 1 = the identity greedy assumes)")
            for name, c in r["curves"].items():
                print(f"  {name:14s} loss {c['loss'][0]:.3f} → {c['final_iterate_loss']:.3f} "
                      f"(best {c['best_loss']:.3f}) in {c['time_s'][-1]:.1f} s; "
                      f"loss at {t_eq:.1f} s: {c['loss_at_equal_time']:.3f}; network calls {c['net_counts']}")
    print()
    print(report.targets_text(tgt))
    if budget_rows:
        print()
        print("Memory budget (exact keeping k of N steps' graphs; ratios of the fastest call's CPU time):")
        print(report.budget_text_table(budget_rows))
        print()
        print(report.targets_text(summary["budget_targets"]))
    if report.batch_text(cpu_results):
        print()
        print(report.batch_text(cpu_results))
    print()
    print(f"GPU: {gpu.get('note') or gpu.get('name')}")
    load1 = summary["loadavg_end"]
    print(f"load average at start {load0[0]:.2f}, at end {load1[0]:.2f}")
    print(f"results: {out / 'bench.json'}, {out / 'bench.png'}, {out / 'table.md'}")
    if not args.quick and not args.no_publish and out == (HERE / "results").resolve():
        shutil.copyfile(out / "bench.json", HERE / "bench.json")
        shutil.copyfile(out / "bench.png", HERE / "bench.png")
        print(f"published: {HERE / 'bench.json'}, {HERE / 'bench.png'}")
    print(f"total {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
