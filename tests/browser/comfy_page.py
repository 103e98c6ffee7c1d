"""Drive the real ComfyUI frontend in headless Chromium (Playwright's sync API).

Used by the browser test layer (tests/browser/conftest.py) and by
scripts/take_screenshots.py. No pytest in here.

- `launch_chromium(playwright)`: Debian's Chromium (/usr/bin/chromium, or $AG_CHROMIUM),
  headless, with the flags this machine's closed network needs.
- `ComfyPage.open(browser, server_url, mode)`: a fresh browser context (empty storage) on
  a running ComfyUI server, the frontend loaded and ready, every console message, page
  error and failed request recorded in `.log` (a `ConsoleLog`). mode "classic" draws
  nodes on the LiteGraph canvas, "vue" switches the Vue node renderer ("Nodes 2.0",
  setting Comfy.VueNodes.Enabled) on.
- `ConsoleLog.pack_problems()`: the recorded messages the pack caused (its name, its
  node ids, its extension's or routes' URLs), `others()` the rest.

Selectors come from the frontend's own test ids and aria labels where it has them, and
cover the two pinned frontends: 1.32.9 (ComfyUI 0.3.75) and 1.49.6 (ComfyUI 0.33.0).
"""
from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout

CHROMIUM_ARGS = [
    # as root in a container, no GPU, and no network but loopback: without the
    # background-networking flags Chromium keeps trying (and failing) to reach Google.
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1400, "height": 900}
MODES = ("classic", "vue")
VUE_SETTING = "Comfy.VueNodes.Enabled"
# Preset for every page (the user's server-side settings, as the frontend's own browser
# tests do): no first-run template browser over the canvas, no toast about the frontend
# version, and the node renderer of the mode.
BASE_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.VersionCompatibility.DisableWarnings": True}

PACK = "adjoint_guidance"
_PACK_WORDS = re.compile(r"adjoint_guidance|adjointguidance|adjoint-guidance", re.I)
_PACK_PATH = re.compile(r"/adjoint_guidance/", re.I)   # /extensions/adjoint_guidance/, /adjoint_guidance/..., /api/workflow_templates/adjoint_guidance/

# The Run button: 1.32.9 a split button (test id on the wrapper), 1.49.6 the button itself.
RUN_BUTTON = 'button[data-testid="queue-button"], [data-testid="queue-button"] button[aria-label="Run"]'
CANCEL_BUTTON = 'button[aria-label="Cancel current run"]'
# The node search box: 1.32.9 PrimeVue autocomplete, 1.49.6 the new search dialog.
SEARCH_INPUT = '.comfy-vue-node-search-container input[type="text"], [role="search"] input[role="combobox"]'
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def chromium_path() -> Path:
    return Path(os.environ.get("AG_CHROMIUM") or "/usr/bin/chromium")


def launch_chromium(playwright):
    path = chromium_path()
    if not path.exists():
        raise FileNotFoundError(
            f"no Chromium at {path}: the browser layer drives Debian's chromium "
            "(`apt-get install -y --no-install-recommends chromium`; scripts/host/setup_host.py "
            "does it when run as root), or set AG_CHROMIUM=/path/to/chromium")
    return playwright.chromium.launch(executable_path=str(path), headless=True, args=CHROMIUM_ARGS)


