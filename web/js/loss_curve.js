// The Adjoint Sampler's live loss curve: a DOM widget that grows point by point from the
// server's `adjoint_guidance.iteration` events, and is redrawn from the node's ui output
// (`adjoint_guidance_loss`) when a run finishes, a cached result is shown or a saved
// workflow is reopened (the last report is kept in node.properties).
//
// DOM: div.ag-loss-curve[data-node-id, data-points, data-losses, data-best-iteration,
// data-stop-reason, data-samples] > svg.ag-loss-plot, div.ag-loss-legend,
// label > input.ag-grad-norm-toggle, div.ag-loss-status.
import { addDisplayWidget, el, formatDuration, formatNumber } from "./node_helpers.js";
import { drawPlot } from "./svg_plot.js";

export const LOSS_CURVE_WIDGET = "adjoint_loss_curve";
export const REPORT_PROPERTY = "adjoint_loss_curve";
export const GRAD_NORM_PROPERTY = "adjoint_loss_curve_grad_norm";
const COLOURS = 6;     // ag-sample-0 … ag-sample-5, ag-part-0 … ag-part-5 in the style sheet

function emptyState() {
  return {
    losses: [], perSample: [], parts: {}, gradNorms: [], bestIteration: -1, bestLoss: null,
    bestIterations: [], numIterations: 0, numSamples: 1, iteration: null, sample: null,
    secondsPerIteration: null, eta: null, stopReason: "", status: "", promptId: null,
  };
}

function put(list, k, value) {
  while (list.length < k) list.push(null);
  list[k] = value ?? null;
}

// The state a finished run's ui report describes.
export function stateFromReport(report, numIterations) {
  const losses = report.losses ?? [];
  return {
    ...emptyState(),
    losses,
    perSample: report.per_sample_losses ?? [],
    parts: report.parts ?? {},
    gradNorms: report.grad_norms ?? [],
    bestIteration: report.best_iteration ?? -1,
    bestLoss: report.best_loss ?? null,
    bestIterations: report.best_iterations ?? [],
    numIterations: numIterations ?? Math.max(losses.length - 1, 0),
    numSamples: report.num_samples ?? 1,
    stopReason: report.stop_reason ?? "",
    status: report.status ?? "",
  };
}

export class LossCurve {
  constructor(node, registry) {
    this.node = node;
    this.registry = registry;
    this.state = emptyState();
    this.plot = el("svg", { cls: "ag-loss-plot" });
    this.legend = el("div", { cls: "ag-loss-legend" });
    this.toggle = el("input", { cls: "ag-grad-norm-toggle", attrs: { type: "checkbox" } });
    this.toggle.checked = Boolean(node.properties?.[GRAD_NORM_PROPERTY]);
    this.toggle.addEventListener("change", () => {
      node.properties = node.properties ?? {};
      node.properties[GRAD_NORM_PROPERTY] = this.toggle.checked;
      this.render();
    });
    this.status = el("div", { cls: "ag-loss-status" });
    const controls = el("div", { cls: "ag-loss-controls" }, [
      el("label", { cls: "ag-grad-norm-label", attrs: { title: "Draw the gradient norm (right axis)" } },
        [this.toggle, el("span", { text: "gradient norm" })]),
      this.legend,
    ]);
    this.root = el("div", { cls: "ag-loss-curve" }, [el("div", { cls: "ag-loss-plot-box" }, [this.plot]),
      controls, this.status]);
    this.widget = addDisplayWidget(node, LOSS_CURVE_WIDGET, this.root, { minHeight: 190 });
    this.observeSize();
    this.render();
  }

