"""Regenerate locales/en/ (the names and tooltips the frontend shows) from the node schemas.

    python3 scripts/make_locales.py           # write the files
    python3 scripts/make_locales.py --check   # exit 1 if a committed file differs

ComfyUI's server merges every custom node's `locales/<lang>/main.json` and
`locales/<lang>/nodeDefs.json` (app/custom_node_manager.py) into its `/i18n` answer; the
frontend merges that into its own messages and looks up `nodeDefs.<NodeId>.display_name`,
`.description`, `.inputs.<input>.name|tooltip` and `.outputs.<index>.name|tooltip`, the
layout of the frontend's own src/locales/en/nodeDefs.json. nodeDefs.json is made here
from each node's V1 info (what /object_info serves), so it says exactly what the schemas
in nodes/ say; tests/inprocess/test_locales.py checks that the committed file is current.

main.json names the pack's entry in the template browser's "Extensions" list
(`templateWorkflows.category.<pack folder>`), which is otherwise the raw folder name.

Runs itself under the test host's Python (ComfyUI imported in-process with --cpu).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCALES = REPO / "locales" / "en"
NODE_DEFS = LOCALES / "nodeDefs.json"
MAIN = LOCALES / "main.json"
PACK_TITLE = "Adjoint Guidance"
# The folder the pack is installed under names it in /workflow_templates: the README's
# `git clone ... adjoint_guidance`, or the repository / registry name.
PACK_FOLDERS = ("adjoint_guidance", "adjoint-guidance")


def i18n_key(name: str) -> str:
    """The frontend's normalizeI18nKey: dots would split the message path."""
    return name.replace(".", "_")


def node_entry(info: dict) -> dict:
    """One nodeDefs.json entry from a node's V1 info (the /object_info format)."""
    entry = {"display_name": info.get("display_name") or info["name"]}
    if info.get("description"):
        entry["description"] = info["description"]
    inputs = {}
    for section in ("required", "optional"):
        specs = info.get("input", {}).get(section, {})
        for name in info.get("input_order", {}).get(section, list(specs)):
            options = specs[name][1] if len(specs[name]) > 1 and isinstance(specs[name][1], dict) else {}
            item = {"name": options.get("display_name") or name}
            if options.get("tooltip"):
                item["tooltip"] = options["tooltip"]
            inputs[i18n_key(name)] = item
    if inputs:
        entry["inputs"] = inputs
    outputs = {}
    names, tooltips = info.get("output_name") or [], info.get("output_tooltips") or []
    for i, type_ in enumerate(info.get("output") or []):
        item = {"name": names[i] if i < len(names) and names[i] else type_}
        if i < len(tooltips) and tooltips[i]:
            item["tooltip"] = tooltips[i]
        outputs[str(i)] = item
    if outputs:
        entry["outputs"] = outputs
    return entry


def node_defs(infos: list[dict]) -> dict:
    return {i18n_key(info["name"]): node_entry(info) for info in sorted(infos, key=lambda i: i["name"])}


def main_messages() -> dict:
    return {"templateWorkflows": {"category": {folder: PACK_TITLE for folder in PACK_FOLDERS}}}


def render(obj: dict) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def pack_infos() -> list[dict]:
    """Every node's V1 info, from the pack as ComfyUI loads it (needs the host's Python)."""
    sys.path[:0] = [str(REPO / "tests")]
    from comfy_harness import pack_submodule
    return [cls.GET_NODE_INFO_V1() for cls in pack_submodule("nodes").all_nodes()]


def expected_files(infos: list[dict]) -> dict[Path, str]:
    return {NODE_DEFS: render(node_defs(infos)), MAIN: render(main_messages())}


def _in_host(argv) -> int:
    check = "--check" in argv
    stale = []
    for path, text in expected_files(pack_infos()).items():
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        if check:
            stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO)}")
    for path in stale:
        print(f"out of date: {path.relative_to(REPO)} (run python3 scripts/make_locales.py)", file=sys.stderr)
    return 1 if stale else 0


def main(argv) -> int:
    sys.path[:0] = [str(REPO / "scripts" / "host")]
    import setup_host
    if os.environ.get("AG_MAKE_LOCALES_IN_HOST") == "1":
        return _in_host(argv)
    setup_host.main()
    env = {**os.environ, "AG_MAKE_LOCALES_IN_HOST": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(setup_host.PY), __file__, *argv], env=env, cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