def widget_inputs(spec: dict) -> list[str]:
    """The inputs of an /object_info entry that the frontend shows as widgets, in order."""
    out = []
    for section in ("required", "optional"):
        for name, s in spec.get("input", {}).get(section, {}).items():
            kind = s[0]
            opts = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
            if (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput"):
                out.append(name)
    return out


# -- console and network log ------------------------------------------------------------
@dataclass
class Message:
    kind: str          # console.error, console.warning, pageerror, requestfailed, http <status>, blocked
    text: str
    url: str = ""      # the resource (requests) or where the console message comes from
    referer: str = ""  # for requests: the document or module that asked for it
    test_step: str = ""

    def short(self, limit=240) -> str:
        text = " ".join(self.text.split())
        where = f" [{self.url}]" if self.url and self.url not in text else ""
        via = f" (from {self.referer})" if self.referer and _PACK_PATH.search(self.referer) else ""
        s = f"{self.kind}: {text}{where}{via}"
        return s if len(s) <= limit else s[:limit - 1] + "…"


@dataclass
class ConsoleLog:
    """Everything the page said or failed to load; `pack_problems()` are the pack's."""
    base_url: str
    messages: list[Message] = field(default_factory=list)

    def is_local(self, url: str) -> bool:
        return url.startswith(self.base_url) or url.startswith(("data:", "blob:")) or not url

    def caused_by_pack(self, m: Message) -> bool:
        if m.kind == "blocked":            # an outside request the test itself refused
            return False
        if m.kind.startswith("console") and m.url and not self.is_local(m.url):
            return False                   # "Failed to load resource" of a refused outside URL
        if m.kind.startswith(("http", "requestfailed")):
            path = urllib.parse.urlparse(m.url).path
            return bool(_PACK_PATH.search(path) or _PACK_WORDS.search(path)
                        or (m.referer and _PACK_PATH.search(urllib.parse.urlparse(m.referer).path)))
        return bool(_PACK_WORDS.search(m.text) or _PACK_PATH.search(m.url or ""))

    def pack_problems(self) -> list[Message]:
        return [m for m in self.messages if self.caused_by_pack(m)]

    def others(self) -> list[Message]:
        return [m for m in self.messages if not self.caused_by_pack(m)]

    def mark(self) -> int:
        return len(self.messages)

    def since(self, mark: int) -> list[Message]:
        return self.messages[mark:]


def _normalise(text: str, base_url: str) -> str:
    return re.sub(r":\d{2,5}/", ":PORT/", text.replace(base_url, ""))


# -- the page ---------------------------------------------------------------------------
_FRESH_STORAGE = """(() => {  // the first document of each page starts with empty storage
    if (!sessionStorage.getItem('ag-browser-test')) {
        localStorage.clear();
        sessionStorage.setItem('ag-browser-test', '1');
    }
})()"""


_PIXEL_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360606060000000050001a5f645400000000049454e44ae426082")


def _stub_stock_template_media(route):
    path = urllib.parse.urlparse(route.request.url).path.lower()
    if path.endswith((".webp", ".png", ".jpg", ".jpeg", ".gif", ".avif")):
        route.fulfill(status=200, content_type="image/png", body=_PIXEL_PNG)
    elif path.endswith((".mp4", ".webm", ".mp3", ".wav", ".ogg", ".flac", ".glb")):
        route.fulfill(status=204, body=b"")
    else:
        route.fallback()


def new_context(browser, viewport: dict | None = None):
    """A browser context for ComfyPage.open: the test viewport, storage emptied per page."""
    context = browser.new_context(viewport=viewport or VIEWPORT)
    context.set_default_timeout(20000)
    context.add_init_script(_FRESH_STORAGE)
    return context

def post_settings(server_url: str, settings: dict):
    req = urllib.request.Request(server_url + "/settings", data=json.dumps(settings).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


class ComfyPage:
    """One browser context + page on the frontend of a running ComfyUI server."""

    def __init__(self, context, page, server_url: str, mode: str, log: ConsoleLog):
        self.context, self.page, self.url, self.mode, self.log = context, page, server_url, mode, log
        self.frontend_version = None

    @classmethod
    def open(cls, browser_or_context, server_url: str, mode: str = "classic", settings: dict | None = None,
             timeout_ms: int = 60000, viewport: dict | None = None) -> "ComfyPage":
        """A new page. Given a Browser: in a new context of its own (closed with the page);
        given a BrowserContext (see `new_context`): a new page in it, which keeps the HTTP
        cache of the frontend's bundles (a page loads ~40 % faster) but starts with
        empty local and session storage all the same."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        post_settings(server_url, {**BASE_SETTINGS, VUE_SETTING: mode == "vue", **(settings or {})})
        own = hasattr(browser_or_context, "new_context")   # a Browser, not a BrowserContext
        context = new_context(browser_or_context, viewport) if own else browser_or_context
        page = context.new_page()
        log = ConsoleLog(server_url)
        self = cls(context if own else None, page, server_url, mode, log)
        page.on("console", self._on_console)
        page.on("pageerror", lambda e: log.messages.append(
            Message("pageerror", f"{e.name}: {e.message}\n{e.stack or ''}")))
        page.on("requestfailed", self._on_request_failed)
        page.on("response", self._on_response)
        # Nothing leaves the machine: outside URLs (release notes, the node registry) are
        # refused here, recorded as "blocked", and never blamed on the pack.
        page.route(lambda u: not log.is_local(u), self._block)
        # The stock templates' media (hundreds of thumbnails, videos and sounds under
        # /templates/, ComfyUI's template packages, not ours) are answered with a 1x1 PNG
        # or nothing: decoding them made each opening of the template browser take
        # seconds on 2 cores. Our pack's thumbnails (/api/workflow_templates/
        # adjoint_guidance/...) are served for real.
        page.route(lambda u: log.is_local(u) and urllib.parse.urlparse(u).path.startswith("/templates/"),
                   _stub_stock_template_media)
        page.goto(server_url, timeout=timeout_ms)
        self.wait_ready(timeout_ms)
        return self

    # listeners
    def _on_console(self, msg):
        if msg.type in ("error", "warning"):
            url = (msg.location or {}).get("url", "")
            if msg.text.startswith("Failed to load resource") and not self.log.is_local(url):
                return   # Chromium's line for an outside request we refused: "blocked" has it
            self.log.messages.append(Message(f"console.{msg.type}", msg.text, url))

    def _on_request_failed(self, req):
        if not self.log.is_local(req.url):
            return   # refused by _block, already recorded
        failure = req.failure or ""
        if "ERR_ABORTED" in failure and self._http_failed(req.url):
            return   # a 404 Chromium then aborts: the response already said it
        self.log.messages.append(Message("requestfailed", f"{req.method} {req.url}: {failure}",
                                         req.url, req.headers.get("referer", "")))

    def _http_failed(self, url):
        return any(m.url == url and m.kind.startswith("http") for m in self.log.messages)

    def _on_response(self, resp):
        if resp.status >= 400 and self.log.is_local(resp.url):
            req = resp.request
            self.log.messages.append(Message(f"http {resp.status}", f"{req.method} {resp.url} -> {resp.status}",
                                             resp.url, req.headers.get("referer", "")))

    def _block(self, route):
        self.log.messages.append(Message("blocked", f"{route.request.method} {route.request.url}",
                                         route.request.url))
        route.abort()

    def close(self):
        if self.context is not None:
            self.context.close()
        else:
            self.page.close()

    # basics
    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def wait_ready(self, timeout_ms=60000):
        self.page.wait_for_function(
            "() => window.app && window.app.extensionManager && window.app.graph && window.app.canvas"
            " && (window.app.vueAppReady ?? true)", timeout=timeout_ms)
        if self.page.locator(".p-blockui-mask").count():
            self.page.locator(".p-blockui-mask").first.wait_for(state="hidden", timeout=timeout_ms)
        self.frontend_version = self.js("() => window.__COMFYUI_FRONTEND_VERSION__ ?? null")

    def has_setting(self, setting_id: str) -> bool:
        return bool(self.js("(id) => !!app.extensionManager.setting.settings?.[id]", setting_id))

    def setting(self, setting_id: str):
        return self.js("(id) => app.extensionManager.setting.get(id)", setting_id)

    def next_frame(self):
        self.js("() => new Promise(requestAnimationFrame)")

    def clear_graph(self):
        self.js("() => { app.graph.clear(); app.canvas.setDirty(true, true) }")
        self.next_frame()
        self.next_frame()

    def nodes(self, node_type: str | None = None) -> list[dict]:
        return self.js("""(t) => app.graph.nodes.filter(n => !t || n.type === t).map(n => ({
            id: n.id, type: n.type, title: n.title,
            widgets: (n.widgets || []).map(w => ({name: w.name, label: w.label ?? null, type: w.type,
                                                   value: (typeof w.value === 'object' ? null : w.value)}))}))""",
                       node_type)

    def widget_value(self, node_id, name):
        return self.js("""([id, name]) => app.graph.getNodeById(id).widgets.find(w => w.name === name)?.value""",
                       [node_id, name])

    def set_widget(self, node_id, name, value):
        """Set a widget's value as the frontend does (its callback runs; the canvas redraws)."""
        ok = self.js("""([id, name, value]) => {
            const node = app.graph.getNodeById(id);
            const w = node?.widgets?.find(w => w.name === name);
            if (!w) return false;
            w.value = value;
            w.callback?.(w.value, app.canvas, node, [0, 0], null);
            node.onWidgetChanged?.(name, value, undefined, w);
            app.graph.setDirtyCanvas(true, true);
            return true }""", [node_id, name, value])
        if not ok:
            raise KeyError(f"node {node_id} has no widget {name!r}")

    def load_workflow(self, workflow: dict, name: str | None = None):
        """Open a workflow (frontend JSON) as the app does when a file is dropped on it."""
        self.js("""async ([wf, name]) => { await app.loadGraphData(wf, true, true, name) }""", [workflow, name])
        self.next_frame()

    # node search box
    def open_search(self, x=700, y=450):
        """Double-click the empty canvas at (x, y) until the node search box opens."""
        # No single click before it: within the double-click interval a third click would
        # land on the result list that just opened under the pointer and pick its first entry.
        box = self.page.locator(SEARCH_INPUT)
        for _ in range(3):
            self.next_frame()
            self.page.mouse.dblclick(x, y, delay=5)
            try:
                box.first.wait_for(state="visible", timeout=2500)
                return box.first
            except PlaywrightTimeout:
                self.page.keyboard.press("Escape")
                self.page.wait_for_timeout(600)   # past the double-click interval
        raise AssertionError("double-clicking the canvas did not open the node search box")

    def add_node_from_search(self, display_name: str, node_type: str, x=700, y=450) -> int:
        """Search by display name, pick our pack's result; returns the new node's id."""
        before = {n["id"] for n in self.nodes(node_type)}
        box = self.open_search(x, y)
        box.fill(display_name)
        option = (self.page.get_by_role("option").filter(has_text=display_name)
                  .filter(has_text=re.compile(r"adjoint[ _]guidance", re.I)))
        option.first.wait_for(state="visible")
        option.first.click()
        box.wait_for(state="hidden")
        # 1.49.6 drops the new node as a "ghost" that follows the mouse: a click places it.
        # Move first, as a hand does: the ghost then hangs below the pointer, which is on
        # the canvas (unmoved, the pointer can be over one of the ghost's DOM widgets,
        # which takes the click, and the ghost stays).
        if self.js("() => app.canvas.state?.ghostNodeId != null"):
            self.page.mouse.move(x + 4, y + 4, steps=2)
            self.page.mouse.move(x, y, steps=2)
            self.page.mouse.click(x, y)
            self.page.wait_for_function("() => app.canvas.state?.ghostNodeId == null")
        self.page.wait_for_function(
            "([t, n]) => app.graph.nodes.filter(x => x.type === t).length > n", arg=[node_type, len(before)])
        new = [n["id"] for n in self.nodes(node_type) if n["id"] not in before]
        assert len(new) == 1, f"searching {display_name!r} added {len(new)} {node_type} nodes"
        return new[0]

    # Vue nodes
    def vue_node(self, node_id):
        """The Vue-rendered node's root element (not our own widgets, which also carry data-node-id)."""
        return self.page.locator(f'[data-node-id="{node_id}"]:not(.ag-loss-curve):not(.ag-timeline)').first

    def vue_nodes_rendered(self) -> int:
        return self.page.locator('[data-node-id] [data-testid="node-title"]').count()

    # template browser
    def open_template(self, stem: str):
        """The workflow template browser, our pack's section, the card of `stem`."""
        dialog = self.page.get_by_role("dialog").filter(has=self.page.get_by_test_id("template-workflows-content"))
        # Loading a template closes its dialog at once, but the dialog's hide animation ends
        # later in onAfterHide, which closes by key: a browser opened in between gets closed
        # by it (frontend 1.49 dialogStore; seen once in CI on a loaded 2-core machine, right
        # after the previous template had loaded). A user clicks again; so do we.
        for attempt in range(3):
            self.js("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
            try:
                dialog.first.wait_for(state="visible", timeout=10000)
                break
            except PlaywrightTimeout:
                if attempt == 2:
                    raise
        section = dialog.first.locator("nav").get_by_role("button").filter(
            has_text=re.compile(r"^\s*adjoint[ _]guidance\s*$", re.I))
        section.first.click(timeout=60000)   # the section appears once the pack's list is in
        card = dialog.first.get_by_test_id(f"template-workflow-{stem}")
        card.wait_for(state="visible")
        card.click()
        dialog.first.wait_for(state="hidden")

    def visible_dialogs(self) -> list[str]:
        return [d.inner_text()[:500] for d in self.page.get_by_role("dialog").all() if d.is_visible()]

    def visible_toasts(self, severities=("warn", "error")) -> list[str]:
        sel = ", ".join(f".p-toast-message-{s}" for s in severities)
        return [t.inner_text()[:300] for t in self.page.locator(sel).all() if t.is_visible()]

    # running
    def run(self):
        """Click Run; returns (prompt_id, the POST /prompt body the frontend sent)."""
        with self.page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as info:
            self.page.locator(RUN_BUTTON).first.click()
        resp = info.value
        body = resp.request.post_data_json
        data = resp.json()
        assert resp.status == 200, f"the server refused the queued prompt ({resp.status}): {json.dumps(data)[:2000]}"
        return data["prompt_id"], body

    def cancel(self):
        button = self.page.locator(CANCEL_BUTTON).first
        button.wait_for(state="visible")
        self.page.wait_for_function("(sel) => { const b = document.querySelector(sel); return b && !b.disabled }",
                                    arg=CANCEL_BUTTON)
        button.click()

    def node_rect(self, node_id) -> dict:
        """The node's rectangle on the page (title bar included): x, y, width, height."""
        if self.mode == "vue":
            return self.vue_node(node_id).bounding_box()
        return self.js("""(id) => {
            const n = app.graph.getNodeById(id), ds = app.canvas.ds;
            const th = LiteGraph.NODE_TITLE_HEIGHT, r = app.canvas.canvas.getBoundingClientRect();
            return {x: r.left + (n.pos[0] + ds.offset[0]) * ds.scale, y: r.top + (n.pos[1] - th + ds.offset[1]) * ds.scale,
                    width: n.size[0] * ds.scale, height: (n.size[1] + th) * ds.scale} }""", node_id)

    def screenshot_node(self, node_id, path, pad=16, down_to: str | None = None):
        """A PNG of one node as drawn (canvas or Vue element, DOM widgets included);
        down_to: a CSS selector whose bottom edge ends the picture (e.g. a widget)."""
        r = self.node_rect(node_id)
        bottom = r["y"] + r["height"] + pad
        if down_to:
            box = self.page.locator(down_to).first.bounding_box()
            if box:
                bottom = min(bottom, box["y"] + box["height"] + 6)
        x, y = max(r["x"] - pad, 0), max(r["y"] - pad, 0)
        self.page.screenshot(path=str(path), clip={"x": x, "y": y, "width": r["width"] + 2 * pad,
                                                   "height": bottom - y})

    def focus_node(self, node_id, scale=1.0, x=300, y=200):
        """Put a node's top left corner at (x, y) of the page, at the given zoom."""
        self.js("""([id, s, x, y]) => { const n = app.graph.getNodeById(id), ds = app.canvas.ds;
            const r = app.canvas.canvas.getBoundingClientRect();
            ds.scale = s; ds.offset[0] = -n.pos[0] + (x - r.left) / s; ds.offset[1] = -n.pos[1] + (y - r.top) / s;
            app.canvas.setDirty(true, true) }""", [node_id, scale, x, y])
        self.next_frame()
        self.next_frame()


def wait_until(predicate, timeout=30.0, interval=0.1, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
