"""Train the tiny-shapes DiT on the GPU host (flow matching, velocity prediction).

    PYTHONUNBUFFERED=1 python -m fastvmt_onnx.train --minutes 8 --out $OUT

Data: `data.generate_dataset` pre-generated with numpy on all CPU cores (deterministic in the
seed), kept on the GPU as uint8; augmented by horizontal flips and time reversal (both keep the
caption true: every shape is left-right symmetric). bf16 autocast, AdamW, logit-normal t, 10%
caption dropout to the empty prompt, EMA of the weights (exported), cosine LR over the wall-clock
budget. Writes ckpt.pt (fp32 EMA + raw weights), train_log.json (loss curve, seed, steps, time).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from .model import DiT, DiTConfig, TextEncoder, count_params, rope_tables, set_attention_impl


def build_config(a) -> DiTConfig:
    return DiTConfig(width=a.width, blocks=a.blocks, heads=a.heads, ffn_mult=a.ffn_mult,
                     text_dim=a.text_dim, vocab_size=len(D.VOCAB), max_len=D.MAX_LEN,
                     motion_block=a.motion_block)


class Both(torch.nn.Module):
    def __init__(self, dit, te):
        super().__init__()
        self.dit, self.te = dit, te

    def forward(self, x, t, tokens, cos, sin):
        return self.dit(x, t, self.te(tokens), cos, sin)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clips", type=int, default=96000)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--frames", type=int, default=D.DEFAULT_FRAMES)
    ap.add_argument("--size", type=int, default=D.DEFAULT_H)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn_mult", type=float, default=3.0)
    ap.add_argument("--text_dim", type=int, default=128)
    ap.add_argument("--motion_block", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--max_steps", type=int, default=10 ** 9)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--drop", type=float, default=0.1)
    ap.add_argument("--compile", type=int, default=1)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--init", default=None, help="start from this checkpoint's (EMA) weights")
    ap.add_argument("--state", default=None,
                    help="chain runs through this folder: resume the model, step and schedule clock (state.pt) and the EMA "
                         "(ckpt.pt) from it when present, and write both there at the end (one device call is "
                         "limited to 10 minutes; two files because one returned file is limited to 16 MiB)")
    ap.add_argument("--schedule_minutes", type=float, default=None,
                    help="length of the cosine LR schedule over the whole chain (default: --minutes)")
    ap.add_argument("--data_seed", type=int, default=None, help="dataset seed (default: --seed)")
    ap.add_argument("--eval_n", type=int, default=60, help="held-out captions sampled + checked after training")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    dev = a.device
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = build_config(a)
    dit, te = DiT(cfg).to(dev), TextEncoder(cfg).to(dev)
    if a.init:
        ck0 = torch.load(a.init, map_location="cpu", weights_only=False)
        dit.load_state_dict(ck0["dit"])
        te.load_state_dict(ck0["text"])
        print("initialised from", a.init, ck0.get("training"), flush=True)
    state_file = os.path.join(a.state, "state.pt") if a.state else None
    resume = torch.load(state_file, map_location="cpu", weights_only=False) if state_file and os.path.exists(state_file) else None
    if resume:
        resume["ema"] = torch.load(os.path.join(a.state, "ckpt.pt"), map_location="cpu", weights_only=False)
        dit.load_state_dict(resume["model"]["dit"])
        te.load_state_dict(resume["model"]["te"])
        print(f"resumed from {a.state}: step {resume['step']}, {resume['elapsed']:.0f}s of schedule", flush=True)
    n_params = count_params(dit) + count_params(te)
    print(f"params: dit {count_params(dit)/1e6:.2f}M text {count_params(te)/1e6:.3f}M", flush=True)

    # ---- data (numpy on all cores), uint8 on GPU
    t0 = time.time()
    clips, caps = D.generate_dataset(a.clips, seed=a.seed if a.data_seed is None else a.data_seed, frames=a.frames, H=a.size, W=a.size, workers=a.workers)
    toks = np.stack([D.tokenize(c) for c in caps])
    t_data = time.time() - t0
    print(f"dataset: {clips.shape} in {t_data:.1f}s", flush=True)
    clips_g = torch.from_numpy(clips).to(dev)  # [n,F,H,W,3] uint8
    toks_g = torch.from_numpy(toks).to(dev)
    del clips
    n = clips_g.shape[0]
    pt, ph, pw = cfg.patch_size
    cos, sin = rope_tables(a.frames // pt, a.size // ph, a.size // pw, cfg, dev)

    set_attention_impl("sdpa")
    model = Both(dit, te)
    ema = Both(DiT(cfg), TextEncoder(cfg)).to(dev)
    ema.load_state_dict(model.state_dict())
    if resume:
        ema.dit.load_state_dict(resume["ema"]["dit"])
        ema.te.load_state_dict(resume["ema"]["text"])
    ema.requires_grad_(False)
    decay_params = [p for nme, p in model.named_parameters() if p.ndim >= 2 and "table" not in nme]
    other = [p for nme, p in model.named_parameters() if not (p.ndim >= 2 and "table" not in nme)]
    opt = torch.optim.AdamW([{"params": decay_params, "weight_decay": a.wd}, {"params": other, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.99), fused=dev == "cuda")
    fwd = torch.compile(model) if a.compile else model

    def batch(bs, gen=None):
        idx = torch.randint(0, n, (bs,), device=dev)
        x = clips_g[idx].permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # [B,3,F,H,W]
        flip = torch.rand(bs, device=dev) < 0.5
        x = torch.where(flip[:, None, None, None, None], x.flip(-1), x)
        rev = torch.rand(bs, device=dev) < 0.5
        x = torch.where(rev[:, None, None, None, None], x.flip(2), x)
        tk = toks_g[idx]
        drop = torch.rand(bs, device=dev) < a.drop
        tk = torch.where(drop[:, None], torch.zeros_like(tk), tk)
        return x, tk

    log = dict(seed=a.seed, config=cfg.to_dict(), args=vars(a), params=n_params, dataset_clips=n,
               dataset_seconds=t_data, device=torch.cuda.get_device_name() if dev == "cuda" else "cpu", torch=torch.__version__, loss=[])
    budget = a.minutes * 60
    # The LR schedule runs on a clock shared by chained runs; the optimiser's moments are not
    # carried (they would double the state file), so a resumed run re-warms over 50 steps.
    schedule = (a.schedule_minutes or a.minutes) * 60
    clock0 = resume["elapsed"] if resume else 0.0
    step0 = resume["step"] if resume else 0
    warmup = 50 if resume else a.warmup
    step = 0
    t_start = time.time()
    losses = []
    while True:
        el = time.time() - t_start
        frac = min((clock0 + el) / schedule, 1.0)
        if el >= budget or step >= a.max_steps:
            break
        lr = a.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for gq in opt.param_groups:
            gq["lr"] = lr
        x0, tk = batch(a.batch)
        t = torch.sigmoid(torch.randn(a.batch, device=dev))
        noise = torch.randn_like(x0)
        tt = t[:, None, None, None, None]
        xt = (1 - tt) * x0 + tt * noise
        with torch.autocast(dev, dtype=torch.bfloat16):
            try:
                v = fwd(xt, t, tk, cos, sin)
            except Exception as e:  # torch.compile trouble: fall back to eager
                if fwd is model:
                    raise
                print("compile failed, eager:", repr(e)[:300], flush=True)
                fwd = model
                v = fwd(xt, t, tk, cos, sin)
        loss = F.mse_loss(v.float(), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        d = min(a.ema, (1 + step0 + step) / (10 + step0 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
        losses.append(loss.detach())
        step += 1
        if step == 1:
            t_first = time.time() - t_start
            log["first_step_seconds"] = t_first
            print(f"first step (compile) {t_first:.1f}s", flush=True)
        if step % 50 == 0:
            lv = float(torch.stack(losses).mean())
            losses = []
            log["loss"].append([step, round(time.time() - t_start, 1), lv])
            if step % 250 == 0:
                print(f"step {step} t={time.time()-t_start:.0f}s loss={lv:.4f} lr={lr:.2e}", flush=True)
    if dev == "cuda":
        torch.cuda.synchronize()
    log["steps"] = step
    log["train_seconds"] = time.time() - t_start
    log["final_loss"] = log["loss"][-1][2] if log["loss"] else None
    print(f"trained {step} steps in {log['train_seconds']:.0f}s, final loss {log['final_loss']}", flush=True)
    ck = dict(config=cfg.to_dict(), dit={k: v.float().cpu() for k, v in ema.dit.state_dict().items()},
              text={k: v.float().cpu() for k, v in ema.te.state_dict().items()},
              training={"init": a.init, "init_training": (ck0.get("training") if a.init else None),
                        "batch": a.batch, "lr": a.lr, "data_seed": a.data_seed,
                        **{k: log[k] for k in ("seed", "steps", "train_seconds", "final_loss", "device", "torch",
                                            "dataset_clips", "params")}})
    torch.save(ck, os.path.join(a.out, "ckpt.pt"))
    if a.state:
        os.makedirs(a.state, exist_ok=True)
        if os.path.abspath(a.state) != os.path.abspath(a.out):
            torch.save(ck, os.path.join(a.state, "ckpt.pt"))
        torch.save(dict(step=step0 + step, elapsed=clock0 + log["train_seconds"],
                        model={"dit": {k: v.float().cpu() for k, v in dit.state_dict().items()},
                               "te": {k: v.float().cpu() for k, v in te.state_dict().items()}}), state_file)
    log["chain"] = {"state": a.state, "step_before": step0, "schedule_seconds_before": clock0, "schedule_seconds": schedule}
    with open(os.path.join(a.out, "train_log.json"), "w") as f:
        json.dump(log, f)
    if a.eval_n:
        evaluate(ema, a, log, dev)
        with open(os.path.join(a.out, "train_log.json"), "w") as f:
            json.dump(log, f)
    return ema, log


EVAL_SETTINGS = [(30, 5.0, 1.0), (30, 3.0, 1.0), (30, 3.0, 2.0), (30, 5.0, 2.0), (50, 4.0, 2.0)]


def evaluate(ema, a, log, dev):
    """Sample held-out captions with the torch EMA model at a few settings; run the checker."""
    from . import checker as C
    from .sample import torch_sample
    set_attention_impl("sdpa")
    caps = C.eval_captions(a.eval_n, seed=1)
    log["eval"] = []
    best = None
    for steps, cfgv, shift in EVAL_SETTINGS:
        t0 = time.time()
        clips = torch_sample(ema.dit.eval(), ema.te.eval(), caps, a.frames, a.size, a.size, steps, cfgv, shift, seed=1, device=dev)
        res = [C.check_clip(c, cap) for c, cap in zip(clips, caps)]
        summ = C.summarise(res)
        summ.update(steps=steps, cfg=cfgv, shift=shift, seconds=round(time.time() - t0, 1))
        log["eval"].append(summ)
        print("eval", summ, flush=True)
        score = summ["both_ok"] + 0.5 * summ["coherent"]
        if best is None or score > best[0]:
            best = (score, summ, clips)
    log["eval_best"] = best[1]
    k = min(16, len(best[2]))
    grid = np.concatenate([np.concatenate(best[2][r * 4:(r + 1) * 4], axis=2) for r in range(k // 4)], axis=1)
    D.save_gif(grid, os.path.join(a.out, "eval_samples.gif"), scale=2)


if __name__ == "__main__":
    main()
