// Adjoint Guidance frontend extension (the only module of the pack that registers one):
// - Adjoint Sampler: the live loss curve (loss_curve.js), fed by the server's
//   `adjoint_guidance.iteration` events and the node's ui output;
// - Prompt Schedule / Conditioning Schedule: the step time line (schedule_timeline.js);
// - Guidance Loss (Colour): a colour picker on its `colour` text (colour_picker.js).
// Served from /extensions/adjoint_guidance/js/, so ComfyUI's modules are three folders up.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { COLOUR_PICKER_WIDGET, ColourPicker } from "./colour_picker.js";
import { LOSS_CURVE_WIDGET, LossCurve, REPORT_PROPERTY } from "./loss_curve.js";
import { chain, loadStyleSheet, nodeByExecutionId } from "./node_helpers.js";
import { ScheduleTimeline, TEXT_INPUT, TIMELINE_ROUTE, TIMELINE_WIDGET } from "./schedule_timeline.js";

const VERSION = "0.1.0";
const ITERATION_EVENT = "adjoint_guidance.iteration";
const SAMPLER = "AdjointGuidance_AdjointSampler";
const COLOUR_LOSS = "AdjointGuidance_LossColour";

// For debugging in the browser console: the last data each loss curve drew, by node id.
const registry = { version: VERSION, lossCurves: new Map(),
  widgets: [LOSS_CURVE_WIDGET, TIMELINE_WIDGET, COLOUR_PICKER_WIDGET] };
window.AdjointGuidance = registry;

async function fetchTimeline(body) {
  const response = await api.fetchApi(TIMELINE_ROUTE, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  let json = null;
  try {
    json = await response.json();
  } catch {
    json = null;
  }
  return { status: response.status, json };
}

function rootGraph() {
  return app.rootGraph ?? app.graph;
}

// A node's widget object (its `_ag` field) is created with the node, told the node's id when
// the node joins a graph or is loaded, and disposed with it.
function attach(prototype, create) {
  chain(prototype, "onNodeCreated", function () {
    this._ag = create(this);
  });
  for (const hook of ["onAdded", "onConfigure"]) {
    chain(prototype, hook, function () {
      this._ag?.syncId();
    });
  }
  chain(prototype, "onRemoved", function () {
    this._ag?.dispose();
  });
}

function drawOutput(node, output) {
  const report = output?.adjoint_guidance_loss?.[0];
  if (report && node._ag instanceof LossCurve) node._ag.applyReport(report);
  const timeline = output?.adjoint_guidance_timeline?.[0];
  if (timeline && node._ag instanceof ScheduleTimeline) node._ag.draw(timeline);
}

const SETUP = {
  [SAMPLER](prototype) {
    attach(prototype, (node) => new LossCurve(node, registry.lossCurves));
    chain(prototype, "onConfigure", function () {     // a saved workflow: its last report
      const saved = this.properties?.[REPORT_PROPERTY];
      if (saved && this._ag) this._ag.applyReport(saved, { save: false });
    });
  },
  [COLOUR_LOSS](prototype) {
    attach(prototype, (node) => new ColourPicker(node, "colour"));
    chain(prototype, "onConfigure", function () {
      this._ag?.sync();
    });
  },
};
for (const nodeClass of Object.keys(TEXT_INPUT)) {
  SETUP[nodeClass] = (prototype) => attach(prototype, (node) => new ScheduleTimeline(node, nodeClass, fetchTimeline));
}

loadStyleSheet();

app.registerExtension({
  name: "AdjointGuidance.Core",

  async setup() {
    api.addEventListener(ITERATION_EVENT, ({ detail }) => {
      const node = nodeByExecutionId(rootGraph(), detail?.display_node ?? detail?.node)
        ?? nodeByExecutionId(rootGraph(), detail?.node);
      if (node?._ag instanceof LossCurve) node._ag.applyEvent(detail);
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    const setup = SETUP[nodeData?.name];
    if (!setup) return;
    setup(nodeType.prototype);
    chain(nodeType.prototype, "onExecuted", function (output) {
      drawOutput(this, output);
    });
  },

  // Outputs restored by the frontend (a workflow reopened from the queue or history).
  onNodeOutputsUpdated(outputs) {
    for (const [id, output] of Object.entries(outputs ?? {})) {
      const node = nodeByExecutionId(rootGraph(), id);
      if (node?._ag) drawOutput(node, output);
    }
  },
});
