"""Turn the workers' results into the printed table, the targets and the PNG plot.

Pillow only (the host venv has it; matplotlib it has not).
"""
from __future__ import annotations

import math

METHOD_ORDER = ["exact", "adjointdeis-1", "adjointdeis-2m", "adjointdeis-1 M=N/2",
                "adjointdeis-2m M=N/2", "naive autograd", "checkpoint", "odeint_adjoint",
                "odeint_adjoint stored", "floor"]

COLORS = {
    "exact": (230, 57, 70), "adjointdeis-1": (69, 123, 157), "adjointdeis-2m": (29, 53, 87),
    "adjointdeis-1 M=N/2": (120, 170, 200), "adjointdeis-2m M=N/2": (90, 110, 160),
    "naive autograd": (244, 162, 97), "checkpoint": (42, 157, 143),
    "odeint_adjoint": (155, 93, 229), "odeint_adjoint stored": (200, 160, 240),
    "floor": (90, 90, 90), "greedy": (233, 196, 106),
}


def _fmt_err(e):
    if e is None:
        return "—"
    return f"{e['x']:.1e} / {e['kf']:.1e}"


def _fmt_num(v, spec):
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table_rows(results: list[dict]) -> list[dict]:
    """Flatten every table job's rows with their workload and ratios to the floor."""
    out = []
    for res in results:
        if res.get("kind") != "table":
            continue
        wl = res["workload"]
        floors = {r["N"]: r["median_s"] for r in res["rows"] if r["method"] == "floor"}
        rows = sorted(res["rows"], key=lambda r: (r["N"], METHOD_ORDER.index(r["method"])
                                                  if r["method"] in METHOD_ORDER else 99))
        for r in rows:
            f = floors.get(r["N"])
            out.append({**r, "width": wl["unet_config"]["model_channels"], "latent": wl["latent"],
                        "workload": wl["name"], "device": wl["device"],
                        "x_floor": r["median_s"] / f if f and r.get("median_s") else None})
    return out


HEADER = ["method", "N", "width", "latent", "time s", "×floor", "peak MB", "fwd", "fwd+grad", "VJP",
          "err vs exact@N (x_T / kf)", "err vs exact@200 (x_T / kf)"]


def _cells(r: dict) -> list[str]:
    c = r.get("net_counts") or {}
    if r.get("failed"):
        reps = "OOM" if "out of memory" in r["failed"] else "failed"
    else:
        reps = f"{r['median_s']:.3f}" + ("" if r.get("reps", 5) >= 5 else f" ({r['reps']}×)")
    same = _fmt_err(r.get("err_same_N"))
    if r.get("err_same_N_reference"):
        same += " †"
    return [r["method"], str(r["N"]), str(r["width"]), f"{r['latent']}²", reps,
            _fmt_num(r.get("x_floor"), ".2f"), _fmt_num(r.get("peak_mb"), ".1f"),
            str(c.get("forwards", "—")), str(c.get("forwards_with_grad", "—")), str(c.get("vjps", "—")),
            same, _fmt_err(r.get("err_cont"))]


def text_table(rows: list[dict]) -> str:
    cells = [HEADER] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = []
    prev = None
    for k, c in enumerate(cells):
        key = None if k == 0 else (rows[k - 1]["workload"], rows[k - 1]["N"])
        if k > 1 and key != prev:
            lines.append("")
        prev = key
        lines.append("  ".join(s.ljust(w) if i in (0, 10, 11) else s.rjust(w)
                               for i, (s, w) in enumerate(zip(c, widths))))
        if k == 0:
            lines.append("-" * len(lines[-1]))
    return "\n".join(lines)


def on_gpu(rows: list[dict]) -> bool:
    """Whether every row was timed on a GPU. Published tables quote absolute times only
    from a GPU; CPU rows are quoted as ratios measured side by side in the same run, and
    their seconds stay in the JSON and the console table."""
    return bool(rows) and all(str(r.get("device", "cpu")).startswith("cuda") for r in rows)


def _drop_columns(cells: list, columns: list) -> list:
    return [c for i, c in enumerate(cells) if i not in columns]


def markdown_table(rows: list[dict]) -> str:
    """The method table as Markdown: seconds only when measured on a GPU (see on_gpu)."""
    gpu = on_gpu(rows)
    time_col, ratio_col = HEADER.index("time s"), HEADER.index("×floor")
    header = HEADER if gpu else _drop_columns(HEADER, [time_col])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        c = _cells(r)
        if not gpu:   # what the time cell said besides seconds moves onto the ratio
            if r.get("failed"):
                c[ratio_col] = c[time_col]
            elif r.get("reps", 5) < 5:
                c[ratio_col] += f" ({r['reps']}×)"
            c = _drop_columns(c, [time_col])
        if r["method"] == "exact":
            c[0] = "**exact**"
        lines.append("| " + " | ".join(c) + " |")
    return "\n".join(lines)


# ----- targets ---------------------------------------------------------------------------------

