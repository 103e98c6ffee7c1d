"""The pack inside a real ComfyUI server: it imports cleanly and stock workflows run."""
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
import example_sources  # noqa: E402
from workflows import api_to_ui, ui_to_api  # noqa: E402
from comfy_harness import comfy_version_string  # noqa: E402


def test_pack_imports_without_failure(server):
    # start-up only: later tests provoke run-time errors (and tracebacks) on purpose
    log = server.log_text().split("Starting server")[0]
    pack_lines = [l for l in log.splitlines() if "custom_nodes/adjoint_guidance" in l]
    assert pack_lines, f"the pack was not loaded at all:\n{log[-3000:]}"
    assert not any("IMPORT FAILED" in l for l in pack_lines), "\n".join(pack_lines)
    assert "Traceback" not in "".join(l for l in log.split("Cannot import") if "adjoint_guidance" in l)


def test_web_extension_is_served(server):
    status, body = server.request("GET", "/extensions")
    assert status == 200
    ours = [p for p in body if "adjoint_guidance" in p]
    entry = [p for p in ours if p.endswith("/js/adjoint_guidance.js")]
    assert entry, body
    for path in ours:
        status, _ = server.request("GET", path)
        assert status == 200, path
    status, js = server.request("GET", entry[0])
    assert status == 200 and b"registerExtension" in js


def test_stock_workflow_writes_png(server):
    ui = json.loads((REPO / "example_workflows" / "Text to Image (stock nodes).json").read_text())
    entry = server.run(ui_to_api(ui, server.object_info()))
    assert entry["status"]["status_str"] == "success"
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert images, entry["outputs"]
    png = server.view(images[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (server.output_dir / images[0]["subfolder"] / images[0]["filename"]).exists()


@pytest.mark.parametrize("stem", sorted(example_sources.WORKFLOWS))
def test_example_file_matches_its_source(server, stem):
    """example_workflows/ is generated from scripts/example_sources.py: both say the same."""
    info = server.object_info()
    build, _ = example_sources.WORKFLOWS[stem]
    ui = json.loads((REPO / "example_workflows" / f"{stem}.json").read_text())
    strip = lambda p: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in p.items()}
    assert strip(ui_to_api(ui, info)) == strip(build())
    assert strip(ui_to_api(api_to_ui(build(), info), info)) == strip(build())


def test_bad_prompt_is_rejected_and_server_keeps_serving(server):
    status, body = server.post("/prompt", {"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})
    assert status == 400 and "error" in body
    # the server that answers is the ComfyUI this host was built from
    assert server.get("/system_stats")["system"]["comfyui_version"] == comfy_version_string()
