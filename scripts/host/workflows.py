"""Translate between ComfyUI's two workflow formats, using the server's /object_info.

example_workflows/*.json are in the frontend's (UI) format, because that is what the
template browser offers users; the HTTP API takes the API format. `ui_to_api` does what
the frontend does when you press Queue; `api_to_ui` lays an API prompt out as a UI
workflow (columns by graph depth), which is how the example files are authored.
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SKIPPED_NODE_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MUTED_MODES = {2, 4}  # "never" and "bypass"
# Room for what the pack's frontend draws under a node's widgets (web/js): the loss curve,
# the schedule time line (below a multi-line text box), the colour picker.
DOM_WIDGET_HEIGHT = {"AdjointGuidance_AdjointSampler": 260, "AdjointGuidance_PromptSchedule": 220,
                     "AdjointGuidance_ConditioningSchedule": 160, "AdjointGuidance_LossColour": 50}


def _inputs_in_order(info: dict):
    """(name, spec) of every input, required before optional, in declaration order."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            yield name, info["input"][section][name]


def _is_widget(spec) -> bool:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_widget(name: str, spec) -> bool:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return bool(opts.get("control_after_generate")) or (spec[0] == "INT" and name in ("seed", "noise_seed"))


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    links = {l[0]: (str(l[1]), l[2]) for l in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in SKIPPED_NODE_TYPES or node.get("mode", 0) in MUTED_MODES:
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise KeyError(f"node type {node['type']!r} (node {node['id']}) is not installed on this server")
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name, spec in _inputs_in_order(info):
            if _is_widget(spec):
                value = values.pop(0) if values else None
                if _has_control_widget(name, spec) and values:
                    values.pop(0)  # "fixed"/"randomize": a frontend-only widget
                if name in linked:
                    inputs[name] = list(linked[name])
                elif value is not None:
                    inputs[name] = value
            elif name in linked:
                inputs[name] = list(linked[name])
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title", node["type"])}}
    return prompt


def api_to_ui(prompt: dict, object_info: dict, notes: str | None = None) -> dict:
    depth: dict[str, int] = {}

    def node_depth(nid):
        if nid not in depth:
            srcs = [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list)]
            depth[nid] = 1 + max((node_depth(s) for s in srcs), default=-1)
        return depth[nid]

    for nid in prompt:
        node_depth(nid)
    nodes, links, column_fill = [], [], {}
    out_links: dict[tuple[str, int], list[int]] = {}
    for nid, node in prompt.items():
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, spec in _inputs_in_order(info):
            value = node["inputs"].get(name)
            if _is_widget(spec):
                default = spec[1].get("default") if len(spec) > 1 and isinstance(spec[1], dict) else None
                if default is None and isinstance(spec[0], list) and spec[0]:
                    default = spec[0][0]
                widgets.append(default if value is None or isinstance(value, list) else value)
                if _has_control_widget(name, spec):
                    widgets.append("fixed")
            if isinstance(value, list):
                link_id = len(links) + 1
                src, slot = value
                links.append([link_id, int(src), slot, int(nid), None,
                              object_info[prompt[src]["class_type"]]["output"][slot]])
                out_links.setdefault((src, slot), []).append(link_id)
                entry = {"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO",
                         "link": link_id}
                if _is_widget(spec):
                    entry["widget"] = {"name": name}
                inputs.append(entry)
        for lk in links:
            if lk[3] == int(nid) and lk[4] is None:
                lk[4] = next(i for i, e in enumerate(inputs) if e["link"] == lk[0])
        col = depth[nid]
        height = 120 + 26 * len(widgets) + DOM_WIDGET_HEIGHT.get(node["class_type"], 0)
        top = column_fill.get(col, 40)
        column_fill[col] = top + height + 60      # the next node of this column goes below
        nodes.append({
            "id": int(nid), "type": node["class_type"], "pos": [40 + 340 * col, top],
            "size": [300, height], "flags": {}, "order": 0, "mode": 0,
            "inputs": inputs, "outputs": [], "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": widgets,
            **({"title": node["_meta"]["title"]} if node.get("_meta", {}).get("title") else {}),
        })
    for n in nodes:
        info = object_info[n["type"]]
        n["outputs"] = [{"name": name, "type": typ, "links": out_links.get((str(n["id"]), i), [])}
                        for i, (name, typ) in enumerate(zip(info["output_name"], info["output"]))]
    for order, n in enumerate(sorted(nodes, key=lambda n: depth[str(n["id"])])):
        n["order"] = order
    if notes:
        nodes.append({"id": max(int(k) for k in prompt) + 1, "type": "Note", "pos": [40, -200],
                      "size": [420, 160], "flags": {}, "order": len(nodes), "mode": 0,
                      "inputs": [], "outputs": [], "properties": {}, "widgets_values": [notes]})
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links),
            "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}
