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


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        c = _cells(r)
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
                r = {**by[(m, n)], "workload": res["workload"]["name"], "fastest_cpu_s": min(by[(m, n)]["cpu_s"])}
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
    lines = ["| " + " | ".join(BUDGET_HEADER) + " |", "|" + "---|" * len(BUDGET_HEADER)]
    for r in rows:
        c = _budget_cells(r)
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
