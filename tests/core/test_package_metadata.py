"""Pack metadata that the Comfy Registry and ComfyUI rely on."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

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
