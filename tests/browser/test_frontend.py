"""The pack in the real ComfyUI frontend (headless Chromium), once with the classic canvas
and once with the Vue node renderer; see conftest.py for the fixtures and for how console
messages and failed requests the pack causes fail a test.

The DOM our web extension draws (web/js), which these tests read:
  loss curve  div.ag-loss-curve[data-node-id] with data-points, data-losses (JSON, the
              server's `losses`), data-best-iteration, data-stop-reason ("" while running),
              data-samples; svg.ag-loss-plot or canvas.ag-loss-plot, div.ag-loss-status,
              input.ag-grad-norm-toggle
  time line   div.ag-timeline[data-state=ok|error|pending][data-steps], its segments
              div.ag-timeline-segment[data-keyframe][data-start-step][data-end-step]
              [data-kind=hold|blend|edit], div.ag-timeline-error ("line L", "column C")
  colour      input.ag-colour-picker[type=color] in Guidance Loss (Colour)
  global      window.AdjointGuidance = {version, lossCurves}
"""
from __future__ import annotations

import json
import math
import random
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from comfy_page import PACK, RUN_BUTTON, widget_inputs

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "example_workflows"
PREFIX = "AdjointGuidance_"
EXTENSION = "AdjointGuidance.Core"
SAMPLER = "AdjointGuidance_AdjointSampler"


def example_workflows() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.json"))}


def find_example(*needed_types: str, without=()) -> tuple[str, dict]:
    """The example workflow holding every one of these node types and none of `without`
    (the first by name)."""
    for stem, wf in example_workflows().items():
        types = {n["type"] for n in wf["nodes"]}
        if set(needed_types) <= types and not set(without) & types:
            return stem, wf
    raise AssertionError(f"no example workflow in {EXAMPLES} has all of {needed_types} and none of {without}")


def adjoint_example():
    """The adjoint-guided example: Adjoint Sampler toward a latent target (Noise Replay)."""
    return find_example(SAMPLER, "AdjointGuidance_LossLatentTarget")


def our_nodes(server) -> dict[str, dict]:
    return {k: v for k, v in server.object_info().items() if k.startswith(PREFIX)}


# -- a. the extension ---------------------------------------------------------------------
def test_extension_loads(ui, server):
    served = [p for p in server.get("/extensions") if f"/{PACK}/" in p]
    assert served, "the server lists no web file of the pack under /extensions"
    try:
        ui.page.wait_for_function("(name) => app.extensions.some(e => e.name === name)", arg=EXTENSION, timeout=10000)
    except PlaywrightTimeout:
        names = ui.js("() => app.extensions.map(e => e.name).filter(n => !n.startsWith('Comfy.'))")
        problems = "\n".join("  " + m.short(600) for m in ui.log.pack_problems()) or "  (none recorded)"
        pytest.fail(f"the frontend did not register {EXTENSION!r} (non-core extensions: {names}); "
                    f"what the pack's files caused:\n{problems}")
    registered = ui.js("(p) => Object.keys(LiteGraph.registered_node_types).filter(t => t.startsWith(p))", PREFIX)
    assert sorted(registered) == sorted(our_nodes(server)), "node types the frontend registered"
    if ui.mode == "vue":   # the renderer really is on: a node of ours becomes a Vue element
        node_id = ui.js("""(t) => { const n = LiteGraph.createNode(t); n.pos = [200, 200];
                            app.graph.add(n); return n.id }""", "AdjointGuidance_PromptSchedule")
        title = ui.vue_node(node_id).get_by_test_id("node-title")
        title.wait_for(state="visible")
        assert "Prompt Schedule" in title.inner_text()
    # the extension's global: window.AdjointGuidance = {version, lossCurves}
    ag = ui.js("() => window.AdjointGuidance ? {version: window.AdjointGuidance.version,"
               " lossCurves: typeof window.AdjointGuidance.lossCurves} : null")
    assert ag is not None, "window.AdjointGuidance is not defined"
    assert isinstance(ag["version"], str) and ag["version"], ag
    assert ag["lossCurves"] in ("object", "function"), ag


