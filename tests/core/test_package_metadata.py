"""Pack metadata that the Comfy Registry and ComfyUI rely on."""
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_pyproject_registry_fields():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["dependencies"] == []  # everything comes with ComfyUI itself
    assert {"Repository"} <= set(project["urls"])
    assert {"PublisherId", "DisplayName", "Icon"} <= set(comfy)
    assert (REPO / "LICENSE").read_text().lstrip().startswith("GNU GENERAL PUBLIC LICENSE")


def test_test_host_pins_every_package():
    lock = (REPO / "scripts" / "host" / "requirements.lock").read_text().splitlines()
    reqs = [l for l in lock if l and not l.startswith("#")]
    assert reqs and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.+]+", l) for l in reqs), reqs
    names = {l.split("==")[0].lower() for l in reqs}
    assert not names & {"torch", "torchvision", "torchaudio"}  # torch only via constraints
    assert "torch==2.13.0" in (REPO / "scripts" / "host" / "constraints.txt").read_text()


def test_core_does_not_import_comfy():
    repo = REPO
    code = ("import sys; sys.path.append(%r); import adjoint; "
            "bad = [m for m in sys.modules if m == 'comfy' or m.startswith('comfy.') or m == 'folder_paths']; "
            "assert not bad, bad") % str(repo)
    subprocess.run([sys.executable, "-c", code], check=True)


def _comfyignore_matcher():
    """.comfyignore as comfy-cli reads it (gitwildmatch); None when there is none."""
    path = REPO / ".comfyignore"
    if not path.exists():
        return None
    patterns = [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.lstrip().startswith("#")]
    try:
        import pathspec
    except ImportError:
        pytest.fail(".comfyignore exists: this test needs pathspec to read it as comfy-cli does")
    return pathspec.PathSpec.from_lines("gitwildmatch", patterns).match_file


def registry_package_files() -> set[str]:
    """The files `comfy node publish` zips (comfy-cli file_utils.zip_files): every git-tracked
    file except .comfyignore matches, plus every file under [tool.comfy].includes (those
    even when ignored). Files git does not ignore but nobody committed yet count as
    tracked: they are what the next commit publishes."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             check=True, capture_output=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the registry package is built from one")
    includes = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]["includes"]
    ignored = _comfyignore_matcher() or (lambda rel: False)
    forced = lambda rel: any(rel == inc or rel.startswith(inc.rstrip("/") + "/") for inc in includes)
    files = {f for f in out.split("\0") if f and (REPO / f).is_file() and (forced(f) or not ignored(f))}
    for inc in includes:
        root = REPO / inc
        files |= {root.relative_to(REPO).as_posix()} if root.is_file() else {
            p.relative_to(REPO).as_posix() for p in root.rglob("*") if p.is_file()}
    return files


def test_registry_package_ships_what_the_frontend_fetches():
    includes = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]["includes"]
    assert {"locales", "web/docs", "example_workflows"} <= set(includes)
    assert all((REPO / inc).exists() for inc in includes), includes
    files = registry_package_files()
    node_ids = sorted(set(re.findall(r'node_id="(AdjointGuidance_\w+)"',
                                     "".join(p.read_text() for p in (REPO / "nodes").glob("*.py")))))
    assert len(node_ids) >= 10
    templates = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    assert len(templates) >= 5
    needed = {"__init__.py", "pyproject.toml", "LICENSE", "web/icon.svg",
              "locales/en/nodeDefs.json", "locales/en/main.json",
              *(f"web/docs/{n}.md" for n in node_ids),
              *(f"example_workflows/{t}.json" for t in templates),
              *(f"example_workflows/{t}.jpg" for t in templates)}
    assert not needed - files, sorted(needed - files)
    # every node has its translation entry and help page, every template its picture
    defs = json.loads((REPO / "locales" / "en" / "nodeDefs.json").read_text(encoding="utf-8"))
    assert sorted(defs) == node_ids
    # and nothing of the test hosts, outputs, caches or the demo model (.comfyignore) goes with it
    junk = [f for f in files if f.startswith((".host", "out/", "bench/results/", "demo_model/")) or "__pycache__" in f
            or f.endswith(".pyc")]
    assert not junk, junk[:10]
