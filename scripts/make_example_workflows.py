"""Regenerate example_workflows/*.json (frontend format) from scripts/example_sources.py.

    python3 scripts/make_example_workflows.py

Starts the test-host server once to read /object_info, so widget order matches ComfyUI.
The file names are the keys of example_sources.WORKFLOWS: the template browser shows them
as the templates' titles. `python3 scripts/make_thumbnails.py` then draws their pictures.
"""
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "scripts" / "host")]

import example_sources  # noqa: E402
import setup_host  # noqa: E402
from comfy_server import ComfyServer  # noqa: E402
from workflows import api_to_ui  # noqa: E402


def main():
    setup_host.main()
    with ComfyServer(Path(tempfile.mkdtemp(prefix="ag-make-"))) as server:
        info = server.object_info()
    out = REPO / "example_workflows"
    out.mkdir(exist_ok=True)
    for stem, (build, note) in example_sources.WORKFLOWS.items():
        path = out / f"{stem}.json"
        path.write_text(json.dumps(api_to_ui(build(), info, notes=note), indent=1) + "\n")
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
