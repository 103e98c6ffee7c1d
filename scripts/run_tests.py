"""The whole test suite: set up the test host if needed, then pytest over all three layers.

    python3 scripts/run_tests.py [pytest args...]

Runs under the test host's venv (.host/venv). Fails when pytest collects no test, and
(for a full run) when any of the core / inprocess / server layers ran no test.
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


def main(argv):
    t0 = time.time()
    setup_host.main()
    # One BLAS/OpenMP thread per process: the test process and the server it starts share
    # two cores, and oversubscribed threads made a tiny KSampler run 30x slower here.
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if not any(os.path.exists(REPO / a.split("::")[0]) for a in argv):   # no test path: the whole suite
        if not any(a.startswith(("-k", "-m")) for a in argv):
            env["AG_REQUIRE_ALL_LAYERS"] = "1"
        argv = [*argv, "tests"]
    cmd = [str(setup_host.PY), "-m", "pytest", "-c", "tests/pytest.ini", "--rootdir", "tests",
           "-p", "no:cacheprovider", "-rfE", *argv]
    rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
    if rc == NO_TESTS_COLLECTED:
        print("FAIL: pytest collected no tests", file=sys.stderr)
        rc = 1
    print(f"run_tests: exit {rc} after {time.time() - t0:.0f} s (host set-up included)")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
