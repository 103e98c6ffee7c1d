"""What the frontend fetches for the pack, at the URLs frontends 1.32.9 and 1.49.6 request:
node help pages, the templates with their pictures, and the translations.

- Node help (NodeHelpService.fetchCustomNodeHelp): `/extensions/<pack>/docs/<NodeId>/<locale>.md`,
  then `/extensions/<pack>/docs/<NodeId>.md`; <pack> is python_module's second part
  (`custom_nodes.<pack>`); 1.49.6 also takes a text/html answer as "not found".
- Templates: `/api/workflow_templates` lists `{<pack>: [file stems]}`, each template is
  `/api/workflow_templates/<pack>/<stem>.json` and its picture `<stem>.jpg` (custom nodes'
  templates are always asked for as .jpg); the card's title is the stem itself.
- Translations: `/api/i18n`, ComfyUI's merge of every pack's locales/<lang>/*.json.
"""
import io
import json
import re
import urllib.error
import urllib.parse
import urllib.request

import pytest

from comfy_harness import REPO

PREFIX = "AdjointGuidance_"
DOCS = REPO / "web" / "docs"
TEMPLATES = REPO / "example_workflows"


def fetch(server, path):
    """(status, content type, body) of a GET, as a browser sends it."""
    try:
        with urllib.request.urlopen(server.url + path, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def browser_path(*parts: str) -> str:
    """A URL path as fetch() / <img src> encode it (spaces become %20; parentheses stay)."""
    return "/".join(urllib.parse.quote(p, safe="/(),") for p in parts)


def frontend_help(server, pack, node_id, locale="en"):
    """The frontend's lookup of a custom node's help: (the path that answered, its text)."""
    for path in (f"/extensions/{pack}/docs/{node_id}/{locale}.md", f"/extensions/{pack}/docs/{node_id}.md"):
        status, ctype, body = fetch(server, path)
        if status == 200 and "text/html" not in ctype:
            return path, body.decode("utf-8")
    return None, None


@pytest.fixture(scope="module")
def ours(comfy_server):
    info = comfy_server.object_info()
    return {k: v for k, v in info.items() if k.startswith(PREFIX)}


@pytest.fixture(scope="module")
def pack(ours):
    """The pack's folder name, taken from python_module as the frontend does."""
    modules = {v["python_module"] for v in ours.values()}
    assert len(modules) == 1 and next(iter(modules)).startswith("custom_nodes."), modules
    return next(iter(modules)).split(".")[1].split("@")[0]


def mentioned(name: str, text: str) -> bool:
    """`name` in backticks, or inside a range like `weight_1` … `weight_4`."""
    if f"`{name}`" in text:
        return True
    m = re.fullmatch(r"(.*_)(\d+)", name)
    if m:
        for a, b in re.findall(rf"`{re.escape(m[1])}(\d+)`\s*…\s*`{re.escape(m[1])}(\d+)`", text):
            if int(a) <= int(m[2]) <= int(b):
                return True
    return False


def test_every_node_has_a_help_page_where_the_frontend_looks(server, ours, pack):
    assert len(ours) >= 10
    for node_id, info in ours.items():
        path, text = frontend_help(server, pack, node_id)
        assert path == f"/extensions/{pack}/docs/{node_id}.md", (node_id, path)
        assert text.startswith(f"# {info['display_name']}\n"), node_id
        for section in ("## Inputs", "## Output", "## Example", "## Pitfalls"):
            assert section in text, (node_id, section)
        inputs = [n for s in ("required", "optional") for n in info["input"].get(s, {})]
        missing = [n for n in inputs + info["output_name"] if not mentioned(n, text)]
        assert not missing, f"{node_id}: the help page does not mention {missing}"


def test_help_lookup_misses_a_page_that_does_not_exist(server, pack):
    assert frontend_help(server, pack, PREFIX + "NoSuchNode") == (None, None)


def test_every_help_page_belongs_to_a_node(ours):
    pages = {p.stem for p in DOCS.glob("*.md")}
    assert pages == set(ours), (pages ^ set(ours))


def test_every_template_is_listed_and_served_with_its_picture(server, pack):
    from PIL import Image
    listed = server.get("/api/workflow_templates")[pack]
    stems = sorted(p.stem for p in TEMPLATES.glob("*.json"))
    assert sorted(listed) == stems and len(stems) >= 5
    for stem in stems:
        # the card's title is the file name: a readable one
        assert " " in stem and "_" not in stem, stem
        status, _, body = fetch(server, browser_path("/api/workflow_templates", pack, stem + ".json"))
        assert status == 200 and json.loads(body) == json.loads((TEMPLATES / f"{stem}.json").read_text())
        status, ctype, jpg = fetch(server, browser_path("/api/workflow_templates", pack, stem + ".jpg"))
        assert status == 200 and ctype.startswith("image/jpeg"), (stem, status, ctype)
        assert jpg[:3] == b"\xff\xd8\xff" and len(jpg) < 100_000, (stem, len(jpg))
        img = Image.open(io.BytesIO(jpg))
        assert img.format == "JPEG" and img.width == img.height >= 256, (stem, img.size)
    assert sorted(p.stem for p in TEMPLATES.glob("*.jpg")) == stems  # no stray pictures


def test_translations_are_served_to_the_frontend(server, ours, pack):
    en = server.get("/api/i18n")["en"]
    for node_id, info in ours.items():
        entry = en["nodeDefs"][node_id]
        assert entry["display_name"] == info["display_name"]
        assert all(v.get("tooltip") for v in entry["inputs"].values()), node_id
        assert all(v.get("tooltip") for v in entry["outputs"].values()), node_id
    assert en["templateWorkflows"]["category"][pack] == "Adjoint Guidance"
