"""What the frontend extension needs from a real ComfyUI server: the schedule time line route,
the extension's files (and the module paths they import), and the live loss-curve events.

- POST /adjoint_guidance/schedule/timeline answers with the node's own time line for the
  widgets (the ui payload a run gives), or the parser's error with its line and column;
  malformed requests get 400 and the server keeps serving.
- The JS files are served and import ComfyUI's app/api modules from paths that resolve to
  /scripts/app.js and /scripts/api.js (a wrong relative path silently disables the extension).
- A prompt queued with the websocket's client id gets one `adjoint_guidance.iteration` event
  per iterate of the Adjoint Sampler, with the losses (and a Combine's parts) of its final ui.
"""
import asyncio
import json
import re
import urllib.error
import urllib.parse
import urllib.request

import pytest

from adjoint.prompt_syntax import ScheduleError, parse_schedule

ROUTE = "/adjoint_guidance/schedule/timeline"
PS, CS = "AdjointGuidance_PromptSchedule", "AdjointGuidance_ConditioningSchedule"
UNET = "tiny-sd15-unet.safetensors"
CLIP = "tiny-clip-l.safetensors"
EXTENSION = "/extensions/adjoint_guidance/"
JS_FILES = {"adjoint_guidance.js", "loss_curve.js", "schedule_timeline.js", "colour_picker.js",
            "node_helpers.js", "svg_plot.js"}


def clip_graph():
    return {"clip": {"class_type": "CLIPLoader",
                     "inputs": {"clip_name": CLIP, "type": "stable_diffusion", "device": "default"}}}


