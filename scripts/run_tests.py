"""The whole test suite: set up the test host if needed, then pytest over all four layers.

    python3 scripts/run_tests.py [--comfyui PATH] [pytest args...]

Runs under the test host's venv. Without --comfyui the host is ComfyUI 0.3.75 from PyPI
(.host/); with --comfyui PATH (a ComfyUI source tree, e.g. your own checkout, or a .tar.gz
of one) it is built from that tree into .host-<version>/ (scripts/host/setup_host.py).
Prints the ComfyUI version it ran on. Fails when pytest collects no test, and (for a
full run) when any of the core / inprocess / server / browser layers ran no test (the
browser layer needs Debian's chromium: the host set-up installs it when run as root).
"""
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "host"))

import setup_host  # noqa: E402

NO_TESTS_COLLECTED = 5


def split_comfyui(argv):
    """--comfyui PATH / --comfyui=PATH out of argv; the rest goes to pytest."""
    comfyui, rest, it = None, [], iter(argv)
    for a in it:
        if a == "--comfyui":
            comfyui = next(it, None)
            if comfyui is None:
                sys.exit("run_tests: --comfyui needs a path (a ComfyUI tree or .tar.gz)")
        elif a.startswith("--comfyui="):
            comfyui = a.split("=", 1)[1]
        else:
            rest.append(a)
    return comfyui, rest


def main(argv):
    t0 = time.time()
    comfyui, argv = split_comfyui(argv)
    if comfyui:
        setup_host.configure(comfyui=comfyui)
    setup_host.main(browser=True)
    where = f"ComfyUI {setup_host.COMFY_VERSION} ({setup_host.SOURCE or setup_host.HORDE_WHEEL}; host {setup_host.HOST})"
    print(f"run_tests: on {where}", flush=True)
    # One BLAS/OpenMP thread per process: the test process and the server it starts share
    # two cores, and oversubscribed threads made a tiny KSampler run 30x slower here.
    # ADJOINT_GUIDANCE_HOST (set by configure) tells the tests and comfy_server which host.
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if not any(os.path.exists(REPO / a.split("::")[0]) for a in argv):   # no test path: the whole suite
        if not any(a.startswith(("-k", "-m")) for a in argv):
            env["AG_REQUIRE_ALL_LAYERS"] = "1"
        # the layers in this order, the browser last (tests/browser/conftest.py says why)
        argv = [*argv, *(f"tests/{layer}" for layer in ("core", "inprocess", "server", "browser"))]
        # the slowest tests in CI's log: the whole run has to stay within its time budget
        argv = ["--durations=25", *argv]
    # -rfEs: failures, errors and every skip with its reason, so a test skipped on one host
    # says why in CI's log
    cmd = [str(setup_host.PY), "-m", "pytest", "-c", "tests/pytest.ini", "--rootdir", "tests",
           "-p", "no:cacheprovider", "-rfEs", *argv]
    rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
    if rc == NO_TESTS_COLLECTED:
        print("FAIL: pytest collected no tests", file=sys.stderr)
        rc = 1
    print(f"run_tests: exit {rc} on ComfyUI {setup_host.COMFY_VERSION} after {time.time() - t0:.0f} s "
          "(host set-up included)")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
