"""Train the demo model of the toy world, on CPU, from nothing but a seed.

    .host/venv/bin/python demo_model/train.py          # ~80 min on 2 CPU cores
    .host/venv/bin/python demo_model/train.py --only decoder --steps 0 --full-steps 250   # ~7 min
    .host/venv/bin/python demo_model/train.py --only decoder --steps 0 --full-steps 300 --extra-scenes 10000 --seed 20261205   # ~22 min
    .host/venv/bin/python demo_model/train.py --only unet --steps 2800 --bf16   # ~62 min
    .host/venv/bin/python demo_model/train.py --only unet --steps 1500 --bf16 --seed 20261207   # ~33 min
    .host/venv/bin/python demo_model/train.py --only decoder --steps 0 --full-steps 300 --extra-scenes 10000 --seed 20261208 --bf16   # ~10 min

The committed weights are these six commands' output (all in train.log). The decoder runs
give the VAE's decoder more whole-picture steps, the later two on 10 000 new scenes beside
the training ones (held-out PSNR 27.05 -> 27.65 -> 28.22 dB; its encoder, and so the UNet's
latents, unchanged). The UNet runs continue the committed UNet with half of their noise
levels in [MID_T0, MID_T1), where outlines are decided (generated shape accuracy 22.5 % ->
67 % -> 80 %). --bf16: bfloat16 autocast, float32 weights (1.8x faster steps here).

Writes, next to this file:
    toyworld-unet.safetensors   an SD1.5-detectable UNet (UNETLoader), float16
    toyworld-taesd.safetensors  a TAESD-format VAE (VAELoader), float16, with its latent scale
    toyworld-judge.safetensors  the quality classifier (demo_model/judge.py), float16
    train.log                   everything this run printed

The text encoder is not trained: text_encoder.py generates CLIP-L's shape from a frozen
random stream, and the UNet learns to read its random embeddings. Every model is built
from ComfyUI's own classes (comfy.taesd, comfy.supported_models.SD15), so the files have
exactly the layout the stock loaders expect. Needs ComfyUI importable: run it with the
test host's python (scripts/host/setup_host.py makes one), which this script finds itself.

Stages, each a function: render the scenes, embed their captions with ComfyUI's own CLIP
code, train the VAE (encoder and decoder on 32-px crops), encode the scenes, train the
UNet (epsilon prediction on SD1.5's own noise schedule, 10 % empty captions so CFG works,
EMA weights), train the VAE's decoder further on its frozen encoder's latents (crops, then
whole pictures), train the judge.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

SEED = 20261202
N_SCENES = 10000           # training pictures for the VAE and the UNet
VAE_JOINT_STEPS = 700                              # encoder and decoder, 32-px crops
VAE_DECODER_CROP_STEPS, VAE_DECODER_FULL_STEPS = 600, 100   # decoder alone, after the UNet
VAE_BATCH, VAE_LR, LATENT_NOISE = 32, 1e-3, 0.01
UNET_STEPS, UNET_BATCH, UNET_LR, EMA_DECAY = 1700, 64, 4e-4, 0.995
EMPTY_CAPTION_RATE = 0.1
# --only unet: more steps for the committed UNet, half of them at the middle noise levels
UNET_MORE_LR, UNET_MORE_MID_SHARE, MID_T0, MID_T1 = 2e-4, 0.5, 50, 600
# The smallest UNet that stock model detection reads as SD1.5 (model_channels 320,
# context_dim 768), one level at 8x8 latents, with cross-attention on the way in and out.
UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 8, "in_channels": 4, "out_channels": 4,
    "model_channels": 320, "num_res_blocks": [1], "channel_mult": [1],
    "transformer_depth": [1], "transformer_depth_output": [1, 0],
    "transformer_depth_middle": -2, "use_spatial_transformer": True, "legacy": False,
    "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
    "use_linear_in_transformer": False, "adm_in_channels": None,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SD15_SCALE_FACTOR = 0.18215   # comfy.latent_formats.SD15: what the model multiplies VAE latents by

_LOG = None


def log(msg: str):
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if _LOG is not None:
        _LOG.write(line + "\n")
        _LOG.flush()


def find_comfyui() -> Path:
    for host in (REPO / ".host" / "ComfyUI", REPO / ".host-0.33.0" / "ComfyUI"):
        if (host / "comfy").is_dir():
            return host
    raise SystemExit("no ComfyUI found: run python3 scripts/run_tests.py once to build the test host")


def init_weights_(module, generator, zero_out=()):
    """ComfyUI's ops skip weight init; fan-in normal init, unit norms, zero biases, and zero
    for the layers named in zero_out (the residual branches' last layers, as LDM does)."""
    import torch
    for name, p in module.named_parameters():
        with torch.no_grad():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "weight" and p.dim() == 1:      # every 1-D weight is a norm's
                p.fill_(1.0)
            elif leaf == "bias" or p.dim() == 1:
                p.zero_()
            elif any(z in name for z in zero_out):
                p.zero_()
            else:
                p.normal_(0.0, math.sqrt(2.0 / p[0].numel()), generator=generator)


# ---- stage 1: scenes and captions ------------------------------------------------------

def render_scenes():
    import numpy as np
    import toy_world
    scenes, images = toy_world.batch(SEED, N_SCENES, held_out=False)
    log(f"rendered {len(scenes)} training scenes ({len({s.caption() for s in scenes})} distinct captions); "
        f"{len(toy_world.held_out_triples())} (colour, shape, background) triples held out")
    return scenes, np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def embed_captions(captions, text_encoder_path, cache=None):
    """{caption: [77, 768] float16 tensor}, through ComfyUI's own CLIP code, as CLIPTextEncode.
    cache: a file to keep them in (the embedding is deterministic; it costs ~0.1 s a caption)."""
    import comfy.sd
    import torch
    if cache is not None and Path(cache).exists():
        out = torch.load(cache)
        if set(captions) | {""} <= set(out):
            log(f"embedded captions read from {cache}")
            return out
    clip = comfy.sd.load_clip(ckpt_paths=[str(text_encoder_path)], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    clip.load_model()
    unique = sorted(set(captions) | {""})
    out = {}
    with torch.no_grad():
        for i in range(0, len(unique), 64):
            chunk = unique[i:i + 64]
            ids = [[t for t, _ in clip.tokenize(c)["l"][0]] for c in chunk]
            z = clip.cond_stage_model.clip_l.encode(ids)[0]
            for c, e in zip(chunk, z):
                out[c] = e.to(torch.float16)
        for c in unique[:2] + unique[-1:]:   # the batched path is CLIPTextEncode's path
            ref = clip.encode_from_tokens(clip.tokenize(c))
            assert torch.allclose(ref[0].float(), out[c].float(), atol=2e-2), c
    log(f"embedded {len(unique)} captions with the random CLIP-L")
    if cache is not None:
        torch.save(out, cache)
    return out


# ---- stage 2: the VAE ------------------------------------------------------------------

def new_vae(generator):
    import comfy.taesd.taesd as taesd
    enc, dec = taesd.Encoder(), taesd.Decoder()
    # each residual block starts as the identity (its last conv zero), so depth does not blow up
    init_weights_(enc, generator, zero_out=("conv.4",))
    init_weights_(dec, generator, zero_out=("conv.4",))
    return enc, dec


def _autocast(bf16: bool):
    """bfloat16 autocast on the CPU, weights and optimiser state staying float32: 1.8x faster
    steps where the CPU has AVX512-BF16 (measured at batch 64 on 2 EPYC cores)."""
    import torch
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def train_vae(enc, dec, images, generator, crop_steps, full_steps, train_encoder=True, bf16=False):
    """MSE training on 32-px crops (a quarter of the cost, the same convolutions), then on
    whole pictures. With train_encoder=False only the decoder learns: the UNet's latents
    stay valid while the pictures get sharper. bf16: autocast, see _autocast."""
    import torch
    params = list(dec.parameters()) + (list(enc.parameters()) if train_encoder else [])
    opt = torch.optim.Adam(params, lr=VAE_LR)
    data = torch.from_numpy(images)
    total = crop_steps + full_steps
    t0 = time.time()
    for step in range(total):
        warm = min(1.0, (step + 1) / 50)
        for group in opt.param_groups:
            group["lr"] = VAE_LR * warm * (0.5 * (1 + math.cos(math.pi * step / total)) * 0.9 + 0.1)
        x = data[torch.randint(0, len(data), (VAE_BATCH,), generator=generator)]
        if step < crop_steps:
            i, j = (int(v) for v in torch.randint(0, 33, (2,), generator=generator))
            x = x[:, :, i:i + 32, j:j + 32]
        with torch.set_grad_enabled(train_encoder), _autocast(bf16):
            z = enc(x).float()
        # a little latent noise keeps nearby latents decoding to nearby pictures
        with _autocast(bf16):
            y = dec(z + LATENT_NOISE * torch.randn(z.shape, generator=generator)).float()
        mse = (y - x).pow(2).mean()
        loss = mse + (1e-4 * z.pow(2).mean() if train_encoder else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == total - 1:
            psnr = -10 * math.log10(max((y.detach().clamp(0, 1) - x).pow(2).mean().item(), 1e-12))
            log(f"vae {'' if train_encoder else 'decoder '}step {step:5d}/{total}  mse {mse.item():.5f}  "
                f"psnr {psnr:.1f} dB  ({time.time() - t0:.0f} s)")
    return enc.eval(), dec.eval()


def vae_psnr(enc, dec, images) -> float:
    import torch
    data = torch.from_numpy(images)
    with torch.no_grad():
        mse = sum((dec(enc(data[i:i + 256])).clamp(0, 1) - data[i:i + 256]).pow(2).sum().item()
                  for i in range(0, len(data), 256)) / data.numel()
    return -10 * math.log10(mse)


def encode_all(enc, images):
    import torch
    data = torch.from_numpy(images)
    with torch.no_grad():
        return torch.cat([enc(data[i:i + 256]) for i in range(0, len(data), 256)])


def vae_file(enc, dec, mean, std):
    """The VAE as one file VAELoader reads as TAESD; vae_scale/vae_shift make the UNet see
    (raw - mean) / std once ComfyUI's SD1.5 latent format has scaled it."""
    import torch
    sd = {f"taesd_encoder.{k}": v.half() for k, v in enc.state_dict().items()}
    sd.update({f"taesd_decoder.{k}": v.half() for k, v in dec.state_dict().items()})
    sd["vae_scale"] = torch.tensor(SD15_SCALE_FACTOR * std, dtype=torch.float32)
    sd["vae_shift"] = torch.tensor(-mean / (SD15_SCALE_FACTOR * std), dtype=torch.float32)
    return {k: v.contiguous() for k, v in sd.items()}


# ---- stage 3: the UNet -----------------------------------------------------------------

def sd15_alphas_cumprod():
    """SD1.5's noise schedule, as ComfyUI's ModelSamplingDiscrete builds it."""
    import torch
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def build_unet(generator):
    import comfy.supported_models
    import torch
    model_config = comfy.supported_models.SD15(dict(UNET_CONFIG))
    model_config.set_inference_dtype(torch.float32, None)
    unet = model_config.get_model({}).diffusion_model
    init_weights_(unet, generator, zero_out=("out_layers.3", "proj_out", "out.2"))
    for p in unet.parameters():
        p.requires_grad_(True)
    return unet


def sample_timesteps(n, generator, mid_share):
    """SD1.5 timesteps: uniform, except a mid_share of them drawn from [MID_T0, MID_T1), the
    noise levels (sigma ~0.25 to 2 on unit-variance latents) where a shape's outline is decided."""
    import torch
    t = torch.randint(0, 1000, (n,), generator=generator)
    mid = torch.rand(n, generator=generator) < mid_share
    t[mid] = torch.randint(MID_T0, MID_T1, (int(mid.sum()),), generator=generator)
    return t


def train_unet(latents, contexts, empty, generator, checkpoint=None, start=None,
               steps=UNET_STEPS, lr_max=UNET_LR, mid_share=0.0, bf16=False):
    """latents [N, 4, 8, 8] in model space (unit std); contexts [N, 77, 768]; empty [77, 768].
    start: a state dict to continue from (its EMA restarts from it)."""
    import torch
    unet = build_unet(generator).train()
    if start is not None:
        unet.load_state_dict({k: v.float() for k, v in start.items()})
    log(f"unet: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters"
        + (", continued from the committed weights" if start is not None else ""))
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    opt = torch.optim.AdamW(unet.parameters(), lr=lr_max, weight_decay=0.0)
    alphas = sd15_alphas_cumprod()
    t0 = time.time()
    running = None
    for step in range(steps):
        warm = min(1.0, (step + 1) / 100)
        lr = lr_max * warm * (0.5 * (1 + math.cos(math.pi * step / steps)) * 0.9 + 0.1)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(latents), (UNET_BATCH,), generator=generator)
        x0 = latents[idx]
        ctx = contexts[idx].float()
        drop = torch.rand(UNET_BATCH, generator=generator) < EMPTY_CAPTION_RATE
        ctx[drop] = empty.float()
        t = sample_timesteps(UNET_BATCH, generator, mid_share)
        a = alphas[t].view(-1, 1, 1, 1)
        eps = torch.randn(x0.shape, generator=generator)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with _autocast(bf16):
            pred = unet(xt, timesteps=t.float(), context=ctx).float()
        loss = (pred - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(EMA_DECAY, (1 + step) / (10 + step))
            for k, v in unet.state_dict().items():
                ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == steps - 1:
            log(f"unet step {step:5d}/{steps}  loss {running:.4f}  lr {lr:.2e}  ({time.time() - t0:.0f} s)")
        if checkpoint is not None and step % 250 == 249:
            checkpoint(ema)
    return ema


def unet_file(state):
    import torch
    return {k: v.to(torch.float16).contiguous() for k, v in state.items()}


# ---- stage 4: the judge ------------------------------------------------------------------

def train_judge(generator):
    import judge
    import numpy as np
    import toy_world
    import torch
    scenes, images = toy_world.batch(SEED + 1, 8000, held_out=None)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y = torch.tensor([toy_world.labels(s) for s in scenes])
    model = judge.Judge()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = 1500
    t0 = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(x), (64,), generator=generator)
        xb = judge.augment(x[idx], generator)
        logits = model(xb)
        loss = sum(torch.nn.functional.cross_entropy(l, y[idx, i]) for i, l in enumerate(logits))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"judge step {step:5d}/{steps}  loss {loss.item():.4f}  ({time.time() - t0:.0f} s)")
    model.eval()
    acc = judge.accuracy_on_real(model, seed=SEED + 2, n=1000)
    log("judge on 1000 held-out real scenes: " + ", ".join(f"{k} {v:.1%}" for k, v in acc.items()))
    return model


def load_committed_vae():
    """The committed VAE: (encoder, decoder, its file's state dict)."""
    import comfy.taesd.taesd as taesd
    from safetensors.torch import load_file
    sd = load_file(str(HERE / "toyworld-taesd.safetensors"))
    enc, dec = taesd.Encoder(), taesd.Decoder()
    enc.load_state_dict({k[len("taesd_encoder."):]: v.float() for k, v in sd.items() if k.startswith("taesd_encoder.")})
    dec.load_state_dict({k[len("taesd_decoder."):]: v.float() for k, v in sd.items() if k.startswith("taesd_decoder.")})
    return enc.eval(), dec.eval(), sd


def decoder_only(steps: int, full_steps: int, extra_scenes: int, seed: int, bf16: bool = False):
    """More decoder training for the committed VAE, on the training scenes plus extra_scenes
    new ones (so the decoder meets more than 10k pictures), from its own seed."""
    import numpy as np
    import toy_world
    import torch
    from safetensors.torch import save_file
    path = HERE / "toyworld-taesd.safetensors"
    enc, dec, sd = load_committed_vae()
    g = torch.Generator().manual_seed(seed)
    _, images = render_scenes()
    if extra_scenes:
        _, more = toy_world.batch(seed, extra_scenes, held_out=False)
        images = np.concatenate([images, np.ascontiguousarray(more.transpose(0, 3, 1, 2))])
        log(f"vae: {extra_scenes} more training scenes from seed {seed}")
    log(f"vae: training-set PSNR before {vae_psnr(enc, dec, images[:2000]):.2f} dB")
    enc, dec = train_vae(enc, dec, images, g, steps, full_steps, train_encoder=False, bf16=bf16)
    log(f"vae: training-set PSNR after {vae_psnr(enc, dec, images[:2000]):.2f} dB")
    out = vae_file(enc, dec, 0.0, 1.0)
    out["vae_scale"], out["vae_shift"] = sd["vae_scale"], sd["vae_shift"]
    save_file(out, str(path))


def unet_only(steps: int, work: Path, bf16: bool = False, seed: int = SEED + 4):
    """More steps for the committed UNet on the same scenes and captions, its latents from the
    committed encoder (so the VAE file is untouched), from its own seed."""
    import torch
    import text_encoder
    from safetensors.torch import load_file, save_file
    te_path = work / "toyworld-clip-l.safetensors"
    log(f"text encoder {te_path}: sha256 {text_encoder.ensure(te_path)}")
    scenes, images = render_scenes()
    emb = embed_captions([s.caption() for s in scenes], te_path, cache=work / "embeddings.pt")
    enc, _, sd = load_committed_vae()
    scale, shift = sd["vae_scale"].item(), sd["vae_shift"].item()
    mean, std = -shift * scale, scale / SD15_SCALE_FACTOR      # vae_file's inverse
    latents = (encode_all(enc, images) - mean) / std
    log(f"unet: {len(latents)} latents from the committed encoder, std {latents.std().item():.3f}")
    contexts = torch.stack([emb[s.caption()] for s in scenes])
    g = torch.Generator().manual_seed(seed)
    log(f"unet: batches and noise from seed {seed}")
    ema = train_unet(latents, contexts, emb[""], g, start=load_file(str(HERE / "toyworld-unet.safetensors")),
                     steps=steps, lr_max=UNET_MORE_LR, mid_share=UNET_MORE_MID_SHARE, bf16=bf16,
                     checkpoint=lambda st: save_file(unet_file(st), str(work / "unet-checkpoint.safetensors")))
    save_file(unet_file(ema), str(HERE / "toyworld-unet.safetensors"))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(HERE / ".work"), help="scratch folder (text encoder, caches, checkpoints)")
    ap.add_argument("--only", choices=("judge", "decoder", "unet"),
                    help="train only this part further (appends to train.log): 'unet' continues the "
                         "committed UNet for --steps more steps; 'decoder' continues the committed "
                         "VAE's decoder for --steps crop and --full-steps whole-picture steps (its "
                         "encoder, so the UNet's latents, unchanged); 'judge' retrains the judge")
    ap.add_argument("--steps", type=int, default=1000, help="steps for --only unet; crop steps for --only decoder")
    ap.add_argument("--full-steps", type=int, default=VAE_DECODER_FULL_STEPS,
                    help="whole-picture steps for --only decoder")
    ap.add_argument("--extra-scenes", type=int, default=0,
                    help="--only decoder: this many new scenes beside the training ones")
    ap.add_argument("--seed", type=int, help="--only decoder: its generator's and new scenes' seed (default SEED + 3); "
                                             "--only unet: its batches' and noises' seed (default SEED + 4)")
    ap.add_argument("--bf16", action="store_true",
                    help="--only unet/decoder: bfloat16 autocast (float32 weights), 1.8x faster on CPUs with AVX512-BF16")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    global _LOG
    _LOG = open(HERE / "train.log", "a" if args.only else "w")
    comfy_dir = find_comfyui()
    sys.path.insert(0, str(comfy_dir))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import torch
    from safetensors.torch import save_file
    import text_encoder

    log("command: python demo_model/train.py" + ("" if not argv else " " + " ".join(argv)))
    log(f"seed {SEED}; torch {torch.__version__}, {torch.get_num_threads()} threads; ComfyUI at {comfy_dir}")
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    t_start = time.time()

    if args.only == "decoder":
        decoder_only(args.steps, args.full_steps, args.extra_scenes, SEED + 3 if args.seed is None else args.seed, args.bf16)
        log(f"done in {(time.time() - t_start) / 60:.1f} min")
        return
    if args.only == "unet":
        unet_only(args.steps, work, args.bf16, SEED + 4 if args.seed is None else args.seed)
        log(f"done in {(time.time() - t_start) / 60:.1f} min")
        return
    if args.only != "judge":
        te_path = work / "toyworld-clip-l.safetensors"
        log(f"text encoder {te_path}: sha256 {text_encoder.ensure(te_path)}")
        scenes, images = render_scenes()
        emb = embed_captions([s.caption() for s in scenes], te_path, cache=work / "embeddings.pt")

        enc, dec = train_vae(*new_vae(g), images, g, VAE_JOINT_STEPS, 0)
        raw = encode_all(enc, images)
        mean, std = raw.mean().item(), raw.std().item()
        log(f"vae: training-set PSNR {vae_psnr(enc, dec, images[:2000]):.2f} dB; "
            f"latents mean {mean:.3f} std {std:.3f}")
        save_file(vae_file(enc, dec, mean, std), str(HERE / "toyworld-taesd.safetensors"))
        latents = (raw - mean) / std
        contexts = torch.stack([emb[s.caption()] for s in scenes])
        ema = train_unet(latents, contexts, emb[""], g,
                         checkpoint=lambda st: save_file(unet_file(st), str(work / "unet-checkpoint.safetensors")))
        save_file(unet_file(ema), str(HERE / "toyworld-unet.safetensors"))
        enc, dec = train_vae(enc, dec, images, g, VAE_DECODER_CROP_STEPS, VAE_DECODER_FULL_STEPS,
                             train_encoder=False)
        log(f"vae: training-set PSNR after the decoder's own training {vae_psnr(enc, dec, images[:2000]):.2f} dB")
        save_file(vae_file(enc, dec, mean, std), str(HERE / "toyworld-taesd.safetensors"))

    model = train_judge(g)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()},
              str(HERE / "toyworld-judge.safetensors"))
    log(f"done in {(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(main())
