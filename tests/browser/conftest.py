"""Browser layer: the real ComfyUI frontend, with the pack, in headless Chromium.

Fixtures
    chromium     one Debian Chromium per session (Playwright's sync API; AG_CHROMIUM=PATH
                 for another build). Missing: every browser test skips with the reason,
                 and a full run (AG_REQUIRE_ALL_LAYERS) then fails: "no test passed in
                 layer browser".
    server       the session's real ComfyUI server (tests/conftest.py), the test host's
                 tiny models and the pack in custom_nodes.
    mode         "classic" (LiteGraph canvas) and "vue" (Vue node renderer, Nodes 2.0):
                 tests that take `ui` run once per mode; vue is skipped, with the reason,
                 only on a frontend that has no Comfy.VueNodes.Enabled setting.
    ui           a fresh page per test (comfy_page.ComfyPage), the frontend loaded, with
                 empty local and session storage; every console error / warning, uncaught
                 page error and failed request (4xx, 5xx, network) is recorded. The pages
                 of one mode share a browser context, only for its HTTP cache of the
                 frontend's bundles.

After each test, whatever the pack caused (a message or URL naming adjoint_guidance /
AdjointGuidance / one of our node ids, a failed request under /extensions/adjoint_guidance/
or /adjoint_guidance/ or one whose referer is our extension) fails it; the other messages
are attached to the test's report and summed up once at the end of the run. Requests to
outside hosts (release notes, the node registry) are refused by the test and never blamed.
A failing test leaves a screenshot (its path is in the report).
"""
from __future__ import annotations

import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from comfy_page import MODES, VUE_SETTING, ComfyPage, _normalise, chromium_path, launch_chromium, new_context

_others = Counter()          # messages not caused by the pack, over the whole run
_seen = {}                   # what the browser layer ran on, for the summary
_shots = Path(tempfile.mkdtemp(prefix="ag-browser-shots-"))


# Module scope: Playwright's sync API keeps an asyncio loop running in this thread until it
# stops, and every later asyncio.run() (ComfyUI's in-process start, the websocket tests)
# would fail. The browser layer also runs last (scripts/run_tests.py).
@pytest.fixture(scope="module")
def chromium():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not in the test host's venv: run `python3 scripts/host/setup_host.py` "
                    "(it installs scripts/host/requirements-browser.lock)")
    path = chromium_path()
    if not path.exists():
        pytest.skip(f"no Chromium at {path}: `apt-get install -y --no-install-recommends chromium` "
                    "(scripts/host/setup_host.py does it when run as root), or AG_CHROMIUM=/path/to/chromium")
    try:
        _seen["chromium"] = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                                           timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        _seen["chromium"] = str(path)
    pw = sync_playwright().start()
    browser = launch_chromium(pw)
    try:
        yield browser
    finally:
        browser.close()
        pw.stop()


@pytest.fixture(scope="module")
def contexts(chromium):
    """One browser context per mode, made when first needed (see `ui`)."""
    made = {}

    def context(mode):
        if mode not in made:
            made[mode] = new_context(chromium)
        return made[mode]

    yield context
    for context in made.values():
        context.close()


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


@pytest.fixture
def ui(request, contexts, server, mode):
    page = ComfyPage.open(contexts(mode), server.url, mode)
    _seen["frontend"] = page.frontend_version
    request.node._ag_page = page
    if mode == "vue":
        if not page.has_setting(VUE_SETTING):
            page.close()
            pytest.skip(f"frontend {page.frontend_version} has no Vue node renderer (no setting {VUE_SETTING})")
        if page.setting(VUE_SETTING) is not True:
            page.close()
            pytest.fail(f"{VUE_SETTING} was preset to true but the frontend reads {page.setting(VUE_SETTING)!r}")
        _seen["vue"] = True
    try:
        yield page
    finally:
        page.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    page = getattr(item, "_ag_page", None)
    if page is None:
        return
    failed = outcome.excinfo is not None
    problems = page.log.pack_problems()
    others = page.log.others()
    for m in others:
        _others[_normalise(m.short(200), page.url)] += 1
    if others:
        item.add_report_section("call", "browser messages not caused by the pack",
                                "\n".join(m.short(400) for m in others))
    if problems:
        text = "\n".join(f"  {m.short(600)}" for m in problems)
        if failed:
            item.add_report_section("call", "browser messages caused by the pack", text)
        else:
            failed = True
            outcome.force_exception(AssertionError(
                f"the pack caused {len(problems)} browser console message(s) or failed request(s) "
                f"({page.mode} nodes, frontend {page.frontend_version}):\n{text}"))
    if failed:
        shot = _shots / (item.name.replace("/", "_")[:120] + ".png")
        try:
            page.page.screenshot(path=str(shot))
            item.add_report_section("call", "screenshot", str(shot))
        except Exception as e:  # noqa: BLE001  (a dead page still reports the failure)
            item.add_report_section("call", "screenshot", f"none: {e}")


def pytest_terminal_summary(terminalreporter):
    if not _seen:
        return
    tr = terminalreporter
    tr.write_line(f"browser layer: {_seen.get('chromium', '?')}, ComfyUI frontend {_seen.get('frontend', '?')}, "
                  f"Vue node renderer {'tested' if _seen.get('vue') else 'not tested'}")
    if _others:
        tr.write_line(f"browser messages not caused by the pack ({sum(_others.values())}, "
                      f"{len(_others)} distinct; none fails a test):")
        for text, n in _others.most_common(25):
            tr.write_line(f"  {n:3d}x {text}")
        if len(_others) > 25:
            tr.write_line(f"  ... and {len(_others) - 25} more")
