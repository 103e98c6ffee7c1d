"""The main job: run every workflow in example_workflows/ through a real ComfyUI server.

    python3 scripts/run_examples.py [--out out] [--docs DIR] [--models DIR] [--unet NAME] [--clip NAME] [--vae NAME]

Sets up the test host if it is missing (scripts/host/setup_host.py), starts ComfyUI on a
free loopback port, converts each workflow to the API format with the server's
/object_info, POSTs it to /prompt, waits for it, and leaves everything the workflows
save (images, latents, loss curves) in one output folder, printed at the end. The
server is stopped whatever happens. Then it draws one contact sheet per workflow,
out/contact_sheets/<workflow>.png: its inputs (prompts, schedules, loss targets), its
pictures (4x, nearest neighbour, labelled with their Save nodes' titles), its loss
curve and numbers (scripts/contact_sheets.py, under the host's Python for Pillow);
--docs DIR also writes small copies named for the README (docs/images/examples).

By default the workflows run on the toy-world demo model (demo_model/). To use your own:
--models points ComfyUI at a folder laid out like ComfyUI/models (checkpoints/, unet/,
text_encoders/, vae/, ...); --unet/--clip/--vae replace the model names in every loader.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "host"))

import contact_sheets  # noqa: E402
import setup_host  # noqa: E402
from comfy_server import ComfyServer, PromptFailed  # noqa: E402
from workflows import ui_to_api  # noqa: E402

LOADER_INPUTS = {"unet": ("UNETLoader", "unet_name"), "clip": ("CLIPLoader", "clip_name"),
                 "vae": ("VAELoader", "vae_name")}


def user_models_config(models_dir: Path, workdir: Path) -> Path:
    cfg = workdir / "user_model_paths.yaml"
    subdirs = {"checkpoints": "checkpoints", "unet": "unet", "diffusion_models": "diffusion_models",
               "text_encoders": "text_encoders", "clip": "clip", "vae": "vae",
               "vae_approx": "vae_approx", "clip_vision": "clip_vision", "loras": "loras"}
    cfg.write_text("user_models:\n" f"  base_path: {models_dir.resolve()}\n"
                   + "".join(f"  {k}: {v}\n" for k, v in subdirs.items()))
    return cfg


def override_models(prompt: dict, overrides: dict) -> dict:
    for node in prompt.values():
        for key, name in overrides.items():
            cls, field = LOADER_INPUTS[key]
            if node["class_type"] == cls:
                node["inputs"][field] = name
    return prompt


def saved_files(entry: dict) -> list[str]:
    files = []
    for node_out in entry.get("outputs", {}).values():
        for kind in ("images", "latents", "files"):
            for f in node_out.get(kind, []) or []:
                if isinstance(f, dict) and f.get("filename"):
                    files.append(str(Path(f.get("subfolder", "")) / f["filename"]))
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "out", help="output folder (default: out/)")
    ap.add_argument("--workflows", type=Path, default=REPO / "example_workflows")
    ap.add_argument("--docs", type=Path, help="also write the contact sheets, small, for the README here")
    ap.add_argument("--models", type=Path, help="your own models folder (ComfyUI/models layout)")
    for key in LOADER_INPUTS:
        ap.add_argument(f"--{key}", help=f"{LOADER_INPUTS[key][0]} model name to use in every workflow")
    args = ap.parse_args(argv)

    setup_host.main()
    out = args.out.resolve()
    workdir = out / ".server"
    workdir.mkdir(parents=True, exist_ok=True)
    extra = [user_models_config(args.models, workdir)] if args.models else []
    overrides = {k: getattr(args, k) for k in LOADER_INPUTS if getattr(args, k)}
    failures, sheets = 0, []
    server = ComfyServer(workdir, extra_model_paths=extra, output_dir=out)
    with server:
        info = server.object_info()
        for path in sorted(args.workflows.glob("*.json")):
            t = time.time()
            prompt = override_models(ui_to_api(json.loads(path.read_text()), info), overrides)
            try:
                entry = server.run(prompt, timeout=1800)
            except (PromptFailed, TimeoutError) as e:
                failures += 1
                print(f"FAILED {path.name}: {e}", file=sys.stderr)
                continue
            files = saved_files(entry)
            print(f"ok     {path.name} ({time.time() - t:.1f} s): {', '.join(files) or 'no files'}")
            sheets.append(contact_sheets.sheet(path.stem, prompt, entry, out))
    if sheets and contact_sheets.draw(sheets, out / "contact_sheets", args.docs) != 0:
        failures += 1
        print("FAILED drawing the contact sheets", file=sys.stderr)
    if failures:
        print(f"server log: {server.log_path}", file=sys.stderr)
    print(f"outputs in {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