# -- b. every node from the search box ----------------------------------------------------
def test_every_node_from_search_box(ui, server):
    nodes = our_nodes(server)
    assert len(nodes) >= 10, sorted(nodes)
    ui.clear_graph()
    problems = []
    for i, (node_type, spec) in enumerate(sorted(nodes.items())):
        name = spec["display_name"]
        try:
            node_id = ui.add_node_from_search(name, node_type)
        except Exception as e:  # noqa: BLE001  (report every node, not only the first)
            problems.append(f"{name} ({node_type}): could not be added from the search box: {e}")
            ui.page.keyboard.press("Escape")
            continue
        node = next(n for n in ui.nodes(node_type) if n["id"] == node_id)
        expected = widget_inputs(spec)
        shown = [w["name"] for w in node["widgets"]]
        missing = [w for w in expected if w not in shown]
        if missing:
            problems.append(f"{name}: widgets {missing} of /object_info missing; the node has {shown}")
        if ui.mode == "vue":
            element = ui.vue_node(node_id)
            element.wait_for(state="visible")
            labels = {w["name"]: w["label"] or w["name"] for w in node["widgets"]}
            # a labelled row (numbers, combos) or a control named after it (a textarea's aria-label)
            unseen = [w for w in expected if w in labels
                      and not element.get_by_text(labels[w], exact=True).count()
                      and not element.get_by_label(labels[w], exact=True).count()]
            if unseen:
                problems.append(f"{name}: the Vue node shows no widget labelled {unseen}")
        else:   # DOM widgets (multiline text) sit over the canvas: they must be visible
            hidden = ui.js("""(id) => app.graph.getNodeById(id).widgets
                .filter(w => w.element && !(w.element.offsetWidth > 0 && w.element.offsetHeight > 0))
                .map(w => w.name)""", node_id)
            if hidden:
                problems.append(f"{name}: DOM widgets {hidden} are not visible")
        ui.clear_graph()
    assert not problems, "\n".join(problems)


# -- c. every example workflow from the template browser ----------------------------------
_LOAD_PROBLEM = re.compile(r"valid|missing|unknown|not found|schema|could not|failed to load workflow", re.I)


def test_example_workflows_open_from_template_browser(ui, server):
    examples = example_workflows()
    listed = server.get("/api/workflow_templates").get(PACK, [])
    assert sorted(listed) == sorted(examples), "the server's template list vs example_workflows/*.json"
    problems = []
    for stem, wf in examples.items():
        mark = ui.log.mark()
        try:
            ui.open_template(stem)
            want = sorted(n["type"] for n in wf["nodes"])
            ui.page.wait_for_function("(n) => app.graph.nodes.length === n", arg=len(want), timeout=15000)
            ui.next_frame()
        except Exception as e:  # noqa: BLE001
            problems.append(f"{stem}: did not open from the template browser: {e}")
            ui.page.keyboard.press("Escape")
            continue
        got = sorted(n["type"] for n in ui.nodes())
        if got != want:
            problems.append(f"{stem}: the canvas holds {got}, the file {want}")
        links = ui.js("() => (app.graph.links instanceof Map ? app.graph.links.size : Object.keys(app.graph.links).length)")
        if links != len(wf["links"]):
            problems.append(f"{stem}: {links} links on the canvas, {len(wf['links'])} in the file")
        dialogs = ui.visible_dialogs()
        if dialogs:   # the missing-nodes / missing-models dialogs, or any other
            problems.append(f"{stem}: a dialog opened with the workflow: {dialogs}")
        toasts = ui.visible_toasts()
        if toasts:
            problems.append(f"{stem}: warning/error toasts: {toasts}")
        said = [m for m in ui.log.since(mark) if m.kind.startswith(("console", "pageerror"))
                and ui.log.is_local(m.url) and not m.text.startswith("Failed to load resource")
                and _LOAD_PROBLEM.search(m.text)]   # (failed loads: blamed by URL, see conftest)
        if said:
            problems.append(f"{stem}: the frontend warned while loading it: {[m.short() for m in said]}")
    assert not problems, "\n".join(problems)


