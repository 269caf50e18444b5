"""PyTorch baselines for the AMF loss (forward and forward+backward), on one GPU.

Variants (all head-averaged logits, tau=2, soft-argmax, MSE vs a reference, autograd):
  dense-all   every ordered frame pair, all keys: one einsum to [F, F, S, S] + softmax (DiTFlow)
  dense-span4 pairs j-i in 1..3 (FastVMT's temporal window), all keys of frame j
  gather-r10  pairs j-i in 1..3, keys gathered from a 21x21 query-centred window (clamped at
              the border), one frame per checkpointed chunk (the full gather would need ~42 GB)
Usage: python3 amf_torch.py [--ours ours.json]   (ours.json from examples/amf_bench.rs)
"""
import argparse
import json
import math

import torch
from torch.utils.checkpoint import checkpoint

TAU = 2.0
SHAPES = [("small", 12, 9, 15, 26, 128), ("fastvmt", 12, 21, 30, 52, 128), ("2x", 12, 21, 42, 74, 128)]


def timed(fn, reps=5, warm=2):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def soft_disp(logits, kpos, qpos):
    a = torch.softmax(logits.float(), dim=-1)
    return torch.einsum("...k,...kc->...c", a, kpos) - qpos


def dense_all(qc, kc, h, w, scale, ref):
    F, S, _ = qc.shape
    logits = torch.einsum("isd,jtd->ijst", qc, kc) * scale
    pos = grid_pos(h, w, qc.device)
    disp = soft_disp(logits, pos.expand(F, F, S, S, 2) if False else pos, pos)
    off = ~torch.eye(F, dtype=torch.bool, device=qc.device)
    return ((disp - ref) ** 2)[off].mean()


def grid_pos(h, w, dev):
    ys, xs = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    return torch.stack([ys.reshape(-1), xs.reshape(-1)], -1).float()


def dense_span(qc, kc, h, w, scale, ref, span=4):
    F = qc.shape[0]
    pos = grid_pos(h, w, qc.device)
    loss = 0.0
    for o in range(1, span):
        logits = torch.einsum("isd,itd->ist", qc[: F - o], kc[o:]) * scale
        disp = soft_disp(logits, pos, pos)
        wgt = 1.0 - 0.2 * (o - 1) / (span - 2)
        loss = loss + wgt * ((disp - ref[o - 1][: F - o]) ** 2).mean()
    return loss


def window_index(h, w, r, dev):
    wh, ww = min(2 * r + 1, h), min(2 * r + 1, w)
    ys = torch.arange(h, device=dev)
    xs = torch.arange(w, device=dev)
    r0 = (ys - r).clamp(0, h - wh)
    c0 = (xs - r).clamp(0, w - ww)
    ky = r0[:, None, None, None] + torch.arange(wh, device=dev)[None, None, :, None]
    kx = c0[None, :, None, None] + torch.arange(ww, device=dev)[None, None, None, :]
    idx = (ky * w + kx).reshape(h * w, wh * ww)
    return idx


def gather_window(qc, kc, h, w, scale, ref, span=4, r=10):
    F = qc.shape[0]
    pos = grid_pos(h, w, qc.device)
    idx = window_index(h, w, r, qc.device)
    kpos = pos[idx]  # [S, W, 2]

    def one(qf, kf, rf):
        kw = kf[idx]  # [S, W, D]
        logits = torch.einsum("sd,swd->sw", qf, kw) * scale
        disp = soft_disp(logits, kpos, pos)
        return ((disp - rf) ** 2).sum()

    loss = 0.0
    n = 0
    for o in range(1, span):
        wgt = 1.0 - 0.2 * (o - 1) / (span - 2)
        for i in range(F - o):
            if torch.is_grad_enabled():
                l = checkpoint(one, qc[i], kc[i + o], ref[o - 1][i], use_reentrant=False)
            else:
                l = one(qc[i], kc[i + o], ref[o - 1][i])
            loss = loss + wgt * l
            n += qc.shape[1]
    return loss / n


VARIANTS = {"dense-all": dense_all, "dense-span4": dense_span, "gather-r10": gather_window}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    rows = []
    for sname, H, F, h, w, d in SHAPES:
        S = h * w
        scale = TAU / math.sqrt(d) / H
        for dtype in [torch.float16, torch.bfloat16, torch.float32]:
            g = torch.Generator(device="cuda").manual_seed(0)
            q = torch.rand(H, F, S, d, device="cuda", generator=g, dtype=torch.float32).mul_(3).sub_(1.5).to(dtype)
            k = torch.rand(H, F, S, d, device="cuda", generator=g, dtype=torch.float32).mul_(3).sub_(1.5).to(dtype)
            for vname, fn in VARIANTS.items():
                if vname == "dense-all":
                    ref = torch.randn(F, F, S, 2, device="cuda")
                else:
                    ref = [torch.randn(F, S, 2, device="cuda") for _ in range(3)]
                qg = q.clone().requires_grad_(True)
                kg = k.clone().requires_grad_(True)

                def packed(qq, kk):
                    return (qq.permute(1, 2, 0, 3).reshape(F, S, H * d), kk.permute(1, 2, 0, 3).reshape(F, S, H * d))

                def fwd():
                    with torch.no_grad():
                        qc, kc = packed(q, k)
                        fn(qc, kc, h, w, scale, ref)

                def fb():
                    qc, kc = packed(qg, kg)
                    loss = fn(qc, kc, h, w, scale, ref)
                    loss.backward()
                    qg.grad = None
                    kg.grad = None

                # The gather baseline takes ~1-2 s per fwd+bwd at the larger shapes: fewer repeats.
                reps, warm = (3, 1) if vname == "gather-r10" else (5, 2)
                try:
                    tf = timed(fwd, reps, warm)
                    tb = timed(fb, reps, warm)
                except torch.OutOfMemoryError:
                    tf = tb = float("nan")
                torch.cuda.empty_cache()
                dn = str(dtype).replace("torch.", "")
                rows.append(dict(shape=sname, dtype=dn, variant=vname, fwd_ms=tf, fb_ms=tb))
                print(f"{sname:<8} {dn:<9} {vname:<12} fwd {tf:9.3f} ms  fwd+bwd {tb:9.3f} ms", flush=True)
            del q, k
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f)
    if args.ours:
        ours = [json.loads(l) for l in open(args.ours) if l.strip()]
        print("\nside by side (fwd+bwd ms; ratio = torch / ours):")
        print(f"{'shape':<8} {'torch variant':<22} {'torch':>9} {'ours mode':<22} {'ours':>8} {'ratio':>7}")
        pairs = [("dense-span4", "span4 full"), ("dense-span4", "span4 r10 query"), ("gather-r10", "span4 r10 query"),
                 ("dense-all", "allpairs r3 query")]
        for sname, *_ in SHAPES:
            for tv, om in pairs:
                for tdt, odt in [("float16", "bf16"), ("bfloat16", "bf16"), ("float32", "f32")]:
                    t = [r for r in rows if r["shape"] == sname and r["variant"] == tv and r["dtype"] == tdt]
                    o = [r for r in ours if r["shape"] == sname and r["mode"] == om and r["dtype"] == odt]
                    if t and o:
                        print(f"{sname:<8} {tv + ' ' + tdt:<22} {t[0]['fb_ms']:9.3f} {om + ' ' + odt:<22} "
                              f"{o[0]['fb_ms']:8.3f} {t[0]['fb_ms'] / o[0]['fb_ms']:7.2f}")


if __name__ == "__main__":
    main()
