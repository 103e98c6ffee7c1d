// The Prompt Schedule / Conditioning Schedule time line: a bar over the sampling steps that
// shows which keyframe is active at each step, the blend windows with their weights and the
// inline A1111 edits. It follows the widgets as the user types: after a short pause it asks
// the pack's route (the node's own parser, on the server) and draws the answer, or shows the
// parse error with its line and column under the text box before anything is queued.
//
// DOM: div.ag-timeline[data-state = ok | error | pending, data-steps] >
//   div.ag-timeline-bar > div.ag-timeline-segment[data-keyframe = index | "blend",
//     data-start-step, data-end-step (exclusive), data-kind = hold | blend | edit]
//   div.ag-timeline-axis, div.ag-timeline-legend, div.ag-timeline-error, div.ag-timeline-warnings
import { addDisplayWidget, chain, el, findWidget, widgetIsLinked } from "./node_helpers.js";

export const TIMELINE_WIDGET = "adjoint_schedule_timeline";
export const TIMELINE_ROUTE = "/adjoint_guidance/schedule/timeline";
export const TEXT_INPUT = {
  AdjointGuidance_PromptSchedule: "text",
  AdjointGuidance_ConditioningSchedule: "times",
};
const WATCHED = ["steps", "interpolation", "scheduler"];
const DEBOUNCE_MS = 300;
const POLL_MS = 700;       // catches edits that call no widget callback (other renderers, undo)
const KEY_COLOURS = 8;     // --ag-key-0 … --ag-key-7 in the style sheet
const LEGEND_MAX = 12;

// "line 2, column 7: expected ':' …" (the parser's message with its place), or the message.
export function errorText(error) {
  if (error?.line == null) return error?.message ?? "unknown error";
  const where = error.column == null ? `line ${error.line}` : `line ${error.line}, column ${error.column}`;
  return `${where}: ${error.detail ?? error.message}`;
}

// The kind a segment is drawn as: a blend, a hold of a keyframe line, or a hold of the prompt
// an inline edit switched to.
export function segmentKind(segment, keyframes) {
  if (segment.kind === "blend") return "blend";
  return keyframes[segment.keyframes[0]]?.origin === "edit" ? "edit" : "hold";
}

function keyColour(k) {
  return `var(--ag-key-${k % KEY_COLOURS})`;
}

function stepCell(a, b, weight) {
  const pct = Math.round(weight * 100);
  return el("div", { cls: "ag-timeline-step",
    attrs: { style: `background: color-mix(in srgb, ${keyColour(b)} ${pct}%, ${keyColour(a)})`,
      title: `weight ${weight.toFixed(2)}` } });
}

function segmentElement(segment, keyframes) {
  const kind = segmentKind(segment, keyframes);
  const [a, b] = segment.keyframes;
  const node = el("div", { cls: `ag-timeline-segment ag-kind-${kind}`, attrs: {
    "data-keyframe": kind === "blend" ? "blend" : String(a),
    "data-start-step": segment.start_step, "data-end-step": segment.end_step, "data-kind": kind,
    title: segment.summary ?? "", style: `flex: ${segment.end_step - segment.start_step} 1 0` } });
  if (kind === "blend") {
    (segment.weights ?? []).forEach((w) => node.appendChild(stepCell(a, b, w)));
  } else {
    node.style.background = keyColour(a);
    node.appendChild(el("span", { cls: "ag-timeline-label", text: String(a) }));
  }
  return node;
}

export class ScheduleTimeline {
  // nodeClass: the node's id (a key of TEXT_INPUT); fetchTimeline(body) → Promise<{status,
  // json}>: the route's answer.
  constructor(node, nodeClass, fetchTimeline) {
    this.node = node;
    this.nodeClass = nodeClass;
    this.fetchTimeline = fetchTimeline;
    this.textInput = TEXT_INPUT[nodeClass];
    this.bar = el("div", { cls: "ag-timeline-bar" });
    this.axis = el("div", { cls: "ag-timeline-axis" });
    this.legend = el("div", { cls: "ag-timeline-legend" });
    this.error = el("div", { cls: "ag-timeline-error" });
    this.warnings = el("div", { cls: "ag-timeline-warnings" });
    this.root = el("div", { cls: "ag-timeline", attrs: { "data-state": "pending", "data-steps": "" } },
      [this.bar, this.axis, this.error, this.warnings, this.legend]);
    this.widget = addDisplayWidget(node, TIMELINE_WIDGET, this.root, { minHeight: 110 });
    this.sent = null;          // the request body last asked for (JSON)
    this.sequence = 0;         // answers to older requests are dropped
    this.timer = null;
    for (const name of [this.textInput, ...WATCHED]) {
      const widget = findWidget(node, name);
      if (widget) chain(widget, "callback", () => this.schedule());
    }
    this.poller = setInterval(() => this.schedule(), POLL_MS);
    this.schedule();
  }