# -- d. a run from the Run button: the live loss curve; Cancel ------------------------------
def _loss_curve(ui, node_id) -> dict | None:
    return ui.js("""(id) => { const el = document.querySelector(`.ag-loss-curve[data-node-id="${id}"]`);
        if (!el) return null;
        const d = el.dataset;
        return {points: d.points, losses: d.losses, best: d.bestIteration, stop: d.stopReason ?? null,
                samples: d.samples, plot: !!el.querySelector('.ag-loss-plot'),
                status: el.querySelector('.ag-loss-status')?.textContent ?? null,
                toggle: !!el.querySelector('input.ag-grad-norm-toggle')} }""", node_id)


def _prepare_adjoint_run(ui, iterations: int):
    stem, wf = adjoint_example()
    ui.load_workflow(wf, stem)
    sampler = next(n for n in ui.nodes(SAMPLER))
    ui.set_widget(sampler["id"], "iterations", iterations)
    # a seed no earlier run used, so the server's cache cannot answer for the sampler
    ui.set_widget(sampler["id"], "seed", random.randrange(10**6, 10**9))
    return sampler["id"]


def _wait_live_points(ui, node_id, at_least: int, timeout_s: float):
    """Until the curve shows >= at_least points while the run is still going (no stop reason)."""
    ui.page.wait_for_function("""([id, n]) => { const el = document.querySelector(`.ag-loss-curve[data-node-id="${id}"]`);
            return !!el && Number(el.dataset.points) >= n && !el.dataset.stopReason }""",
                              arg=[node_id, at_least], timeout=timeout_s * 1000, polling=50)


def _server_losses(entry, node_id) -> list:
    out = entry["outputs"].get(str(node_id), {}).get("adjoint_guidance_loss")
    assert out, f"the server sent no adjoint_guidance_loss for node {node_id}: {sorted(entry['outputs'])}"
    return out[0]["losses"]


def _assert_final_curve(ui, server, node_id, prompt_id):
    entry = server.wait(prompt_id, timeout=240)
    losses = _server_losses(entry, node_id)
    ui.page.wait_for_function("""([id, n]) => { const el = document.querySelector(`.ag-loss-curve[data-node-id="${id}"]`);
            return !!el && Number(el.dataset.points) === n && !!el.dataset.stopReason }""",
                              arg=[node_id, len(losses)], timeout=15000)
    curve = _loss_curve(ui, node_id)
    drawn = json.loads(curve["losses"])
    assert len(drawn) == len(losses), (curve, losses)
    for k, (a, b) in enumerate(zip(drawn, losses)):
        assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), \
            f"iteration {k}: the curve shows {a}, the server reported {b}"
    assert curve["plot"], "no .ag-loss-plot in the loss curve"
    assert curve["toggle"], "no input.ag-grad-norm-toggle in the loss curve"
    assert curve["status"], "the loss curve's .ag-loss-status is empty"
    report = entry["outputs"][str(node_id)]["adjoint_guidance_loss"][0]
    assert int(curve["best"]) == report["best_iteration"], (curve, report["best_iteration"])
    assert curve["stop"] == str(report["stop_reason"]), (curve, report["stop_reason"])
    return entry, curve


def test_run_draws_live_loss_curve(ui, server):
    iterations = 5
    node_id = _prepare_adjoint_run(ui, iterations)
    prompt_id, body = ui.run()
    assert body["prompt"][str(node_id)]["inputs"]["iterations"] == iterations
    # live: at least 3 points while the run goes on (the sampler sends one per iteration)
    _wait_live_points(ui, node_id, 3, timeout_s=180)
    assert server.history(prompt_id) is None or not server.history(prompt_id).get("status", {}).get("completed"), \
        "the run had already ended when the third point showed"
    entry, curve = _assert_final_curve(ui, server, node_id, prompt_id)
    assert len(json.loads(curve["losses"])) == iterations + 1   # K gradient steps + the final iterate


