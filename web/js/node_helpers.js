// Small helpers shared by the pack's widgets: chaining node callbacks, DOM widgets that keep
// out of the saved widget values and the queued prompt, finding a node by ComfyUI's execution
// id, and the pack's style sheet. No side effects on import (the frontend imports every .js
// file of the pack's web folder as an extension; only adjoint_guidance.js registers one).

// obj[name] = function calling the previous one first, then fn; returns the previous result.
export function chain(obj, name, fn) {
  const previous = obj[name];
  obj[name] = function (...args) {
    const result = previous?.apply(this, args);
    fn.apply(this, args);
    return result;
  };
}

// A DOM widget that is drawn but never saved: not in widgets_values (a non-serialised widget
// must stay the last one, or older frontends shift the saved values), not in the prompt.
// It stays visible when the canvas is zoomed out (as the frontend's own previews do).
export function addDisplayWidget(node, name, element, { minHeight, maxHeight } = {}) {
  const options = { serialize: false, hideOnZoom: false, getMinHeight: () => minHeight };
  if (maxHeight !== undefined) options.getMaxHeight = () => maxHeight;
  const widget = node.addDOMWidget(name, name, element, options);
  widget.serialize = false;
  return widget;
}

export function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

// Whether the widget `name` is fed by a link (its value is then not the widget's).
export function widgetIsLinked(node, name) {
  return Boolean(node.inputs?.some((input) => input.widget?.name === name && input.link != null));
}

// Set a widget's value as a user edit would: value, callback, redraw.
export function setWidgetValue(node, widget, value) {
  if (widget.value === value) return;
  widget.value = value;
  widget.callback?.(value);
  node.setDirtyCanvas?.(true, true);
}

// The node of an execution id ("12", or "5:12" for node 12 inside subgraph node 5).
export function nodeByExecutionId(rootGraph, id) {
  if (rootGraph == null || id == null) return null;
  let graph = rootGraph;
  let node = null;
  for (const part of String(id).split(":")) {
    if (graph == null) return null;
    node = graph.getNodeById(Number.isNaN(Number(part)) ? part : Number(part));
    if (node == null) return null;
    graph = node.subgraph;
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
const SVG_TAGS = new Set(["svg", "g", "path", "polyline", "line", "circle", "text", "rect", "title"]);

// Create an element (an SVG one for SVG tags) with classes, attributes and children.
export function el(tag, { cls, attrs, text } = {}, children = []) {
  const node = SVG_TAGS.has(tag) ? document.createElementNS(SVG_NS, tag) : document.createElement(tag);
  if (cls) node.setAttribute("class", cls);
  for (const [k, v] of Object.entries(attrs ?? {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  for (const child of children) node.appendChild(child);
  return node;
}

// The pack's style sheet, once per page.
export function loadStyleSheet() {
  const id = "adjoint-guidance-css";
  if (document.getElementById(id)) return;
  const link = document.createElement("link");
  link.id = id;
  link.rel = "stylesheet";
  link.href = new URL("../css/adjoint_guidance.css", import.meta.url).href;
  document.head.appendChild(link);
}

// 12.3 s → "12 s", 75 s → "1:15", 3725 s → "1:02:05".
export function formatDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
  const s = Math.round(seconds);
  const parts = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  const text = parts.map((p) => String(p).padStart(2, "0")).join(":");
  return parts[0] ? text.replace(/^0/, "") : text.slice(3).replace(/^0/, "");
}

export function formatNumber(value) {
  if (value == null || !Number.isFinite(value)) return "–";
  const a = Math.abs(value);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? value.toExponential(3) : value.toPrecision(4);
}