def _interp_time_for_error(points, target):
    """points: [(N, time, err)] sorted by N. The time odeint needs to reach `target`:
    log-log interpolation of err(N) between measured N, or extrapolation past the largest N
    with the order fitted on the last two points. Returns (time, N*, how)."""
    pts = [(n, t, e) for n, t, e in points if e > 0]
    for (n0, t0, e0), (n1, t1, e1) in zip(pts, pts[1:]):
        if e0 >= target >= e1:
            if e0 == e1:
                return t0, n0, "measured"
            a = (math.log(target) - math.log(e0)) / (math.log(e1) - math.log(e0))
            n = math.exp(math.log(n0) + a * (math.log(n1) - math.log(n0)))
            t = t0 + (t1 - t0) * (n - n0) / (n1 - n0)
            return t, n, "interpolated"
    if pts and pts[0][2] <= target:
        return pts[0][1], pts[0][0], "measured (already at the smallest N)"
    if len(pts) >= 2:
        (n0, t0, e0), (n1, t1, e1) = pts[-2], pts[-1]
        order = -(math.log(e1) - math.log(e0)) / (math.log(n1) - math.log(n0))
        if order <= 0.05:
            return math.inf, math.inf, "never (error not decreasing)"
        n = n1 * (e1 / target) ** (1.0 / order)
        t = t1 * n / n1   # cost linear in N
        return t, n, f"extrapolated (fitted order {order:.2f})"
    return math.nan, math.nan, "no data"


def targets(results: list[dict]) -> dict:
    """The issue's targets on the main CPU workload (the first table job, all N)."""
    main = next(r for r in results if r.get("kind") == "table")
    rows = {(r["method"], r["N"]): r for r in main["rows"]}
    ns = sorted({n for (_, n) in rows})
    out = {"workload": main["workload"]["name"], "checks": []}

    def add(name, met, detail, numbers):
        out["checks"].append({"target": name, "met": bool(met), "detail": detail, "numbers": numbers})

    if len(ns) < 2:
        out["checks"].append({"target": "all targets", "met": False, "numbers": {},
                              "detail": "not evaluated: this run measured one N only (--quick)"})
        return out
    # memory flat in N
    n0, n1 = min(ns), max(ns)
    ex0, ex1 = rows[("exact", n0)]["peak_mb"], rows[("exact", n1)]["peak_mb"]
    nv0, nv1 = rows[("naive autograd", n0)]["peak_mb"], rows[("naive autograd", n1)]["peak_mb"]
    ratio = ex1 / ex0
    add("exact peak memory flat in N: peak(N=%d) ≤ 1.15 × peak(N=%d), naive grows" % (n1, n0),
        ratio <= 1.15 and nv1 > 1.5 * nv0,
        f"exact {ex0:.1f} → {ex1:.1f} MB (×{ratio:.2f}); naive autograd {nv0:.1f} → {nv1:.1f} MB (×{nv1 / nv0:.1f})",
        {"exact_mb": {n: rows[("exact", n)]["peak_mb"] for n in ns},
         "naive_mb": {n: rows[("naive autograd", n)]["peak_mb"] for n in ns}, "ratio": ratio})

    # time vs floor and checkpoint (medians; the ratio of the fastest calls as a noise check)
    def ratio(a, b, key):
        f = (lambda r: min(r["times_s"])) if key == "min" else (lambda r: r["median_s"])
        return {n: f(rows[(a, n)]) / f(rows[(b, n)]) for n in ns}
    for other, bound, label in (("floor", 1.15, "exact time ≤ 1.15 × floor"),
                                ("checkpoint", 1.05, "exact time ≤ 1.05 × per-step checkpointing")):
        med, mn = ratio("exact", other, "median"), ratio("exact", other, "min")
        add(label, all(v <= bound for v in med.values()),
            ", ".join(f"N={n}: ×{v:.2f}" for n, v in med.items())
            + " (fastest calls: " + ", ".join(f"×{v:.2f}" for v in mn.values()) + ")",
            {"median_ratio": med, "min_ratio": mn})

    # odeint_adjoint at equal accuracy (vs exact@200), per component
    od = [(n, rows[("odeint_adjoint", n)]["median_s"], rows[("odeint_adjoint", n)]["err_cont"]) for n in ns]
    speed = {}
    all_met = True
    parts = []
    if all(e is not None for _, _, e in od) and rows[("exact", ns[0])].get("err_cont"):
        for n in ns:
            ex = rows[("exact", n)]
            per = {}
            for comp in ("x", "kf"):
                t_need, n_need, how = _interp_time_for_error([(m, t, e[comp]) for m, t, e in od],
                                                             ex["err_cont"][comp])
                per[comp] = {"exact_err": ex["err_cont"][comp], "odeint_time_s": t_need,
                             "odeint_N": n_need, "how": how, "speedup": t_need / ex["median_s"]}
            worst = min(per["x"]["speedup"], per["kf"]["speedup"])
            all_met &= worst >= 2.0
            speed[n] = per
            parts.append(f"N={n}: ×{per['x']['speedup']:.1f} (x_T, {per['x']['how']}) / "
                         f"×{per['kf']['speedup']:.1f} (kf, {per['kf']['how']})")
        # also: same N, where odeint costs the same network calls
        same = {n: rows[("odeint_adjoint", n)]["median_s"] / rows[("exact", n)]["median_s"] for n in ns}
        add("exact ≥ 2 × faster than odeint_adjoint at equal or better accuracy", all_met,
            "; ".join(parts) + ". At equal N: odeint time / exact time = "
            + ", ".join(f"N={n}: ×{v:.2f}" for n, v in same.items()),
            {"equal_accuracy": speed, "equal_N_time_ratio": same})
    else:
        add("exact ≥ 2 × faster than odeint_adjoint at equal or better accuracy", False,
            "not measured (no exact@200 reference in this run)", {})

    # counted cost
    bad = []
    for n in ns:
        r = rows[("exact", n)]
        want = {"forwards": n, "forwards_with_grad": n, "vjps": n}
        if r.get("core_counts") != want or r.get("net_counts") != want:
            bad.append((n, r.get("core_counts"), r.get("net_counts")))
    add("counted cost of exact = N + N forwards, N VJPs", not bad,
        "core counts and network-level counts both equal (N, N, N) at every N" if not bad else f"mismatch: {bad}",
        {n: {"core": rows[("exact", n)].get("core_counts"), "net": rows[("exact", n)].get("net_counts")}
         for n in ns})
    return out


