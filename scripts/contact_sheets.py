"""Contact sheets of the example workflows: one picture per workflow with its inputs, its
results and its loss curve, for the README and for a quick look at a run.

scripts/run_examples.py builds one sheet description per workflow it ran (sheet(): plain
Python, from the API prompt and the server's history entry) and hands them to draw(),
which runs this file under the test host's Python (it has Pillow):

    .host/venv/bin/python scripts/contact_sheets.py SHEETS.json OUT_DIR [--docs DIR]

writes OUT_DIR/<workflow>.png and, with --docs, DIR/<short-name>.png, small enough to commit.
A sheet shows: the workflow's name; its inputs (the prompts and schedules as text, the
loss targets, a swatch of an asked colour, the Adjoint Sampler's settings); every saved
picture at 4x with nearest-neighbour upscaling (64 px pictures stay crisp), labelled with
its Save node's title; the loss curve; the loss from the first to the best iterate; and,
where a stock sampler replays the Adjoint Sampler's optimised noise, how far apart the
two pictures are.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLER = "AdjointGuidance_AdjointSampler"
ZOOM = 4                   # 64 px pictures drawn at 256 px
PAD, GAP = 24, 16
DOCS_MAX_BYTES = 150_000
BACKGROUND, PANEL = (30, 31, 34), (44, 45, 50)
TEXT, MUTED, ACCENT = (232, 232, 236), (165, 168, 178), (127, 209, 255)

# ---- the description of a sheet: plain Python, from the prompt and the history entry -------------


def title_of(node: dict) -> str:
    return node.get("_meta", {}).get("title") or node["class_type"]


def _input_text(node: dict) -> str | None:
    i, kind = node["inputs"], node["class_type"]
    if kind == "CLIPTextEncode":
        return i["text"] or None                     # the empty negative prompt: not an input worth showing
    if kind == "AdjointGuidance_PromptSchedule":
        return f"{i['text']}\n({i['interpolation']}, {i['steps']} steps, {i['scheduler']})"
    if kind == "AdjointGuidance_LossColour":
        return f"mean colour toward {i['colour']}"
    if kind == "AdjointGuidance_LossImageTarget":
        return f"{i['metric']} to the reference, both blurred (sigma {i['blur_sigma']:g} px)"
    if kind == "AdjointGuidance_LossLatentTarget":
        return f"{i['metric']} to the target latent"
    if kind == SAMPLER:
        return (f"optimises the {i['optimize']}: {i['iterations']} iterations, Adam lr {i['learning_rate']:g}; "
                f"seed {i['seed']}, {i['steps']} steps, cfg {i['cfg']:g}, {i['solver']} {i['scheduler']}")
    return None


def inputs(prompt: dict) -> list[dict]:
    """What the workflow was asked: its prompts, schedules, loss targets and sampler settings."""
    rows = []
    for node in prompt.values():
        text = _input_text(node)
        if text:
            row = {"label": title_of(node), "text": text}
            if node["class_type"] == "AdjointGuidance_LossColour":
                row["colour"] = node["inputs"]["colour"]
            rows.append(row)
    return rows


def _label(save: dict) -> str:
    return re.sub(r"^Save( Image)?:\s*", "", title_of(save))


def _is_loss_curve(prompt: dict, save: dict) -> bool:
    src = save["inputs"]["images"]
    return prompt[src[0]]["class_type"] == SAMPLER and src[1] == 3


def pictures(prompt: dict, entry: dict, out: Path) -> list[dict]:
    """Every image the Save Image nodes wrote, in the prompt's order, with its label."""
    found = []
    for nid, node in prompt.items():
        if node["class_type"] != "SaveImage":
            continue
        for img in entry.get("outputs", {}).get(nid, {}).get("images", []):
            found.append({"label": _label(node), "path": str(out / img.get("subfolder", "") / img["filename"]),
                          "loss_curve": _is_loss_curve(prompt, node)})
    return found


def loss_lines(prompt: dict, entry: dict) -> list[str]:
    lines = []
    for nid, node in prompt.items():
        report = entry.get("outputs", {}).get(nid, {}).get("adjoint_guidance_loss")
        if node["class_type"] == SAMPLER and report:
            r = report[0]
            losses = r["losses"]
            lines.append(f"{title_of(node)}: loss {losses[0]:.4g} at the start, {r['best_loss']:.4g} at its best "
                         f"(iterate {r['best_iteration']} of {len(losses) - 1})")
    return lines


def _decoded_from(prompt: dict, save: dict) -> list | None:
    """The LATENT output a Save Image's picture was decoded from (through VAE Decode), if any."""
    src = prompt[save["inputs"]["images"][0]]
    return src["inputs"]["samples"] if src["class_type"] == "VAEDecode" else None


def _replayed_noise(prompt: dict, latent: list) -> list | None:
    """The Adjoint Sampler output a stock SamplerCustomAdvanced replays through Noise From Latent."""
    node = prompt[latent[0]]
    if node["class_type"] != "SamplerCustomAdvanced":
        return None
    noise = prompt[node["inputs"]["noise"][0]]
    return noise["inputs"]["noise"] if noise["class_type"] == "AdjointGuidance_NoiseFromLatent" else None


def replay_pairs(prompt: dict) -> list[list[str]]:
    """[Adjoint Sampler picture, stock replay picture] label pairs: the two should agree."""
    saves = [n for n in prompt.values() if n["class_type"] == "SaveImage"]
    by_latent = {tuple(lat): n for n in saves if (lat := _decoded_from(prompt, n))}
    pairs = []
    for save in saves:
        latent = _decoded_from(prompt, save)
        noise = latent and _replayed_noise(prompt, latent)
        original = noise and by_latent.get((noise[0], 0))
        if original:
            pairs.append([_label(original), _label(save)])
    return pairs