  observeSize() {
    if (typeof ResizeObserver === "undefined") return;
    let queued = false;
    this.resizer = new ResizeObserver(() => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => {
        queued = false;
        this.render();
      });
    });
    this.resizer.observe(this.root);
  }

  dispose() {
    this.resizer?.disconnect();
  }

  // The node's id is known once the node is in a graph (not yet when it is created).
  syncId() {
    this.root.dataset.nodeId = String(this.node.id);
  }

  // One `adjoint_guidance.iteration` event of this node.
  applyEvent(d) {
    if (this.state.stopReason !== "" || d.prompt_id !== this.state.promptId) {
      this.state = emptyState();      // a new run
      this.state.promptId = d.prompt_id ?? null;
    }
    const s = this.state;
    const k = d.iteration;
    put(s.losses, k, d.loss);
    put(s.gradNorms, k, d.grad_norm);
    (d.per_sample_loss ?? []).forEach((value, i) => {
      if (d.sample != null && d.sample !== i) return;   // one sample at a time: only its own value is new
      s.perSample[i] = s.perSample[i] ?? [];
      put(s.perSample[i], k, value);
    });
    for (const [name, value] of Object.entries(d.parts ?? {})) {
      s.parts[name] = s.parts[name] ?? [];
      put(s.parts[name], k, value);
    }
    if (d.per_sample_best_iteration) {
      s.bestIterations = d.per_sample_best_iteration;
    } else if (d.sample != null) {
      s.bestIterations[d.sample] = d.best_iteration;
    }
    Object.assign(s, {
      bestIteration: d.num_samples > 1 && d.sample != null ? -1 : d.best_iteration,
      bestLoss: d.best_loss, numIterations: d.num_iterations, numSamples: d.num_samples ?? 1,
      iteration: k, sample: d.sample ?? null, secondsPerIteration: d.seconds_per_iteration, eta: d.eta_seconds,
    });
    if (d.final) {
      s.stopReason = d.stop_reason ?? "";
      s.status = d.status ?? s.stopReason;
    }
    this.publish(null);
    this.render();
  }

  // The node's ui report (a finished or cached run, or one saved in the workflow).
  applyReport(report, { save = true } = {}) {
    const iterations = this.node.widgets?.find((w) => w.name === "iterations")?.value;
    this.state = stateFromReport(report, Number.isFinite(iterations) ? iterations : undefined);
    if (save) {
      this.node.properties = this.node.properties ?? {};
      this.node.properties[REPORT_PROPERTY] = report;
    }
    this.publish(report);
    this.render();
  }

  publish(report) {
    this.registry?.set(this.node.id, report ?? { live: true, ...this.state });
  }

  series() {
    const s = this.state;
    const out = [{ values: s.losses, cls: "ag-series-main", label: "loss (sum over the samples)" }];
    if (s.numSamples > 1) {
      s.perSample.forEach((values, i) => out.push({ values: values ?? [], label: `sample ${i + 1}`,
        cls: `ag-series-sample ag-sample-${i % COLOURS}` }));
    }
    Object.entries(s.parts).forEach(([name, values], i) => out.push({ values, label: name,
      cls: `ag-series-part ag-part-${i % COLOURS}` }));
    if (this.toggle.checked) {
      out.push({ values: s.gradNorms, cls: "ag-series-grad", axis: "right", label: "gradient norm" });
    }
    return out;
  }

  markers() {
    const s = this.state;
    const out = [];
    if (s.bestIteration >= 0) {
      out.push({ x: s.bestIteration, value: s.losses[s.bestIteration], cls: "ag-best-marker",
        title: `best: ${formatNumber(s.bestLoss)} at iteration ${s.bestIteration}` });
    }
    if (s.numSamples > 1) {
      s.bestIterations.forEach((k, i) => {
        if (k != null && k >= 0) {
          out.push({ x: k, value: s.perSample[i]?.[k], cls: `ag-best-marker ag-sample-best ag-sample-${i % COLOURS}`,
            title: `sample ${i + 1}: best at iteration ${k}` });
        }
      });
    }
    return out;
  }

  drawnSamples() {
    return this.state.numSamples > 1 ? this.state.perSample.filter((v) => v && v.length).length : 0;
  }

  render() {
    const s = this.state;
    const box = this.plot.parentElement;
    const width = Math.max(box.clientWidth || this.root.clientWidth || 300, 120);
    const height = Math.max(box.clientHeight || 120, 80);
    drawPlot(this.plot, { width, height, xMax: Math.max(s.numIterations, s.losses.length - 1, 1),
      series: this.series(), markers: this.markers() });
    this.renderLegend();
    this.syncId();
    const data = this.root.dataset;
    data.points = String(s.losses.length);
    data.losses = JSON.stringify(s.losses);
    data.bestIteration = String(s.bestIteration);
    data.stopReason = s.stopReason;
    data.samples = String(this.drawnSamples());
    this.status.textContent = this.statusText();
  }

  renderLegend() {     // the main curve and the gradient norm are named by the toggle and the status
    const items = this.series().filter((serie) => /ag-series-(sample|part)/.test(serie.cls))
      .map((serie) => el("span", { cls: `ag-legend-item ${serie.cls}`, text: serie.label }));
    this.legend.replaceChildren(...items);
  }

  statusText() {
    const s = this.state;
    if (s.stopReason) {
      const where = s.bestIteration >= 0 ? ` at iteration ${s.bestIteration}`
        : s.bestIterations.length ? ` (per sample at iterations ${s.bestIterations.join(", ")})` : "";
      return `best loss ${formatNumber(s.bestLoss)}${where} · ${s.status || s.stopReason}`;
    }
    if (s.iteration == null) return "The loss curve appears here while the node runs.";
    const sample = s.numSamples > 1 && s.sample != null ? ` · sample ${s.sample + 1} / ${s.numSamples}` : "";
    const speed = s.secondsPerIteration == null ? "" : ` · ${s.secondsPerIteration.toFixed(2)} s/iteration`;
    return `iteration ${Math.min(s.iteration + 1, s.numIterations)} / ${s.numIterations}${sample}`
      + ` · loss ${formatNumber(s.losses[s.iteration])}${speed} · ETA ${formatDuration(s.eta)}`;
  }
}
