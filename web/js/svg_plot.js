// A small SVG line plot: series over iterations 0 … xMax on a left axis (log scale when the
// values span more than a factor of 20) and an optional right axis with its own scale;
// non-finite values leave gaps. Colours come from the style sheet (classes).
import { el } from "./node_helpers.js";

const MARGIN = { left: 48, right: 8, rightAxis: 48, top: 8, bottom: 18 };

// A short axis label: 3 significant digits, exponent form for very large or small values.
export function axisNumber(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e4 || a < 1e-2)) return v.toExponential(1);
  return String(Number(v.toPrecision(3)));
}

function finiteValues(series) {
  return series.flatMap((s) => s.values).filter((v) => v != null && Number.isFinite(v));
}

// value → [0, 1] on an axis spanning the values (log when they span > 20× and are positive).
export function makeScale(values) {
  if (!values.length) return null;
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  const log = lo > 0 && hi / lo > 20;
  if (hi === lo) {
    const pad = Math.abs(lo) * 0.5 || 0.5;
    [lo, hi] = log ? [lo / 2, hi * 2] : [lo - pad, hi + pad];
  }
  const f = log ? Math.log10 : (v) => v;
  const [flo, fhi] = [f(lo), f(hi)];
  return { lo, hi, log, at: (v) => (f(v) - flo) / (fhi - flo) };
}

function ticks(scale) {
  if (scale.log) {
    const out = [];
    for (let e = Math.ceil(Math.log10(scale.lo)); e <= Math.floor(Math.log10(scale.hi)); e++) out.push(10 ** e);
    if (out.length >= 2) return out;
  }
  return [0, 1 / 3, 2 / 3, 1].map((t) => scale.lo + t * (scale.hi - scale.lo));
}

function pathData(values, x, y) {
  let d = "";
  let pen = false;
  values.forEach((v, i) => {
    if (v == null || !Number.isFinite(v)) {
      pen = false;
      return;
    }
    d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
    pen = true;
  });
  return d;
}

function axisLabels(g, scale, y, xText, anchor) {
  for (const t of ticks(scale)) {
    g.appendChild(el("text", { cls: "ag-axis-label", attrs: { x: xText, y: y(t) + 3, "text-anchor": anchor },
      text: axisNumber(t) }));
  }
}

// Draw into `svg` (cleared): {width, height, xMax, series: [{values, cls, axis: "left"|"right",
// label}], markers: [{x, value, cls, title}]} (markers on the left axis).
export function drawPlot(svg, { width, height, xMax, series, markers = [] }) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const left = series.filter((s) => s.axis !== "right");
  const right = series.filter((s) => s.axis === "right");
  const x0 = MARGIN.left;
  const x1 = width - (right.length ? MARGIN.rightAxis : MARGIN.right);
  const y0 = MARGIN.top;
  const y1 = height - MARGIN.bottom;
  if (x1 - x0 < 20 || y1 - y0 < 20) return;
  const x = (i) => x0 + ((x1 - x0) * i) / Math.max(xMax, 1);
  svg.appendChild(el("rect", { cls: "ag-plot-frame", attrs: { x: x0, y: y0, width: x1 - x0, height: y1 - y0 } }));
  svg.appendChild(el("text", { cls: "ag-axis-label", attrs: { x: x0, y: height - 4 }, text: "0" }));
  svg.appendChild(el("text", { cls: "ag-axis-label", attrs: { x: x1, y: height - 4, "text-anchor": "end" },
    text: `iteration ${xMax}` }));
  const groups = [[left, (scale) => (v) => y1 - (y1 - y0) * scale.at(v), x0 - 4, "end"],
    [right, (scale) => (v) => y1 - (y1 - y0) * scale.at(v), x1 + 4, "start"]];
  for (const [group, yOf, labelX, anchor] of groups) {
    const scale = makeScale(finiteValues(group));
    if (!scale) continue;
    const y = yOf(scale);
    axisLabels(svg, scale, y, labelX, anchor);
    for (const s of group) {
      const path = el("path", { cls: `ag-series ${s.cls}`, attrs: { d: pathData(s.values, x, y) } });
      if (s.label) path.appendChild(el("title", { text: s.label }));
      svg.appendChild(path);
    }
    if (group === left) {
      for (const m of markers) {
        if (m.value == null || !Number.isFinite(m.value)) continue;
        const dot = el("circle", { cls: m.cls, attrs: { cx: x(m.x), cy: y(m.value), r: 5 } });
        if (m.title) dot.appendChild(el("title", { text: m.title }));
        svg.appendChild(dot);
      }
    }
  }
}