def sheet(stem: str, prompt: dict, entry: dict, out: Path) -> dict:
    """Everything a workflow's contact sheet shows, as JSON-able data."""
    return {"title": stem, "inputs": inputs(prompt),
            "pictures": pictures(prompt, entry, out), "losses": loss_lines(prompt, entry),
            "replays": replay_pairs(prompt)}


def short_name(stem: str) -> str:
    """'Colour Guidance (red to blue)' -> 'colour-guidance-red-to-blue'."""
    return "-".join(re.findall(r"[a-z0-9]+", stem.lower()))


def draw(sheets: list[dict], out_dir: Path, docs: Path | None = None) -> int:
    """Draw the sheets under the test host's Python (Pillow); returns its exit status."""
    import setup_host
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / "sheets.json"
    data.write_text(json.dumps(sheets, indent=1))
    extra = ["--docs", str(docs)] if docs else []
    return subprocess.run([str(setup_host.PY), __file__, str(data), str(out_dir), *extra], cwd=REPO).returncode


# ---- drawing (Pillow) ------------------------------------------------------------------------------


def _fonts():
    sys.path.insert(0, str(REPO / "scripts"))
    from make_thumbnails import font
    return {"title": font(26, True), "label": font(15, True), "text": font(15, False), "small": font(13, False)}


def _wrap(draw, text: str, fnt, width: int) -> list[str]:
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and draw.textlength(trial, font=fnt) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def _text(draw, xy, text: str, fnt, width: int, fill=TEXT) -> int:
    """Wrapped text from xy; returns the y below it."""
    x, y = xy
    height = fnt.size + 5
    for line in _wrap(draw, text, fnt, width):
        draw.text((x, y), line, font=fnt, fill=fill)
        y += height
    return y


def _tile(path: str, loss_curve: bool):
    from PIL import Image
    img = Image.open(path).convert("RGB")
    return img if loss_curve else img.resize((img.width * ZOOM, img.height * ZOOM), Image.NEAREST)


def _tiles(pictures: list[dict]) -> list[tuple]:
    """(image, label) in order: the pictures first, the loss curves last."""
    ordered = [p for p in pictures if not p["loss_curve"]] + [p for p in pictures if p["loss_curve"]]
    return [(_tile(p["path"], p["loss_curve"]), p["label"]) for p in ordered]


def _draw_inputs(draw, fonts, rows: list[dict], y: int, width: int) -> int:
    label_w = 290
    for row in rows:
        below_label = _text(draw, (PAD, y), row["label"], fonts["label"], label_w - 12, MUTED)
        x = PAD + label_w
        if "colour" in row:
            draw.rounded_rectangle((x, y, x + 34, y + 20), radius=4, fill=row["colour"], outline=TEXT)
            x += 46
        y = max(_text(draw, (x, y), row["text"], fonts["text"], width - x - PAD), below_label, y + 22) + 6
    return y


def _draw_tiles(img, draw, fonts, tiles: list[tuple], y: int) -> int:
    x, bottom = PAD, y
    for tile, label in tiles:
        img.paste(tile, (x, y))
        bottom = max(bottom, _text(draw, (x, y + tile.height + 6), label, fonts["label"], tile.width))
        x += tile.width + GAP
    return bottom


def _compare(tiles: list[tuple], a: str, b: str) -> str:
    from PIL import ImageChops
    pics = {label: tile for tile, label in tiles}
    diff = ImageChops.difference(pics[a], pics[b]).getextrema()
    worst = max(hi for _, hi in diff)
    return f"{a} vs {b}: largest pixel difference {worst}/255" + (" (identical)" if worst == 0 else "")


def draw_sheet(sheet: dict):
    from PIL import Image, ImageDraw
    fonts, tiles = _fonts(), _tiles(sheet["pictures"])
    width = max(900, PAD * 2 + sum(t.width for t, _ in tiles) + GAP * (len(tiles) - 1))
    img = Image.new("RGB", (width, 2000), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((PAD, PAD), sheet["title"], font=fonts["title"], fill=TEXT)
    y = _draw_inputs(draw, fonts, sheet["inputs"], PAD + 44, width)
    y = _draw_tiles(img, draw, fonts, tiles, y + 10) + 8
    for line in sheet["losses"] + [_compare(tiles, a, b) for a, b in sheet["replays"]]:
        y = _text(draw, (PAD, y), line, fonts["small"], width - 2 * PAD, ACCENT)
    return img.crop((0, 0, width, y + PAD))


def save_small(img, path: Path, limit: int = DOCS_MAX_BYTES) -> int:
    """PNG under `limit` bytes if it can be: as is, else with a 256-colour palette."""
    img.save(path, optimize=True)
    if path.stat().st_size > limit:
        img.quantize(colors=256, dither=0).save(path, optimize=True)
    return path.stat().st_size


def main(argv: list[str]) -> int:
    data, out_dir = Path(argv[0]), Path(argv[1])
    docs = Path(argv[argv.index("--docs") + 1]) if "--docs" in argv else None
    for s in json.loads(data.read_text()):
        img = draw_sheet(s)
        path = out_dir / f"{s['title']}.png"
        img.save(path, optimize=True)
        print(f"contact sheet {path}")
        if docs:
            docs.mkdir(parents=True, exist_ok=True)
            small = docs / f"{short_name(s['title'])}.png"
            print(f"  for the README: {small} ({save_small(img, small) // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