  dispose() {
    clearInterval(this.poller);
    clearTimeout(this.timer);
  }

  // The node's id is known once the node is in a graph (not yet when it is created).
  syncId() {
    this.root.dataset.nodeId = String(this.node.id);
  }

  // The route's request for the current widget values, or null when the text is linked.
  requestBody() {
    const node = this.node;
    if (widgetIsLinked(node, this.textInput)) return null;
    const value = (name) => findWidget(node, name)?.value;
    const body = { node: this.nodeClass, [this.textInput]: String(value(this.textInput) ?? ""),
      steps: Number(value("steps")), interpolation: value("interpolation"), scheduler: value("scheduler") };
    if (this.nodeClass === "AdjointGuidance_ConditioningSchedule") {
      const connected = (node.inputs ?? []).filter((i) => /^conditioning_\d+$/.test(i.name) && i.link != null);
      if (connected.length) body.inputs = connected.map((i) => i.name);
    }
    return body;
  }

  // Ask again after a pause when the widgets changed since the last request.
  schedule() {
    const body = this.requestBody();
    const key = JSON.stringify(body);
    if (key === this.sent) return;
    this.sent = key;
    clearTimeout(this.timer);
    if (body === null) {
      this.showNote(`${this.textInput} comes from a link: the time line appears when the node runs`);
      return;
    }
    this.root.dataset.state = "pending";
    this.timer = setTimeout(() => this.send(body), DEBOUNCE_MS);
  }

  async send(body) {
    const sequence = ++this.sequence;
    let answer;
    try {
      answer = await this.fetchTimeline(body);
    } catch (e) {
      answer = { status: 0, json: { error: { message: `the time line could not be fetched: ${e}` } } };
    }
    if (sequence !== this.sequence) return;
    if (answer.json?.timeline) this.draw(answer.json.timeline);
    else this.showError(answer.json?.error ?? { message: `the server answered ${answer.status}` });
  }

  // Draw a time line payload (the route's, or the node's ui output after a run).
  draw(timeline) {
    const keyframes = timeline.keyframes ?? [];
    this.bar.replaceChildren(...(timeline.segments ?? []).map((s) => segmentElement(s, keyframes)));
    this.axis.replaceChildren(el("span", { text: "step 0" }),
      el("span", { text: `${timeline.steps} steps · ${timeline.interpolation}` }));
    this.drawLegend(keyframes);
    this.warnings.replaceChildren(...(timeline.warnings ?? []).map((w) => el("div", {
      cls: "ag-timeline-warning", text: w })));
    this.error.textContent = "";
    this.root.dataset.steps = String(timeline.steps);
    this.root.dataset.state = "ok";
  }

  drawLegend(keyframes) {
    const items = keyframes.slice(0, LEGEND_MAX).map((k) => el("div", { cls: "ag-timeline-key" }, [
      el("span", { cls: "ag-timeline-swatch", attrs: { style: `background: ${keyColour(k.index)}` } }),
      el("span", { text: `${k.index}${k.origin === "edit" ? " (edit)" : ""} · step ${k.start_step}: ${k.label}` }),
    ]));
    if (keyframes.length > LEGEND_MAX) items.push(el("div", { text: `… ${keyframes.length - LEGEND_MAX} more` }));
    this.legend.replaceChildren(...items);
  }

  showError(error) {
    this.error.textContent = errorText(error);
    this.error.title = error.message ?? "";
    this.root.dataset.state = "error";
  }

  showNote(text) {
    this.error.textContent = "";
    this.warnings.replaceChildren(el("div", { cls: "ag-timeline-note", text }));
    this.root.dataset.state = "pending";
  }
}