def test_cancel_stops_the_run_and_the_next_run_succeeds(ui, server):
    iterations = 1000     # the most the node allows: far more than finish before the cancel
    node_id = _prepare_adjoint_run(ui, iterations=iterations)
    prompt_id, _ = ui.run()
    _wait_live_points(ui, node_id, 2, timeout_s=180)
    # The pack's part starts when the frontend sends the interrupt: how long the page takes
    # to get the click through (a busy page on a loaded machine) is timed apart.
    t_click = time.time()
    with ui.page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/api/interrupt"),
                                timeout=120_000):
        ui.cancel()
    t_sent = time.time()
    try:
        entry = server.wait(prompt_id, timeout=60, check=False)
    except TimeoutError as e:
        raise AssertionError(f"{e}: the interrupt request went out {t_sent - t_click:.1f} s after the click") from e
    t_done = time.time()
    kinds = [kind for kind, _ in entry["status"].get("messages", [])]
    assert "execution_interrupted" in kinds, entry["status"]
    assert t_done - t_sent < 60, f"click to request {t_sent - t_click:.1f} s, request to end {t_done - t_sent:.1f} s"
    curve = _loss_curve(ui, node_id)
    assert curve and int(curve["points"]) < iterations + 1, curve
    # the next run, from the same page, completes
    ui.set_widget(node_id, "iterations", 3)
    ui.set_widget(node_id, "seed", random.randrange(10**6, 10**9))
    prompt_id, _ = ui.run()
    _assert_final_curve(ui, server, node_id, prompt_id)
    assert server.history(prompt_id)["status"]["status_str"] == "success"


# -- e. Prompt Schedule's time line ----------------------------------------------------------
STEPS = 16
SCHEDULE = "0: a red barn\n40%: a red barn at night\n12: a red barn in snow"
SCHEDULE_STARTS = [0, 6, 12]          # at 16 steps: 0, floor(0.4 * 16), 12
MALFORMED = "0: a red barn\n40%: a [red barn"


def _schedule_node(ui):
    node_id = ui.js("""(t) => { const n = LiteGraph.createNode(t); n.pos = [150, 150]; app.graph.add(n);
                               app.canvas.setDirty(true, true); return n.id }""", "AdjointGuidance_PromptSchedule")
    ui.set_widget(node_id, "steps", STEPS)
    ui.set_widget(node_id, "interpolation", "hold")
    ui.focus_node(node_id, 1.0)   # zoom 1 (zoomed out, the frontend hides text boxes)
    if ui.mode == "vue":
        box = ui.vue_node(node_id).locator("textarea").first
    else:
        ui.js("""(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'text')
                 .element.setAttribute('data-ag-test', 'schedule-text-' + id)""", node_id)
        box = ui.page.locator(f'[data-ag-test="schedule-text-{node_id}"]')
    box.wait_for(state="visible")
    return node_id, box


def _type(box, text):
    box.click()
    box.fill("")
    box.press_sequentially(text)


def _timeline(ui, node_id):
    root = ui.page.locator(f'.ag-timeline[data-node-id="{node_id}"]')
    return root if root.count() else ui.page.locator(".ag-timeline")