def targets_text(t: dict) -> str:
    lines = [f"Targets (workload {t['workload']}):"]
    for c in t["checks"]:
        lines.append(f"  [{'MET' if c['met'] else ('n/a' if c['target'] == 'all targets' else 'NOT MET')}] {c['target']}: {c['detail']}")
    return "\n".join(lines)


# ----- plot ----------------------------------------------------------------------------------------

class Panel:
    """A minimal line-plot panel drawn with Pillow (log or linear axes)."""

    def __init__(self, draw, font, box, title, xlabel, ylabel, xlog, ylog, xr, yr):
        self.d, self.font = draw, font
        self.x0, self.y0, self.x1, self.y1 = box[0] + 62, box[1] + 26, box[2] - 12, box[3] - 34
        self.xlog, self.ylog = xlog, ylog
        self.fx = self._axis(xr, xlog)
        self.fy = self._axis(yr, ylog)
        self.xr, self.yr = xr, yr
        draw.text((box[0] + 62, box[1] + 6), title, fill=(20, 20, 20), font=font)
        draw.rectangle([self.x0, self.y0, self.x1, self.y1], outline=(120, 120, 120))
        draw.text(((self.x0 + self.x1) // 2 - 3 * len(xlabel), self.y1 + 18), xlabel, fill=(40, 40, 40), font=font)
        draw.text((box[0] + 2, box[1] + 6), ylabel, fill=(40, 40, 40), font=font)
        self._ticks()

    @staticmethod
    def _axis(r, log):
        lo, hi = r
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi == lo:
            hi = lo + 1
        return (lambda v: ((math.log10(v) if log else v) - lo) / (hi - lo))

    def xy(self, x, y):
        return (self.x0 + (self.x1 - self.x0) * self.fx(x), self.y1 - (self.y1 - self.y0) * self.fy(y))

    def _tick_values(self, r, log):
        lo, hi = r
        if log:
            vals = []
            for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
                for m in (1, 2, 5):
                    v = m * 10.0 ** e
                    if lo <= v <= hi:
                        vals.append(v)
            return vals
        step = 10 ** math.floor(math.log10((hi - lo) / 4 or 1))
        for m in (1, 2, 5, 10):
            if (hi - lo) / (m * step) <= 6:
                step *= m
                break
        v = math.ceil(lo / step) * step
        vals = []
        while v <= hi + 1e-12:
            vals.append(v)
            v += step
        return vals

    def _ticks(self):
        for v in self._tick_values(self.xr, self.xlog):
            x, _ = self.xy(v, self.yr[0])
            self.d.line([x, self.y1, x, self.y1 + 4], fill=(120, 120, 120))
            self.d.line([x, self.y0, x, self.y1], fill=(235, 235, 235))
            self.d.text((x - 10, self.y1 + 5), f"{v:g}", fill=(80, 80, 80), font=self.font)
        for v in self._tick_values(self.yr, self.ylog):
            _, y = self.xy(self.xr[0], v)
            self.d.line([self.x0 - 4, y, self.x0, y], fill=(120, 120, 120))
            self.d.line([self.x0, y, self.x1, y], fill=(235, 235, 235))
            self.d.text((self.x0 - 44, y - 6), f"{v:g}", fill=(80, 80, 80), font=self.font)
        self.d.rectangle([self.x0, self.y0, self.x1, self.y1], outline=(120, 120, 120))

    def line(self, pts, color, dashed=False, marker=True, width=2):
        pts = [self.xy(x, y) for x, y in pts if x is not None and y is not None and
               (not self.xlog or x > 0) and (not self.ylog or y > 0)]
        if len(pts) > 1:
            if dashed:
                for a, b in zip(pts, pts[1:]):
                    for k in range(0, 10, 2):
                        p = (a[0] + (b[0] - a[0]) * k / 10, a[1] + (b[1] - a[1]) * k / 10)
                        q = (a[0] + (b[0] - a[0]) * (k + 1) / 10, a[1] + (b[1] - a[1]) * (k + 1) / 10)
                        self.d.line([p, q], fill=color, width=width)
            else:
                self.d.line(pts, fill=color, width=width)
        if marker:
            for x, y in pts:
                self.d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)

    def legend(self, names, corner="tl"):
        x = self.x0 + 8 if corner[1] == "l" else self.x1 - 150
        y = self.y0 + 6 if corner[0] == "t" else self.y1 - 14 * len(names) - 6
        for n in names:
            self.d.line([x, y + 6, x + 16, y + 6], fill=COLORS.get(n, (0, 0, 0)), width=3)
            self.d.text((x + 20, y), n, fill=(30, 30, 30), font=self.font)
            y += 14


def _range(vals, log, pad=0.08):
    vals = [v for v in vals if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if not vals:
        return (1, 10) if log else (0, 1)
    lo, hi = min(vals), max(vals)
    if log:
        f = (hi / lo) ** pad if hi > lo else 2.0
        return lo / f, hi * f
    span = (hi - lo) or abs(hi) or 1.0
    return lo - pad * span, hi + pad * span


def plot(results: list[dict], path: str, title: str):
    from PIL import Image, ImageDraw, ImageFont
    W, H = 1200, 860
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:       # Pillow < 10.1
        font = ImageFont.load_default()
    d.text((16, 8), title, fill=(0, 0, 0), font=font)
    main = next(r for r in results if r.get("kind") == "table")
    rows = main["rows"]
    ns = sorted({r["N"] for r in rows})
    meths = [m for m in METHOD_ORDER if any(r["method"] == m for r in rows)]
    by = {(r["method"], r["N"]): r for r in rows}
    wl = main["workload"]
    tag = f"width {wl['unet_config']['model_channels']}, {wl['latent']}x{wl['latent']} latent, CPU"

    # (a) time per gradient vs N
    times = [r["median_s"] for r in rows]
    pa = Panel(d, font, (0, 24, W // 2, H // 2 + 12), f"(a) time per gradient vs N ({tag})",
               "sampling steps N", "s", True, True, _range(ns, True, 0.05), _range(times, True))
    for m in meths:
        pa.line([(n, by[(m, n)]["median_s"]) for n in ns if (m, n) in by], COLORS[m], dashed=(m == "floor"))
    pa.legend([m for m in meths if m != "odeint_adjoint stored"], "tl")

    # (b) peak memory vs N
    mems = [r["peak_mb"] for r in rows if r.get("peak_mb") is not None]
    pb = Panel(d, font, (W // 2, 24, W, H // 2 + 12), f"(b) peak memory above the model vs N ({tag})",
               "sampling steps N", "MB", True, True, _range(ns, True, 0.05), _range(mems, True))
    for m in meths:
        pb.line([(n, by[(m, n)].get("peak_mb")) for n in ns if (m, n) in by], COLORS[m], dashed=(m == "floor"))
    pb.legend(["naive autograd", "odeint_adjoint", "checkpoint", "exact", "floor"], "tl")

    # (c) accuracy vs time
    pts = [(r["median_s"], r["err_cont"]["x"]) for r in rows if r.get("err_cont")]
    if pts:
        pc = Panel(d, font, (0, H // 2 + 12, W // 2, H), "(c) error of dL/dx_T vs exact@200 against time (N = "
                   + ", ".join(map(str, ns)) + ")", "time per gradient (s)", "rel. err", True, True,
                   _range([p[0] for p in pts], True), _range([p[1] for p in pts], True))
        for m in meths:
            if m == "floor":
                continue
            pc.line([(by[(m, n)]["median_s"], by[(m, n)]["err_cont"]["x"]) for n in ns
                     if (m, n) in by and by[(m, n)].get("err_cont")], COLORS[m])
        pc.legend([m for m in ["exact", "naive autograd", "checkpoint", "adjointdeis-1", "adjointdeis-2m",
                               "adjointdeis-1 M=N/2", "adjointdeis-2m M=N/2", "odeint_adjoint"] if m in meths], "bl")

    # (d) guidance
    g = next((r for r in results if r.get("kind") == "guidance"), None)
    if g:
        curves = g["curves"]
        ts = [t for c in curves.values() for t in c["time_s"]]
        ls = [v for c in curves.values() for v in c["loss"] + [c["final_iterate_loss"]]]
        pd = Panel(d, font, (W // 2, H // 2 + 12, W, H),
                   f"(d) guidance: loss vs wall time, {g['iterations']} Adam iterations, N = {g['N']}",
                   "wall time (s)", "loss", False, min(ls) > 0 and max(ls) / max(min(ls), 1e-30) > 20,
                   (0, max(ts) * 1.04), _range(ls, min(ls) > 0 and max(ls) / max(min(ls), 1e-30) > 20))
        for name, c in curves.items():
            pd.line(list(zip(c["time_s"], c["loss"])), COLORS.get(name, (0, 0, 0)), marker=True, width=2)
        pd.legend(list(curves), "tr")
    img.save(path)


# ----- the memory budget and the batch rows ---------------------------------------------------

BUDGET_ORDER = ["plain pass", "floor", "naive autograd", "exact budget 0", "exact budget N/4", "exact budget N/2",
                "exact budget N"]
BUDGET_HEADER = ["row", "N", "budget MB", "graphs kept", "CPU s", "median CPU s", "×floor", "×naive",
                 "×plain pass", "peak MB", "fwd", "fwd+grad", "VJP", "err vs budget 0 (x_T / kf)"]


def budget_rows(results: list[dict]) -> list[dict]:
    """The budget jobs' rows with their ratios. Time is CPU time (the process's own: one
    thread, so it does not count the waits for a core on this shared machine) of the
    fastest call of each row, the least disturbed by the other processes; the medians'
    ratios are kept as x_*_median."""
    out = []
    for res in results:
        if res.get("kind") != "budget":
            continue
        by = {(r["method"], r["N"]): r for r in res["rows"]}
        for n in sorted({r["N"] for r in res["rows"]}):
            peak0 = by[("exact budget 0", n)]["peak_mb"]
            for m in BUDGET_ORDER:
                r = {**by[(m, n)], "workload": res["workload"]["name"], "device": res["workload"]["device"],
                     "fastest_cpu_s": min(by[(m, n)]["cpu_s"])}
                for key, unit in (("x_floor", "floor"), ("x_naive", "naive autograd"), ("x_plain", "plain pass")):
                    r[key] = r["fastest_cpu_s"] / min(by[(unit, n)]["cpu_s"])
                    r[key + "_median"] = r["median_cpu_s"] / by[(unit, n)]["median_cpu_s"]
                r["peak_bound_mb"] = None if r.get("budget_mb") is None else r["budget_mb"] + peak0
                out.append(r)
    return out


def _budget_cells(r: dict) -> list[str]:
    c = r.get("net_counts") or {}
    return [r["method"], str(r["N"]), _fmt_num(r.get("budget_mb"), ".1f"),
            "—" if r.get("kept_steps") is None else str(r["kept_steps"]),
            f"{r['fastest_cpu_s']:.3f}" + ("" if r.get("reps", 5) >= 5 else f" ({r['reps']}×)"),
            f"{r['median_cpu_s']:.3f}", _fmt_num(r["x_floor"], ".2f"), _fmt_num(r["x_naive"], ".2f"),
            _fmt_num(r["x_plain"], ".2f"), _fmt_num(r.get("peak_mb"), ".1f"),
            str(c.get("forwards", "—")), str(c.get("forwards_with_grad", "—")), str(c.get("vjps", "—")),
            _fmt_err(r.get("err_vs_budget_0"))]


def budget_text_table(rows: list[dict]) -> str:
    cells = [BUDGET_HEADER] + [_budget_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(BUDGET_HEADER))]
    lines = []
    for k, c in enumerate(cells):
        if k > 1 and rows[k - 1]["N"] != rows[k - 2]["N"]:
            lines.append("")
        lines.append("  ".join(s.ljust(w) if i in (0, 13) else s.rjust(w) for i, (s, w) in enumerate(zip(c, widths))))
        if k == 0:
            lines.append("-" * len(lines[-1]))
    return "\n".join(lines)


def budget_markdown_table(rows: list[dict]) -> str:
    """The budget table as Markdown: CPU seconds left out off a GPU (see on_gpu); the
    ratios of the median calls come beside those of the fastest."""
    gpu = on_gpu(rows)
    time_cols = [BUDGET_HEADER.index("CPU s"), BUDGET_HEADER.index("median CPU s")]
    header = BUDGET_HEADER if gpu else [h + " fastest (median)" if h.startswith("×") else h
                                        for h in _drop_columns(BUDGET_HEADER, time_cols)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        c = _budget_cells(r)
        if not gpu:
            for key, col in (("x_floor", "×floor"), ("x_naive", "×naive"), ("x_plain", "×plain pass")):
                i = BUDGET_HEADER.index(col)
                c[i] = f"{c[i]} ({_fmt_num(r.get(key + '_median'), '.2f')})"
            c = _drop_columns(c, time_cols)
        if r["method"].startswith("exact"):
            c[0] = f"**{c[0]}**"
        lines.append("| " + " | ".join(c) + " |")
    return "\n".join(lines)


def budget_targets(results: list[dict]) -> dict:
    """The issue's targets for the memory budget, on the budget job's rows."""
    rows = budget_rows(results)
    out = {"workload": rows[0]["workload"] if rows else "—", "checks": []}
    if not rows:
        return out
    by = {(r["method"], r["N"]): r for r in rows}
    ns = sorted({r["N"] for r in rows})

    def add(name, met, detail, numbers):
        out["checks"].append({"target": name, "met": bool(met), "detail": detail, "numbers": numbers})

    full = {n: by[("exact budget N", n)]["x_naive"] for n in ns}
    add("full budget (every step's graph kept) ≤ 1.05 × naive autograd's time", all(v <= 1.05 for v in full.values()),
        ", ".join(f"N={n}: ×{v:.3f}" for n, v in full.items()) + " (medians: " + ", ".join(
            f"×{by[('exact budget N', n)]['x_naive_median']:.3f}" for n in ns) + ")",
        {"fastest": full, "median": {n: by[("exact budget N", n)]["x_naive_median"] for n in ns}})
    budgeted = [r for r in rows if r.get("peak_bound_mb") is not None and r["method"] != "exact budget 0"]
    add("each budget's peak ≤ the budget + the budget-0 peak", all(r["peak_mb"] <= r["peak_bound_mb"] for r in budgeted),
        ", ".join(f"N={r['N']} {r['method'].split()[-1]}: {r['peak_mb']:.1f} ≤ {r['peak_bound_mb']:.1f} MB"
                  for r in budgeted),
        {f"{r['method']} N={r['N']}": [r["peak_mb"], r["peak_bound_mb"]] for r in budgeted})
    errs = [max(r["err_vs_budget_0"]["x"], r["err_vs_budget_0"]["kf"]) for r in rows
            if r["method"].startswith("exact") and r.get("err_vs_budget_0")]
    add("gradients identical to budget 0 to round-off (≤ 1e-6 relative, float32)", max(errs) <= 1e-6,
        f"largest relative difference {max(errs):.1e}", {"max_rel_err": max(errs)})
    limits = {"exact budget N": 3.0, "exact budget 0": 4.0}
    parts, met = [], True
    for m, limit in limits.items():
        for n in ns:
            v = by[(m, n)]["x_plain"]
            met &= v <= 1.1 * limit
            parts.append(f"budget {m.split()[-1]} N={n}: {v:.2f} plain passes (median {by[(m, n)]['x_plain_median']:.2f}; "
                         f"limit {limit:.0f})")
    add("iteration time within 1.1 × its limit: ~3 plain passes with every graph kept, ~4 with memory flat in N",
        met, ", ".join(parts), {f"{m} N={n}": by[(m, n)]["x_plain"] for m in limits for n in ns})
    bad = []
    for r in rows:
        if not r["method"].startswith("exact"):
            continue
        k, n = r["kept_steps"], r["N"]
        want = {"forwards": n - k, "forwards_with_grad": n, "vjps": n}
        if r.get("core_counts") != want or r.get("net_counts") != want:
            bad.append((r["method"], n, r.get("core_counts"), r.get("net_counts")))
    add("counted cost with k graphs kept = (N − k) plain forwards, N forwards with grad, N VJPs", not bad,
        "core and network-level counts agree at every budget and N" if not bad else f"mismatch: {bad}", {})
    return out


def batch_text(results: list[dict]) -> str:
    res = next((r for r in results if r.get("kind") == "batch"), None)
    if res is None:
        return ""
    a, b = res["rows"]
    fastest = min(a["cpu_s"]) / min(b["cpu_s"])
    return (f"{a['run']} vs {b['run']} (per_sample=True, N = {res['N']}, {res['iterations']} iterations, the same "
            f"total work): time ratio {fastest:.2f} (CPU time of the fastest of {len(a['cpu_s'])} calls each: "
            f"{min(a['cpu_s']):.2f} s vs {min(b['cpu_s']):.2f} s; medians: CPU {res['cpu_time_ratio']:.2f}, wall "
            f"{res['time_ratio']:.2f}); peak {a['peak_mb']:.1f} vs {b['peak_mb']:.1f} MB; losses agree to "
            f"{res['max_rel_loss_difference']:.1e}")


# ----- the demo-guidance job (bench/demo_guidance.py): loss against wall time on the demo model --------

DEMO_ORDER = ["exact", "adjointdeis-1", "adjointdeis-2m", "greedy"]


def quantile(values: list, q: float) -> float:
    """The q-quantile of values (linear interpolation between order statistics, as numpy's
    default); inf values sort last. NaN for an empty list."""
    v = sorted(values)
    if not v:
        return math.nan
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    if lo == hi or v[lo] == v[hi]:
        return v[lo]
    if math.isinf(v[hi]):
        return math.inf
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def median(values: list) -> float:
    return quantile(values, 0.5)


def best_so_far(times: list, rel: list, t: float) -> float:
    """The best relative loss known at wall time t: the minimum over the iterates whose loss
    was known by then, 1 (the start) before the first."""
    return min([1.0] + [r for tk, r in zip(times, rel) if tk <= t])


def time_to_reach(times: list, rel: list, level: float) -> float:
    """The wall time at which an iterate with relative loss ≤ level was first known; inf if never."""
    return next((tk for tk, r in zip(times, rel) if r <= level), math.inf)


CLOCKS = {"time_s": "wall time", "cpu_time_s": "CPU time of the worker"}


def demo_summary(res: dict, levels=(0.75, 0.5, 0.25), fractions=(0.25, 0.5, 1.0), clock: str = "time_s") -> dict:
    """Medians over seeds of the demo-guidance runs, per method, on `clock`: "time_s" (wall
    time) or "cpu_time_s" (the worker's CPU time: one thread, so equal to the wall time on
    an idle core and unaffected by other processes sharing it).

    Losses are relative to the seed's start loss (iterate 0, the same noise for every
    method). rel_at: the best relative loss known at the wall-time points `fractions` × T,
    T = the shortest of the methods' median run times (every method still running there).
    time_to: the median over seeds of the time to reach level × the start loss (inf when
    a seed never does; so the median is inf when more than half never do); ratio_vs_exact:
    that median divided by exact's (NaN unless both are finite); also the median of the
    per-seed ratios over the seeds where both reach it.
    """
    runs, seeds = res["runs"], [str(s) for s in res["seeds"]]
    names = [m for m in DEMO_ORDER if m in runs] + [m for m in runs if m not in DEMO_ORDER]
    start = {s: runs[names[0]][s]["loss"][0] for s in seeds}
    start_spread = max(abs(runs[m][s]["loss"][0] - start[s]) / abs(start[s]) for m in names for s in seeds)
    rel = {m: {s: [v / start[s] for v in runs[m][s]["loss"]] for s in seeds} for m in names}
    ends = {m: median([runs[m][s][clock][-1] for s in seeds]) for m in names}
    horizon = min(ends.values())
    points = [round(f * horizon, 1) for f in fractions]
    k = res["iterations"]
    out = {"clock": clock, "clock_name": CLOCKS[clock], "levels": list(levels), "time_points_s": points, "horizon_s": horizon, "start_loss": start,
           "start_loss_spread": start_spread, "methods": {}}
    diag = res.get("diagnostics") or {}
    for m in names:
        r = {s: runs[m][s] for s in seeds}
        times = {s: r[s][clock] for s in seeds}
        best = {s: min(rel[m][s] + [r[s]["final_iterate_loss"] / start[s]]) for s in seeds}
        counts = r[seeds[0]]["net_counts"]
        row = {
            "s_per_iteration": median([times[s][-1] / len(times[s]) for s in seeds]),
            "cpu_s_per_run": median([r[s]["cpu_s"] for s in seeds]),
            "run_s": ends[m],
            "peak_mb": median([r[s]["peak_mb"] for s in seeds]),
            "peak_mb_range": [min(r[s]["peak_mb"] for s in seeds), max(r[s]["peak_mb"] for s in seeds)],
            "net_counts_per_run": counts,
            "best_rel": median(list(best.values())),
            "best_rel_iqr": [quantile(list(best.values()), 0.25), quantile(list(best.values()), 0.75)],
            "rel_at": [median([best_so_far(times[s], rel[m][s], t) for s in seeds]) for t in points],
            "rel_at_iqr": [[quantile([best_so_far(times[s], rel[m][s], t) for s in seeds], q) for q in (0.25, 0.75)]
                           for t in points],
            "time_to": {}, "reached": {}, "ratio_vs_exact": {},
        }
        if m != "exact":
            key = f"cos_{m}_vs_exact"
            vals = [d[key] for d in diag.values() if key in d]
            row["cos_vs_exact"] = median(vals) if vals else None
            row["cos_vs_exact_range"] = [min(vals), max(vals)] if vals else None
        for lv in levels:
            per_seed = {s: time_to_reach(times[s], rel[m][s], lv) for s in seeds}
            row["time_to"][str(lv)] = median(list(per_seed.values()))
            row["reached"][str(lv)] = sum(math.isfinite(v) for v in per_seed.values())
            row.setdefault("time_to_per_seed", {})[str(lv)] = per_seed
        out["methods"][m] = row
    if "exact" in out["methods"]:
        ex = out["methods"]["exact"]
        # the machine-independent clock: one exact iteration's time on the same machine, same run
        out["exact_iteration_s"] = unit = ex["s_per_iteration"]
        out["time_points_exact_iterations"] = [t / unit for t in points]
        for m, row in out["methods"].items():
            row["s_per_iteration_vs_exact"] = row["s_per_iteration"] / unit
            row["time_to_exact_iterations"] = {lv: t / unit for lv, t in row["time_to"].items()}
            for lv in levels:
                a, b = row["time_to"][str(lv)], ex["time_to"][str(lv)]
                # the ratio of the median times; NaN unless both reach the level in the median seed
                row["ratio_vs_exact"][str(lv)] = a / b if math.isfinite(a) and math.isfinite(b) else math.nan
                per_seed = [row["time_to_per_seed"][str(lv)][s] / ex["time_to_per_seed"][str(lv)][s] for s in seeds
                            if math.isfinite(row["time_to_per_seed"][str(lv)][s])
                            and math.isfinite(ex["time_to_per_seed"][str(lv)][s])]
                row.setdefault("ratio_vs_exact_seeds_both_reach", {})[str(lv)] = {
                    "median": median(per_seed) if per_seed else math.nan, "seeds": len(per_seed)}
    for lv in levels:
        ranked = sorted(((row["time_to"][str(lv)], m) for m, row in out["methods"].items()))
        out.setdefault("first_to", {})[str(lv)] = ranked[0][1] if math.isfinite(ranked[0][0]) else None
    diag_vals = list(diag.values())
    if diag_vals:
        out["jacobian"] = {"cos_Jv_v": median([d["cos_Jv_v"] for d in diag_vals]),
                           "norm_Jv_over_v": median([d["norm_Jv_over_v"] for d in diag_vals])}
    return out


def _fmt_t(v: float) -> str:
    return "not reached" if not math.isfinite(v) else f"{v:.1f}"


def _fmt_ratio(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return "∞" if math.isinf(v) else f"{v:.2f}"


def demo_markdown(res: dict, summ: dict) -> str:
    """The median table of the demo-guidance job, Markdown. Times in seconds on a GPU; off
    one (see on_gpu), in units of one exact iteration's time measured in the same run."""
    gpu = on_gpu([res.get("workload", {})]) or "exact_iteration_s" not in summ   # no exact run: no unit
    n_seeds = len(res["seeds"])
    if gpu:
        pts, unit, per_it = summ["time_points_s"], "s", f"{summ['clock_name']} s / iteration"
    else:
        pts, unit, per_it = summ["time_points_exact_iterations"], "exact it.", "time / iteration × exact"
    head = (["method", per_it, "peak MB", "fwd / fwd+grad / VJP per run", "cos with exact at x_T"]
            + [f"L/L₀ at {t:g} {unit}" if gpu else f"L/L₀ at {t:.1f} {unit}" for t in pts] + [f"best of {res['iterations']} it. + final"]
            + [f"time to {lv:g}·L₀, {unit} (seeds)" for lv in summ["levels"]]
            + [f"× exact ({lv:g}·L₀)" for lv in summ["levels"]])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, r in summ["methods"].items():
        c = r["net_counts_per_run"]
        cells = [f"**{m}**" if m == "exact" else m,
                 f"{r['s_per_iteration']:.2f}" if gpu else f"{r['s_per_iteration_vs_exact']:.2f}", f"{r['peak_mb']:.1f}",
                 f"{c['forwards']} / {c['forwards_with_grad']} / {c['vjps']}",
                 "1" if m == "exact" else (f"{r['cos_vs_exact']:.2f}" if r.get("cos_vs_exact") is not None else "—")]
        cells += [f"{v:.3f}" for v in r["rel_at"]] + [f"{r['best_rel']:.3f}"]
        times = r["time_to"] if gpu else r["time_to_exact_iterations"]
        cells += [f"{_fmt_t(times[str(lv)])} ({r['reached'][str(lv)]}/{n_seeds})" for lv in summ["levels"]]
        cells += [_fmt_ratio(r["ratio_vs_exact"][str(lv)]) for lv in summ["levels"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def demo_text(res: dict, summ: dict) -> str:
    """What the table says, in sentences (printed by run_bench and for the README)."""
    wl = res["workload"]
    out = [f"Demo guidance ({wl['loss']}; caption '{wl['caption']}', CFG {wl['cfg']:g}, N = {res['N']}, "
           f"{res['iterations']} Adam iterations at lr {res['lr']:g}, seeds {', '.join(map(str, res['seeds']))}; "
           f"losses relative to each seed's start loss L₀, times on the {summ['clock_name']}, medians over seeds):"]
    jac = summ.get("jacobian")
    if jac:
        out.append(f"  sampler Jacobian dx_0/dx_T along a random v: cos(Jv, v) = {jac['cos_Jv_v']:.3f}, "
                   f"|Jv|/|v| = {jac['norm_Jv_over_v']:.3f} (the identity greedy assumes: 1 and 1)")
    ms = summ["methods"]
    ex = ms.get("exact")
    out.append("  best L/L₀ of the run (median [IQR]): " + ", ".join(
        f"{m} {o['best_rel']:.3f} [{o['best_rel_iqr'][0]:.3f}, {o['best_rel_iqr'][1]:.3f}]" for m, o in ms.items())
        + f"; at {summ['time_points_s'][-1]:g} s: " + ", ".join(f"{m} {o['rel_at'][-1]:.3f}" for m, o in ms.items()))
    out.append("  s / iteration and peak MB above the model (median): " + ", ".join(
        f"{m} {o['s_per_iteration']:.2f} s, {o['peak_mb']:.1f} MB" for m, o in ms.items()))
    for lv in summ["levels"]:
        first = summ["first_to"][str(lv)]
        if first is None:
            out.append(f"  {lv:g}·L₀: no method reached it in the median seed")
            continue
        r = ms[first]
        others = [f"{m} " + (f"{o['time_to'][str(lv)]:.1f} s" if math.isfinite(o['time_to'][str(lv)]) else
                             f"not reached ({o['reached'][str(lv)]}/{len(res['seeds'])} seeds)")
                  for m, o in ms.items() if m != first]
        in_units = (f" = {r['time_to_exact_iterations'][str(lv)]:.1f} exact iterations"
                    if "time_to_exact_iterations" in r else "")
        out.append(f"  {lv:g}·L₀ first: {first} in {r['time_to'][str(lv)]:.1f} s{in_units} (median; {r['reached'][str(lv)]}/"
                   f"{len(res['seeds'])} seeds reach it) at {r['peak_mb']:.1f} MB peak; " + ", ".join(others)
                   + (f"; time vs exact (ratio of the medians): " + ", ".join(
                       f"{m} {_fmt_ratio(o['ratio_vs_exact'][str(lv)])}" for m, o in ms.items() if m != "exact")
                      if ex else ""))
    lc = res.get("loop_check")
    if lc:
        out.append(f"  loop check: greedy's hand-written loop with the exact gradient reproduces adjoint.optimize's "
                   f"losses to {lc['max_rel_difference']:.1e} ({lc['iterations']} iterations)")
    return "\n".join(out)


def _demo_grid_curves(res: dict, summ: dict, points: int = 160):
    """Per method: (t, median, q25, q75) of the best relative loss known at t, on a grid up to
    the method's median run time."""
    runs, seeds = res["runs"], [str(s) for s in res["seeds"]]
    out = {}
    for m, row in summ["methods"].items():
        end = row["run_s"]
        curve = []
        for i in range(points + 1):
            t = end * i / points
            vals = [best_so_far(runs[m][s][summ["clock"]], [v / summ["start_loss"][s] for v in runs[m][s]["loss"]], t)
                    for s in seeds]
            curve.append((t, median(vals), quantile(vals, 0.25), quantile(vals, 0.75)))
        out[m] = curve
    return out


def demo_plot(res: dict, summ: dict, path: str, title: str):
    """(a) median best relative loss vs wall time, IQR shaded; (b) the same vs iteration."""
    from PIL import Image, ImageDraw, ImageFont
    W, H = 1200, 500
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img, "RGBA")
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:       # Pillow < 10.1
        font = ImageFont.load_default()
    d.text((16, 8), title, fill=(0, 0, 0), font=font)
    curves = _demo_grid_curves(res, summ)
    vals = [v for c in curves.values() for p in c for v in p[1:]]
    yr = (max(0.0, min(vals) - 0.05), 1.02)
    tmax = max(c[-1][0] for c in curves.values())
    lvl = 0.5 if 0.5 in summ["levels"] else summ["levels"][0]
    pa = Panel(d, font, (0, 24, W // 2, H), f"(a) best loss / L0 vs {summ['clock_name']} (median of "
               f"{len(res['seeds'])} seeds, IQR shaded)", f"{summ['clock_name']} (s)", "L/L0", False, False,
               (0, tmax * 1.02), yr)
    for m, c in curves.items():
        col = COLORS.get(m, (0, 0, 0))
        poly = [pa.xy(t, q75) for t, _, _, q75 in c] + [pa.xy(t, q25) for t, _, q25, _ in reversed(c)]
        d.polygon(poly, fill=col + (45,))
    for m, c in curves.items():
        pa.line([(t, med) for t, med, _, _ in c], COLORS.get(m, (0, 0, 0)), marker=False, width=3)
    if yr[0] < lvl < yr[1]:
        pa.line([(0, lvl), (tmax * 1.02, lvl)], (120, 120, 120), dashed=True, marker=False, width=1)
    pa.legend(list(curves), "tr")

    runs, seeds = res["runs"], [str(s) for s in res["seeds"]]
    k = res["iterations"]
    pb = Panel(d, font, (W // 2, 24, W, H), f"(b) the same vs Adam iteration (N = {res['N']} steps, lr {res['lr']:g})",
               "iteration", "L/L0", False, False, (0, k - 1 + 0.5), yr)
    for m in summ["methods"]:
        pts = []
        for it in range(k):
            vs = [min(v / summ["start_loss"][s] for v in runs[m][s]["loss"][:it + 1]) for s in seeds]
            pts.append((it, median(vs)))
        pb.line(pts, COLORS.get(m, (0, 0, 0)), marker=True, width=2)
    if yr[0] < lvl < yr[1]:
        pb.line([(0, lvl), (k - 0.5, lvl)], (120, 120, 120), dashed=True, marker=False, width=1)
    pb.legend(list(summ["methods"]), "tr")
    img.save(path)
