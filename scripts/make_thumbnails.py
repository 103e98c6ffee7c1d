"""Draw the template browser's picture of every example workflow: example_workflows/<name>.jpg.

    python3 scripts/make_thumbnails.py [names...]

The frontend (1.32.9 and 1.49.6 alike) shows a custom node's template
`example_workflows/<name>.json` with the picture `/api/workflow_templates/<pack>/<name>.jpg`
(always .jpg for custom nodes) in a square card, and the file name as its title; without
the picture it draws a placeholder. Each picture here is a diagram of its workflow: the
nodes in rows from the loaders (top) to the saved results (bottom), the pack's own nodes
highlighted, links coloured by type as the canvas colours them. Square, 512 px, well under
100 KB. Display names of the pack's nodes come from locales/en/nodeDefs.json.

Needs Pillow: runs itself under the test host's Python when this one lacks it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "example_workflows"
SIZE = 512            # the picture, square (the cards are square)
SCALE = 2             # drawn at twice the size, then downsampled: smooth lines and text
MAX_BYTES = 100_000
PACK_PREFIX = "AdjointGuidance_"

BACKGROUND = (30, 31, 34)
STOCK_FILL, STOCK_EDGE, STOCK_TEXT = (53, 53, 56), (90, 90, 96), (214, 214, 218)
PACK_FILL, PACK_EDGE, PACK_TEXT = (34, 86, 140), (120, 190, 255), (255, 255, 255)
# The canvas's link colours (the frontend's default palette); ours for GUIDANCE_LOSS.
LINK_COLOURS = {
    "CLIP": (255, 213, 0), "CLIP_VISION": (168, 218, 220), "CONDITIONING": (255, 169, 49),
    "LATENT": (255, 156, 249), "MASK": (129, 199, 132), "MODEL": (179, 157, 219),
    "VAE": (255, 110, 110), "IMAGE": (100, 181, 246), "GUIDANCE_LOSS": (77, 208, 168),
}
OTHER_LINK = (170, 170, 170)
# Short names for the stock nodes the examples use (their frontend display names, shortened).
STOCK_NAMES = {
    "UNETLoader": "Load Diffusion Model", "CheckpointLoaderSimple": "Load Checkpoint",
    "CLIPLoader": "Load CLIP", "VAELoader": "Load VAE", "CLIPVisionLoader": "Load CLIP Vision",
    "CLIPTextEncode": "CLIP Text Encode", "EmptyLatentImage": "Empty Latent Image",
    "KSampler": "KSampler", "VAEDecode": "VAE Decode", "VAEEncode": "VAE Encode",
    "SaveImage": "Save Image", "PreviewImage": "Preview Image", "SaveLatent": "Save Latent",
    "LoadImage": "Load Image", "SamplerCustomAdvanced": "SamplerCustom Advanced",
    "CFGGuider": "CFG Guider", "KSamplerSelect": "KSampler Select", "BasicScheduler": "Basic Scheduler",
}
SKIPPED = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def display_names() -> dict[str, str]:
    defs = REPO / "locales" / "en" / "nodeDefs.json"
    ours = {k: v["display_name"] for k, v in json.loads(defs.read_text()).items()} if defs.exists() else {}
    return {**STOCK_NAMES, **ours}


def layout(workflow: dict) -> tuple[list[list[dict]], list[tuple]]:
    """Rows of nodes (top to bottom) and the links (from node, from slot, to node, to slot, type)."""
    nodes = {n["id"]: n for n in workflow["nodes"] if n["type"] not in SKIPPED}
    links = [(l[1], l[2], l[3], l[4], l[5]) for l in workflow["links"] if l[1] in nodes and l[3] in nodes]
    parents = {i: {a for a, _, b, _, _ in links if b == i} for i in nodes}
    has_children = {a for a, _, _, _, _ in links}
    level = {}

    def depth(i):
        if i not in level:
            level[i] = 1 + max((depth(p) for p in parents[i]), default=-1)
        return level[i]

    for i in nodes:
        depth(i)
    sinks = [i for i in nodes if i not in has_children and parents[i]]
    last = max(level.values(), default=0) + 1
    for i in sinks:               # everything saved or shown goes to the bottom row
        level[i] = last
    rows = [sorted(i for i in nodes if level[i] == r) for r in sorted(set(level.values()))]
    # order each row by the mean position of its parents (fewer crossings), two sweeps
    for _ in range(2):
        pos = {}
        for row in rows:
            for i in row:
                ps = [pos[p] for p in parents[i] if p in pos]
                pos.setdefault(i, sum(ps) / len(ps) if ps else row.index(i) / max(len(row), 1))
            row.sort(key=lambda i: (pos[i], i))
            for k, i in enumerate(row):
                pos[i] = (k + 0.5) / len(row)
    return [[nodes[i] for i in row] for row in rows], links


def font(size: int, bold: bool):
    from PIL import ImageFont
    names = ["DejaVuSans-Bold.ttf", "DejaVuSans.ttf"] if bold else ["DejaVuSans.ttf"]
    for folder in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/Library/Fonts",
                   "C:/Windows/Fonts"):
        for name in names:
            path = Path(folder) / name
            if path.exists():
                return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def wrap(draw, text: str, fnt, width: float) -> list[str]:
    head, paren, tail = text.partition(" (")
    if paren and draw.textlength(text, font=fnt) > width:     # "Guidance Loss" / "(Latent Target)"
        lines = [head, "(" + tail]
        if all(draw.textlength(l, font=fnt) <= width for l in lines):
            return lines
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=fnt) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line else lines


def fit_label(draw, text: str, width: float, height: float, size: int, bold: bool):
    """The largest font (from size down) at which text wraps into the box."""
    while True:
        fnt = font(size, bold)
        lines = wrap(draw, text, fnt, width)
        line_h = size * 1.2
        if size <= 9 * SCALE or (len(lines) * line_h <= height and
                                 all(draw.textlength(l, font=fnt) <= width for l in lines)):
            return fnt, lines, line_h
        size -= SCALE


def bezier(p0, p3, n=24):
    (x0, y0), (x3, y3) = p0, p3
    dy = max(abs(y3 - y0) * 0.5, 20 * SCALE)
    p1, p2 = (x0, y0 + dy), (x3, y3 - dy)
    pts = []
    for k in range(n + 1):
        t = k / n
        a, b, c, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3
        pts.append((a * x0 + b * p1[0] + c * p2[0] + d * x3, a * y0 + b * p1[1] + c * p2[1] + d * y3))
    return pts


def draw_workflow(workflow: dict):
    from PIL import Image, ImageDraw
    names = display_names()
    rows, links = layout(workflow)
    s = SIZE * SCALE
    img = Image.new("RGB", (s, s), BACKGROUND)
    draw = ImageDraw.Draw(img)
    margin, gap_x = 18 * SCALE, 12 * SCALE
    row_h = (s - 2 * margin) / max(len(rows), 1)
    box_h = min(row_h * 0.62, 70 * SCALE)
    boxes = {}
    for r, row in enumerate(rows):
        n = len(row)
        w = min(170 * SCALE, (s - 2 * margin - gap_x * (n - 1)) / n)
        x = (s - (n * w + (n - 1) * gap_x)) / 2
        y = margin + r * row_h + (row_h - box_h) / 2
        for node in row:
            boxes[node["id"]] = (x, y, x + w, y + box_h, node)
            x += w + gap_x

    def slot_x(box, k, count):
        x0, _, x1, _, _ = box
        return x0 + (x1 - x0) * (k + 1) / (count + 1)

    out_counts = {i: max([fs for a, fs, *_ in links if a == i], default=0) + 1 for i in boxes}
    in_counts = {i: max([ts for _, _, b, ts, _ in links if b == i], default=0) + 1 for i in boxes}
    for a, fs, b, ts, kind in links:
        ba, bb = boxes[a], boxes[b]
        start = (slot_x(ba, fs, out_counts[a]), ba[3])
        end = (slot_x(bb, ts, in_counts[b]), bb[1])
        draw.line(bezier(start, end), fill=LINK_COLOURS.get(kind, OTHER_LINK), width=3 * SCALE, joint="curve")
    for x0, y0, x1, y1, node in boxes.values():
        ours = node["type"].startswith(PACK_PREFIX)
        fill, edge, text = (PACK_FILL, PACK_EDGE, PACK_TEXT) if ours else (STOCK_FILL, STOCK_EDGE, STOCK_TEXT)
        draw.rounded_rectangle((x0, y0, x1, y1), radius=8 * SCALE, fill=fill, outline=edge,
                               width=(3 if ours else 2) * SCALE)
        pad = 6 * SCALE
        label = node.get("title") or names.get(node["type"], node["type"])
        fnt, lines, line_h = fit_label(draw, label, x1 - x0 - 2 * pad, y1 - y0 - 2 * pad,
                                       (17 if ours else 14) * SCALE, ours)
        ty = (y0 + y1) / 2 - len(lines) * line_h / 2
        for line in lines:
            draw.text(((x0 + x1) / 2, ty + line_h / 2), line, font=fnt, fill=text, anchor="mm")
            ty += line_h
    return img.resize((SIZE, SIZE), Image.LANCZOS)


def write_thumbnail(path: Path) -> Path:
    out = path.with_suffix(".jpg")
    img = draw_workflow(json.loads(path.read_text()))
    for quality in (88, 80, 70, 60):
        img.save(out, "JPEG", quality=quality, optimize=True)
        if out.stat().st_size < MAX_BYTES:
            break
    return out


def main(argv) -> int:
    try:
        import PIL  # noqa: F401
    except ImportError:
        if os.environ.get("AG_THUMBNAILS_IN_HOST") == "1":
            raise
        sys.path[:0] = [str(REPO / "scripts" / "host")]
        import setup_host
        setup_host.main()
        env = {**os.environ, "AG_THUMBNAILS_IN_HOST": "1"}
        return subprocess.run([str(setup_host.PY), __file__, *argv], env=env, cwd=REPO).returncode
    paths = [WORKFLOWS / f"{n}.json" for n in argv] if argv else sorted(WORKFLOWS.glob("*.json"))
    for path in paths:
        out = write_thumbnail(path)
        print(f"wrote {out.relative_to(REPO)} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