def test_typing_a_schedule_draws_its_time_line_and_errors(ui):
    from adjoint.prompt_syntax import ScheduleError, parse_schedule
    # the Prompt Schedule example as opened: its time line is drawn for its own widgets
    stem, wf = find_example("AdjointGuidance_PromptSchedule", without=(SAMPLER,))
    ui.load_workflow(wf, stem)
    node = ui.nodes("AdjointGuidance_PromptSchedule")[0]
    widgets = {w["name"]: w["value"] for w in node["widgets"]}
    try:
        ui.page.wait_for_function("""(steps) => [...document.querySelectorAll('.ag-timeline')].some(t =>
                t.dataset.state === 'ok' && t.dataset.steps === String(steps))""", arg=widgets["steps"], timeout=15000)
    except PlaywrightTimeout:
        drawn = ui.js("() => [...document.querySelectorAll('.ag-timeline')].map(t => [t.dataset.state, t.dataset.steps])")
        pytest.fail(f"{stem}: the node has steps={widgets['steps']}, its time line (state, steps) is {drawn}")
    ui.clear_graph()
    node_id, box = _schedule_node(ui)
    # a good schedule: three held keyframes
    _type(box, SCHEDULE)
    assert ui.widget_value(node_id, "text") == SCHEDULE
    ui.page.wait_for_function("""() => [...document.querySelectorAll('.ag-timeline')].some(t => t.dataset.state === 'ok'
            && t.querySelectorAll('.ag-timeline-segment').length === 3)""", timeout=15000)
    root = _timeline(ui, node_id).first
    assert root.get_attribute("data-steps") == str(STEPS)
    segments = [{k: s.get_attribute(f"data-{k}") for k in ("keyframe", "start-step", "end-step", "kind")}
                for s in root.locator(".ag-timeline-segment").all()]
    assert [int(s["keyframe"]) for s in segments] == [0, 1, 2], segments
    assert [int(s["start-step"]) for s in segments] == SCHEDULE_STARTS, segments
    assert {s["kind"] for s in segments} == {"hold"}, segments
    ends = [int(s["end-step"]) for s in segments]
    nexts = SCHEDULE_STARTS[1:] + [STEPS]
    assert ends in ([n - 1 for n in nexts], nexts), f"segment ends {ends} for starts {SCHEDULE_STARTS} at {STEPS} steps"
    # a malformed one: the parser's line and column under the text box
    with pytest.raises(ScheduleError) as parsed:
        parse_schedule(MALFORMED, STEPS, "hold")
    line, col = parsed.value.line, parsed.value.col
    _type(box, MALFORMED)
    ui.page.wait_for_function("""() => [...document.querySelectorAll('.ag-timeline')].some(t => t.dataset.state === 'error')""",
                              timeout=15000)
    error = ui.page.locator(".ag-timeline-error").filter(has_text=re.compile(rf"line {line}\b"))
    error.first.wait_for(state="visible")
    text = error.first.inner_text()
    assert re.search(rf"\bline {line}\b", text) and re.search(rf"\bcol(umn)?\.? {col}\b", text), \
        f"the parser says line {line}, col {col}; the node shows {text!r}"
    tb, eb = box.bounding_box(), error.first.bounding_box()   # under the box, overlapping it sideways
    assert eb["y"] >= tb["y"] and eb["x"] < tb["x"] + tb["width"] and eb["x"] + eb["width"] > tb["x"], (tb, eb)


# -- f. the colour picker ---------------------------------------------------------------------
def test_colour_picker_writes_the_queued_prompt(ui):
    stem, wf = find_example("AdjointGuidance_LossColour")
    ui.load_workflow(wf, stem)
    node_id = ui.nodes("AdjointGuidance_LossColour")[0]["id"]
    if ui.mode == "vue":
        picker = ui.vue_node(node_id).locator("input.ag-colour-picker[type=color]")
    else:
        picker = ui.page.locator(f'input.ag-colour-picker[type=color][data-node-id="{node_id}"]')
        if not picker.count():
            picker = ui.page.locator("input.ag-colour-picker[type=color]")
    picker.first.wait_for(state="attached")
    colour = "#1a7f3c"
    picker.first.fill(colour)       # sets the value and fires input + change, as a pick does
    ui.page.wait_for_function("([id, c]) => app.graph.getNodeById(id).widgets.find(w => w.name === 'colour').value === c",
                              arg=[node_id, colour], timeout=5000)
    # queue from the Run button, catch the POST /prompt on its way (nothing runs)
    captured = {}

    def fake_queue(route):
        captured["body"] = route.request.post_data_json
        route.fulfill(status=200, content_type="application/json",
                      body=json.dumps({"prompt_id": "browser-test", "number": 0, "node_errors": {}}))

    ui.page.route(lambda u: u.endswith("/prompt"), lambda route: fake_queue(route)
                  if route.request.method == "POST" else route.fallback())
    ui.page.locator(RUN_BUTTON).first.click()
    deadline = time.time() + 10
    while "body" not in captured and time.time() < deadline:
        ui.page.wait_for_timeout(50)
    assert "body" in captured, "clicking Run sent no POST /prompt"
    assert captured["body"]["prompt"][str(node_id)]["inputs"]["colour"] == colour
