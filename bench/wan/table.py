"""Merge the Wan benchmark's JSON results (ours-*.json, torch.json, peak.json in one folder) into
the README table: seconds, passes, peak memory, the ratios the issue asks for, and the floor.

    python3 bench/wan/table.py RESULTS_DIR

The floor counts the FLOPs of the passes the schedule needs (matrix products and attention of
the DiT, analytic, below) and divides by the card's measured bf16 matrix-product rate
(peak.json, measured in the same run). A real gradient is counted as a forward of blocks 0..L
plus the backward to the latent only (guidance needs no weight gradients): 1x the forward for
the matrix products (dX = dY W^T), 2.5x for attention (the logits recomputed, dV, dP, dQ, dK);
so about 2.1x a forward in all (an earlier version counted 3x, as if weight gradients were
computed). The reference AMF is one forward of blocks 0..L, a denoising step one forward of
every block at batch 2 (CFG) or 1. The "overhead floor" is the guidance FLOPs over plain
sampling's: what no implementation of the schedule can go below at equal efficiency.
"""
from __future__ import annotations

import glob
import json
import os
import sys


def block_flops(n, text_len, width=1536, ffn=8960, visible=1.0, grad=False):
    """Forward FLOPs of one Wan block on n video tokens (multiply-add = 2 FLOPs); with `grad`,
    forward plus the backward to the block's input (1x for products with weights, 2.5x for
    attention)."""
    proj = 2 * n * width * width * 4          # self-attention q, k, v, out
    attn = 4 * n * n * width * visible        # QK^T and PV over the visible keys
    cross_attn = 4 * n * text_len * width
    cross = 2 * n * width * width * 2 + 2 * text_len * width * width * 2
    mlp = 2 * n * width * ffn * 2
    linear, attention = proj + cross + mlp, attn + cross_attn
    return linear * 2 + attention * 3.5 if grad else linear + attention


def local_fraction(grid, window):
    """Visible fraction of keys under a clamp-shifted 3D window (T, S) on grid (F, h, w)."""
    if window is None:
        return 1.0
    (f, h, w), (t, s) = grid, window
    return min(2 * t + 1, f) / f * min(2 * s + 1, h) / h * min(2 * s + 1, w) / w


def schedule_flops(row, doc):
    n = doc["tokens"]
    blocks = doc.get("blocks", 30)
    motion = doc.get("motion_block", blocks // 2)
    vis = local_fraction(tuple(doc["grid"]), doc.get("window")) if doc.get("grid") else 1.0
    text_len = doc.get("text_len", 512)
    per_block = block_flops(n, text_len, visible=vis)
    per_block_grad = block_flops(n, text_len, visible=vis, grad=True)
    batch = 2 if doc.get("cfg", 5.0) != 1.0 else 1
    head = per_block * (motion + 0.5)          # blocks 0..L-1 and the Q/K projections of L
    head_grad = per_block_grad * (motion + 0.5)
    real_grads = row["real_backward"]
    reference = row["real_forward"] - real_grads  # reference-AMF passes (both pipelines count alike)
    plain = row["denoiser_passes"] * batch * blocks * per_block
    return plain, reference * head + real_grads * head_grad


def overhead_floor(row, doc):
    plain, guidance = schedule_flops(row, doc)
    return guidance / plain if plain else 0.0


def main(folder):
    rows, docs = [], {}
    for path in sorted(glob.glob(os.path.join(folder, "ours-*.json"))):
        doc = json.load(open(path))
        for r in doc["rows"]:
            r["_doc"] = doc
            rows.append(r)
    tpath = os.path.join(folder, "torch.json")
    if os.path.exists(tpath):
        tdoc = json.load(open(tpath))
        trows = tdoc["rows"] if isinstance(tdoc, dict) else tdoc
        for r in trows:
            r.setdefault("pipeline", "pytorch")
            if r.get("status", "ok") != "ok":
                r["failed"] = r["status"]
            r["_doc"] = r  # each PyTorch row carries its own settings
            rows.append(r)
    peak = None
    ppath = os.path.join(folder, "peak.json")
    if os.path.exists(ppath):
        peak = json.load(open(ppath))["bf16_tflops"]
    by = {(r["pipeline"], r["mode"]): r for r in rows}
    base = by.get(("ours", "ditflow"))
    out = []
    card = open(os.path.join(folder, "card.txt")).read().strip() if os.path.exists(os.path.join(folder, "card.txt")) else "?"
    out.append(f"card: {card}; bf16 matmul rate measured in the run: {peak or '?'} TFLOP/s\n")
    out.append("| pipeline | mode | seconds | guidance s | denoiser | real fwd | real bwd | cached | peak GiB | vs our ditflow | overhead vs plain | overhead floor | floor s |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("failed"):
            out.append(f"| {r['pipeline']} | {r['mode']} | failed: {r['failed']} |||||||||||")
            continue
        doc = r["_doc"]
        vs = f"{base['wall_s'] / r['wall_s']:.2f}x" if base else ""
        suffix = r["mode"].split("-", 1)[1] if "-" in r["mode"] else ""  # the run's tag, e.g. "local"
        plain = by.get((r["pipeline"], "none" + (f"-{suffix}" if suffix else "")))
        over = f"{(r['wall_s'] - plain['wall_s']) / plain['wall_s'] * 100:.0f}%" if plain and r is not plain else ""
        floor, over_floor = "", ""
        if doc.get("tokens"):
            if r["real_forward"]:
                over_floor = f"{overhead_floor(r, doc) * 100:.0f}%"
            if peak:
                floor = f"{sum(schedule_flops(r, doc)) / (peak * 1e12):.1f}"
        mem = r.get("peak_mem_gib")
        out.append(f"| {r['pipeline']} | {r['mode']} | {r['wall_s']:.1f} | {r.get('guidance_s', 0):.1f} | {r['denoiser_passes']} | "
                   f"{r['real_forward']} | {r['real_backward']} | {r.get('cached_steps', '')} | "
                   f"{'' if mem is None else f'{mem:.1f}'} | {vs} | {over} | {over_floor} | {floor} |")
    out.append("")
    for ours_mode, torch_mode in (("ditflow", "ditflow"), ("fastvmt", "fastvmt"), ("fastvmt-local", "fastvmt"),
                                  ("fastvmt-bound", "fastvmt"), ("adaptive", "fastvmt"), ("adaptive-local", "fastvmt"),
                                  ("adaptive-bound", "fastvmt"), ("none", "none"), ("none-local", "none"),
                                  ("none-bound", "none")):
        a, b = by.get(("ours", ours_mode)), by.get(("pytorch", torch_mode))
        if a and b and not b.get("failed") and not a.get("failed"):
            out.append(f"- PyTorch {torch_mode} / ours {ours_mode}: {b['wall_s'] / a['wall_s']:.2f}x")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
