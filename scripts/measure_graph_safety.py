"""Which families need a GraphSafety remedy, and what the remedy costs (the README's table).

    python3 scripts/measure_graph_safety.py [--comfyui PATH]

For each tiny family of tests/model_families.py, in-process on CPU: one Adjoint Sampler
iteration (noise + prompt, latent target, 4 steps), recording
- remedies: what GraphSafety had to switch on (none / snapshot activations / alias
  inference arguments);
- saved per step: the bytes autograd saves in one forward-with-grad (every packed tensor);
- copied per step: the bytes the snapshots copy in one forward-with-grad, and the
  ratio to what is saved (what the remedy adds while a step's graph is alive).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 2.0 ** 20


def worker() -> list:
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "scripts" / "host")]
    from comfy_harness import load_comfy_in_process, pack_submodule
    load_comfy_in_process()
    import torch
    import model_families
    model_families._load_builders()
    inf = pack_submodule("nodes.inference_tensors")
    node = pack_submodule("nodes.adjoint_sampler").AdjointSampler
    losses = pack_submodule("adjoint.losses")
    saved = {"bytes": 0}
    pack = inf.GUARD.pack

    def counting_pack(t):
        saved["bytes"] += t.numel() * t.element_size()
        return pack(t)
    inf.GUARD.pack = counting_pack
    rows = []
    for name, fam in model_families.FAMILIES.items():
        if fam.unavailable():
            continue
        saved["bytes"], snap0 = 0, inf.GUARD.snapshot_bytes
        g = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            out = node.execute(model=fam.build(), positive=fam.conditioning(1), negative=fam.conditioning(2),
                               latent_image={"samples": torch.zeros(1, *fam.latent_shape)},
                               loss=losses.LatentTarget(torch.randn(1, *fam.latent_shape, generator=g)),
                               seed=1, steps=4, cfg=fam.cfg, scheduler="simple", solver="dpmpp_2m",
                               gradient="exact", adjoint_steps=0, optimize="noise + prompt", iterations=1,
                               learning_rate=0.1, renormalize_noise=True, max_grad_norm=0.0,
                               early_stop_patience=0, denoise=1.0)
        report = out.ui["adjoint_guidance_loss"][0]
        steps = report["network_calls"]["forwards_with_grad"]
        rows.append({"family": name, "remedies": report["graph_safety"],
                     "saved_per_step": saved["bytes"] / steps,
                     "copied_per_step": (inf.GUARD.snapshot_bytes - snap0) / steps})
    return rows


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", help="a ComfyUI tree or tarball (as run_tests.py --comfyui)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker()))
        return 0
    sys.path.insert(0, str(REPO / "scripts" / "host"))
    import setup_host
    setup_host.configure(comfyui=args.comfyui)
    setup_host.main()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADJOINT_GUIDANCE_HOST": str(setup_host.HOST)}
    done = subprocess.run([str(setup_host.PY), __file__, "--worker"], env=env, cwd=REPO, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker failed:\n{done.stderr[-3000:]}")
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"ComfyUI {setup_host.COMFY_VERSION}")
    print("| family | remedies | saved per step (MiB) | copied per step (MiB) | copied / saved |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = r["copied_per_step"] / r["saved_per_step"] if r["saved_per_step"] else 0.0
        print(f"| {r['family']} | {', '.join(r['remedies']) or 'none'} | {r['saved_per_step'] / MiB:.2f} | "
              f"{r['copied_per_step'] / MiB:.2f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