def post_raw(server, path, data: bytes, content_type="application/json"):
    req = urllib.request.Request(server.url + path, data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def timeline_request(server, **body):
    status, answer = server.post(ROUTE, body)
    assert status == 200, answer
    return answer


# --------------------------------------------------------------------------- the route

def test_prompt_schedule_route_gives_the_timeline_of_the_node_run(server):
    text = "0: a [cat:dog:2] on a hill\n30%: a castle at day\n5O%: typo line\n80%: a castle at night"
    widgets = {"text": text, "steps": 20, "interpolation": "linear", "scheduler": "karras"}
    g = clip_graph()
    g["schedule"] = {"class_type": PS, "inputs": {"clip": ["clip", 0], **widgets}}
    g["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["schedule", 0]}}
    (ran,) = server.run(g, timeout=300)["outputs"]["schedule"]["adjoint_guidance_timeline"]
    answer = timeline_request(server, node=PS, **widgets)
    assert answer == {"timeline": ran}
    tl = answer["timeline"]
    # what the frontend draws from it: blends, the inline edit, the typo warning
    assert {s["kind"] for s in tl["segments"]} == {"hold", "blend"}
    assert [k["origin"] for k in tl["keyframes"]][:2] == ["keyframe", "edit"]
    assert len(tl["warnings"]) == 1 and "'5O%:'" in tl["warnings"][0]


def test_conditioning_schedule_route_gives_the_timeline_of_the_node_run(server):
    widgets = {"times": "0, 40%", "steps": 10, "interpolation": "slerp", "scheduler": "normal"}
    g = clip_graph()
    g["a"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "a lighthouse at dusk"}}
    g["b"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "a lighthouse at night"}}
    g["schedule"] = {"class_type": CS, "inputs": {"conditioning_1": ["a", 0], "conditioning_2": ["b", 0], **widgets}}
    g["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["schedule", 0]}}
    (ran,) = server.run(g, timeout=300)["outputs"]["schedule"]["adjoint_guidance_timeline"]
    assert timeline_request(server, node=CS, **widgets) == {"timeline": ran}
    named = timeline_request(server, node=CS, inputs=["conditioning_1", "conditioning_2"], **widgets)
    assert named == {"timeline": ran}


@pytest.mark.parametrize("text, interpolation", [
    ("0: a cat\n40% a dog", "hold"),            # ':' missing after the time
    ("0: a cat\n  12: a [dog:cat", "hold"),     # an unclosed edit
    ("0: a cat\n50%: a dog\n30%: a fox", "hold"),   # keyframes out of order
    ("0: day\n100%: night", "hold"),            # the end of sampling, with hold
])
def test_malformed_text_gives_the_parsers_line_and_column(server, text, interpolation):
    with pytest.raises(ScheduleError) as parsed:
        parse_schedule(text, 20, interpolation)
    answer = timeline_request(server, node=PS, text=text, steps=20, interpolation=interpolation, scheduler="normal")
    error = answer["error"]
    assert (error["line"], error["column"]) == (parsed.value.line, parsed.value.col)
    assert error["detail"] == parsed.value.message and error["input"] == "text"
    # the same words the node gives when the prompt is queued
    g = clip_graph()
    g["schedule"] = {"class_type": PS, "inputs": {"clip": ["clip", 0], "text": text, "steps": 20,
                                                   "interpolation": interpolation, "scheduler": "normal"}}
    g["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["schedule", 0]}}
    status, body = server.post("/prompt", {"prompt": g})
    assert status == 400
    details = [e["details"] for e in body["node_errors"]["schedule"]["errors"]]
    assert any(d.endswith(error["message"]) for d in details), (error, details)


@pytest.mark.parametrize("times, line, column", [
    ("0, 40%, 9x", 1, 9),
    ("0\n 40%\n  5%", 3, 3),            # one time per line; the third comes before the second
    ("", 1, 1),
])
def test_malformed_times_give_line_and_column(server, times, line, column):
    answer = timeline_request(server, node=CS, times=times, steps=20, interpolation="hold", scheduler="normal")
    error = answer["error"]
    assert (error["line"], error["column"]) == (line, column), error
    assert error["message"].startswith("Conditioning Schedule: times: ") and error["input"] == "times"


def test_too_few_connected_conditionings_is_an_error_without_place(server):
    answer = timeline_request(server, node=CS, times="0, 50%", steps=20, interpolation="hold", scheduler="normal",
                              inputs=["conditioning_1"])
    error = answer["error"]
    assert error["line"] is None and "gives 2 times but 1 conditioning is connected" in error["message"]


@pytest.mark.parametrize("body, field", [
    (b"this is not json", "JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"text": "0: a", "steps": 20, "interpolation": "hold", "scheduler": "normal"}).encode(), "node"),
    (json.dumps({"node": "KSampler", "text": "0: a"}).encode(), "node"),
    (json.dumps({"node": PS, "text": 5, "steps": 20, "interpolation": "hold", "scheduler": "normal"}).encode(), "text"),
    (json.dumps({"node": PS, "text": "0: a", "steps": "20", "interpolation": "hold", "scheduler": "normal"}).encode(),
     "steps"),
    (json.dumps({"node": PS, "text": "0: a", "steps": True, "interpolation": "hold", "scheduler": "normal"}).encode(),
     "steps"),
    (json.dumps({"node": PS, "text": "0: a", "steps": 0, "interpolation": "hold", "scheduler": "normal"}).encode(),
     "steps"),
    (json.dumps({"node": PS, "text": "0: a", "steps": 20, "interpolation": "cubic", "scheduler": "normal"}).encode(),
     "interpolation"),
    (json.dumps({"node": PS, "text": "0: a", "steps": 20, "interpolation": "hold"}).encode(), "scheduler"),
    (json.dumps({"node": CS, "times": "0", "steps": 20, "interpolation": "hold", "scheduler": "normal",
                 "inputs": "conditioning_1"}).encode(), "inputs"),
])
def test_bad_requests_are_400_and_the_server_keeps_serving(server, body, field):
    status, answer = post_raw(server, ROUTE, body)
    assert status == 400, answer
    message = answer["error"]["message"]
    assert message.startswith(ROUTE) and field in message, message
    assert server.get("/system_stats")["system"]
    assert "timeline" in timeline_request(server, node=PS, text="0: a", steps=4, interpolation="hold",
                                          scheduler="normal")


def test_the_route_is_also_under_api(server):
    status, answer = server.post("/api" + ROUTE, {"node": PS, "text": "a cat", "steps": 8, "interpolation": "hold",
                                                  "scheduler": "normal"})
    assert status == 200 and answer["timeline"]["steps"] == 8


# --------------------------------------------------------------------------- the extension's files

IMPORT_RE = re.compile(r"""(?:^|;|\s)(?:import|export)\s[^"';]*?from\s*["']([^"']+)["']"""   # import … from "x"
                       r"""|import\s*\(?\s*["']([^"']+)["']""")                               # import "x", import("x")


def import_specifiers(source: str) -> list[str]:
    return [a or b for a, b in IMPORT_RE.findall(source)]


def test_the_js_files_are_served_and_import_comfyuis_modules_from_scripts(server):
    listed = [p for p in server.get("/extensions") if p.startswith(EXTENSION)]
    assert {p.rsplit("/", 1)[1] for p in listed} >= JS_FILES, listed
    resolved = set()
    registering = []
    for path in listed:
        status, source = server.request("GET", path)
        assert status == 200, path
        source = source.decode() if isinstance(source, bytes) else json.dumps(source)
        if "registerExtension(" in source:
            registering.append(path)
        for spec in import_specifiers(source):
            target = urllib.parse.urlparse(urllib.parse.urljoin(server.url + path, spec)).path
            assert target in ("/scripts/app.js", "/scripts/api.js") or target in listed, (path, spec, target)
            resolved.add(target)
    assert {"/scripts/app.js", "/scripts/api.js"} <= resolved
    for module in ("/scripts/app.js", "/scripts/api.js", EXTENSION + "css/adjoint_guidance.css"):
        assert server.request("GET", module)[0] == 200, module
    assert registering == [EXTENSION + "js/adjoint_guidance.js"], "exactly one module registers the extension"


def test_import_specifier_parser_finds_every_form():
    source = ('import { app } from "../../../scripts/app.js";\nimport "./side.js";\n'
              "export { x } from './x.js';\nconst m = await import('./lazy.js');")
    assert import_specifiers(source) == ["../../../scripts/app.js", "./side.js", "./x.js", "./lazy.js"]


# --------------------------------------------------------------------------- live events

def sampler_graph(batch=1, iterations=3, combine=False):
    g = clip_graph()
    g.update({
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "a red fox in the snow"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "blurry"}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": batch}},
        "target": {"class_type": "KSampler", "inputs": {
            "model": ["unet", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
            "seed": 7, "steps": 4, "cfg": 1.0, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0}},
        "loss": {"class_type": "AdjointGuidance_LossLatentTarget",
                 "inputs": {"target": ["target", 0], "metric": "mse", "weight": 1.0}},
    })
    loss = ["loss", 0]
    if combine:
        g["loss_l1"] = {"class_type": "AdjointGuidance_LossLatentTarget",
                        "inputs": {"target": ["target", 0], "metric": "l1", "weight": 1.0}}
        g["combine"] = {"class_type": "AdjointGuidance_LossCombine", "inputs": {
            "loss_1": ["loss", 0], "weight_1": 1.0, "loss_2": ["loss_l1", 0], "weight_2": 0.5,
            "weight_3": 1.0, "weight_4": 1.0}}
        loss = ["combine", 0]
    g["adjoint"] = {"class_type": "AdjointGuidance_AdjointSampler", "inputs": {
        "model": ["unet", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
        "loss": loss, "seed": 1, "steps": 4, "cfg": 1.0, "scheduler": "karras", "solver": "dpmpp_2m",
        "gradient": "exact", "adjoint_steps": 0, "optimize": "noise", "iterations": iterations,
        "learning_rate": 0.1, "renormalize_noise": False, "max_grad_norm": 0.0, "early_stop_patience": 0,
        "denoise": 1.0}}
    g["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["adjoint", 0], "filename_prefix": "live/out"}}
    return g


def run_with_events(server, g):
    """Queue `g` over the websocket's client id; (prompt id, our iteration events, executed ui)."""
    import aiohttp

    async def watch():
        events, executed, prompt_id = [], None, None
        async with aiohttp.ClientSession() as session:
            async for prompt_id, event in server.events(session, g):
                if event is None:
                    continue
                data = event.get("data", {})
                if event["type"] == "adjoint_guidance.iteration":
                    events.append(data)
                elif event["type"] == "executed" and data.get("node") == "adjoint":
                    executed = data["output"]["adjoint_guidance_loss"][0]
                elif event["type"] == "execution_error":
                    raise AssertionError(data.get("exception_message"))
        return prompt_id, events, executed

    return asyncio.run(asyncio.wait_for(watch(), 600))


def test_one_event_per_iterate_with_the_losses_of_the_final_ui(server):
    prompt_id, events, report = run_with_events(server, sampler_graph(iterations=3))
    entry = server.wait(prompt_id)
    assert entry["outputs"]["adjoint"]["adjoint_guidance_loss"][0] == report
    losses = report["losses"]
    assert len(losses) == 4 and len(events) == 4
    assert [e["iteration"] for e in events] == [0, 1, 2, 3]
    assert [e["loss"] for e in events] == losses
    assert [e["per_sample_loss"] for e in events] == [[v] for v in losses]
    assert all(e["node"] == "adjoint" and e["display_node"] == "adjoint" and e["prompt_id"] == prompt_id
               and e["num_iterations"] == 3 and e["num_samples"] == 1 and e["parts"] == {} for e in events)
    assert [e["final"] for e in events] == [False, False, False, True]
    assert events[-1]["stop_reason"] == report["stop_reason"] == "iterations"
    assert events[-1]["best_iteration"] == report["best_iteration"]
    assert events[-1]["best_loss"] == pytest.approx(report["best_loss"])
    assert [e["grad_norm"] for e in events[:3]] == pytest.approx(report["grad_norms"][:3])
    assert all(e["seconds_per_iteration"] > 0 for e in events[:3])
    assert [e["eta_seconds"] for e in events][2:] == [0.0, 0.0]
    assert report["per_sample_losses"] == [losses] and report["parts"] == {} and report["num_samples"] == 1


def test_combine_parts_and_per_sample_losses_in_events_and_ui(server):
    _, events, report = run_with_events(server, sampler_graph(batch=2, iterations=2, combine=True))
    losses, parts = report["losses"], report["parts"]
    assert report["num_samples"] == 2 and len(losses) == 3
    assert sorted(parts) == ["1.latent_target", "2.latent_target"]
    last = {}
    for e in events:                     # the latest event of each iterate has the final totals
        last[e["iteration"]] = e
    assert sorted(last) == [0, 1, 2] and last[2]["final"]
    for k in range(3):
        assert last[k]["loss"] == pytest.approx(losses[k], rel=1e-9)
        assert last[k]["parts"] == pytest.approx({n: parts[n][k] for n in parts}, rel=1e-9)
        assert sum(parts[n][k] for n in parts) == pytest.approx(losses[k], rel=1e-5)
        per_sample = [report["per_sample_losses"][b][k] for b in range(2)]
        assert sum(per_sample) == pytest.approx(losses[k], rel=1e-9)
        assert len(last[k]["per_sample_loss"]) == 2
