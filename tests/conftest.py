"""Shared pytest set-up: one marker per test layer (from the folder), the server fixture.

Layers: tests/core (no ComfyUI), tests/inprocess (ComfyUI imported with --cpu, nodes
called directly), tests/server (a real main.py over HTTP). With AG_REQUIRE_ALL_LAYERS=1
(set by scripts/run_tests.py) a run in which some layer ran no test fails.
"""
from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Appended, not prepended: ComfyUI's own top-level `nodes` module must not be shadowed
# by the pack's nodes/ package when the in-process layer imports ComfyUI.
for _p in (REPO, REPO / "scripts", REPO / "scripts" / "host"):
    if str(_p) not in sys.path:
        sys.path.append(str(_p))

LAYERS = ("core", "inprocess", "server")
_ran = Counter()


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
        if parts and parts[0] in LAYERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        for layer in LAYERS:
            if layer in report.keywords:
                _ran[layer] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    terminalreporter.write_line("tests passed per layer: " + ", ".join(f"{l} {_ran[l]}" for l in LAYERS))


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("AG_REQUIRE_ALL_LAYERS") == "1" and exitstatus == 0:
        missing = [l for l in LAYERS if _ran[l] == 0]
        if missing:
            print(f"\nFAIL: no test passed in layer(s) {', '.join(missing)}", file=sys.stderr)
            session.exitstatus = 1


# -- server layer ------------------------------------------------------------------
@pytest.fixture(scope="session")
def comfy_server():
    from comfy_harness import ComfyServer, host_ready
    if not host_ready():
        pytest.fail("test host missing: run `python3 scripts/host/setup_host.py`")
    server = ComfyServer(Path(tempfile.mkdtemp(prefix="ag-server-")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(comfy_server, request):
    """The shared server; a failing test gets the server log written during it attached."""
    start = len(comfy_server.log_text())
    request.node._ag_server_log = (comfy_server, start)
    yield comfy_server
    if comfy_server.proc.poll() is not None:
        pytest.fail(f"the ComfyUI server died during the test:\n{comfy_server.log_tail()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    attached = getattr(item, "_ag_server_log", None)
    if attached and report.failed:
        server, start = attached
        report.sections.append(("ComfyUI server log (during this test)", server.log_text()[start:][-20000:]))


@pytest.fixture(scope="session")
def comfy_nodes():
    """In-process layer: ComfyUI's `nodes` module with every custom node loaded."""
    from comfy_harness import load_comfy_in_process
    return load_comfy_in_process()
