// A colour picker for Guidance Loss (Colour): an <input type=color> under the node's `colour`
// text widget, synced both ways. The text widget stays what is saved in the workflow and
// queued in the prompt ("#rrggbb"); the picker only writes into it.
//
// DOM: div.ag-colour-row > input.ag-colour-picker[type=color], span.ag-colour-text
import { addDisplayWidget, chain, el, findWidget, setWidgetValue } from "./node_helpers.js";

export const COLOUR_PICKER_WIDGET = "adjoint_colour_picker";
const POLL_MS = 700;     // catches text edits that call no widget callback

// "#2050c0", "2050C0", "#25c" → "#2050c0"; anything else → null.
export function normaliseHex(text) {
  const m = /^\s*#?([0-9a-f]{3}|[0-9a-f]{6})\s*$/i.exec(String(text ?? ""));
  if (!m) return null;
  const hex = m[1].length === 3 ? [...m[1]].map((c) => c + c).join("") : m[1];
  return `#${hex.toLowerCase()}`;
}

export class ColourPicker {
  constructor(node, widgetName = "colour") {
    this.node = node;
    this.target = findWidget(node, widgetName);
    this.input = el("input", { cls: "ag-colour-picker", attrs: { type: "color", title: "Pick the target colour" } });
    this.text = el("span", { cls: "ag-colour-text" });
    this.root = el("div", { cls: "ag-colour-row" }, [this.input, this.text]);
    this.widget = addDisplayWidget(node, COLOUR_PICKER_WIDGET, this.root, { minHeight: 34, maxHeight: 34 });
    this.input.addEventListener("input", () => this.pick(this.input.value));
    this.input.addEventListener("change", () => this.pick(this.input.value));
    if (this.target) chain(this.target, "callback", () => this.sync());
    this.poller = setInterval(() => this.sync(), POLL_MS);
    this.sync();
  }

  dispose() {
    clearInterval(this.poller);
  }

  // The node's id is known once the node is in a graph (not yet when it is created).
  syncId() {
    this.input.dataset.nodeId = String(this.node.id);
  }

  // The picker's value into the colour widget (as the user typing it would).
  pick(value) {
    if (!this.target) return;
    setWidgetValue(this.node, this.target, value);
    this.sync();
  }

  // The colour widget's text onto the picker; an invalid text leaves the picker where it was.
  sync() {
    const text = this.target?.value;
    const hex = normaliseHex(text);
    this.root.classList.toggle("ag-colour-invalid", hex === null);
    this.text.textContent = hex === null ? `not a colour: ${text ?? ""}` : hex;
    if (hex !== null && this.input.value !== hex) this.input.value = hex;
  }
}
