"""Prompt-adherence checker for generated clips (numpy only).

    check_clip(clip_uint8 [F,H,W,3], caption) -> dict(colour_ok, shape_ok, background_ok,
                                                      coherent, pred_colour, pred_shape, ...)

Colour: the background is the median of each frame's border ring; the foreground is every pixel
farther than a threshold from it; the object's colour is the median of the foreground core,
matched to the nearest palette colour. Shape: per frame, the largest connected foreground
component's extent (area / bounding-box area), solidity (area / convex-hull area) and
circularity (4 pi area / perimeter^2) are matched to the nearest per-shape prototype (measured
on rendered ground-truth shapes), majority vote over frames. Coherent motion: the object is
present in every frame as one dominant component, its area changes by < 1.7x between frames
and its centroid never jumps by more than a quarter of the frame.

Command (samples held-out captions with the exported bundle through onnxruntime):
    python -m fastvmt_onnx.checker --bundle onnx/models/tiny-shapes --n 60
"""
from __future__ import annotations

import math
import re

import numpy as np

from . import data as D

FG_THRESH = 60.0


def parse_caption(caption: str):
    words = [w for w in re.split(r"[^a-z0-9]+", caption.lower()) if w]
    colour = next((w for w in words if w in D.COLOURS), None)
    shape = next((w for w in words if w in D.SHAPES), None)
    bg = None
    if "background" in words:
        i = words.index("background")
        bg = words[i - 1] if i > 0 else None
    return colour, shape, bg


def _components(mask):
    """4-connected components of a 2D bool mask -> label image, sizes (numpy + python BFS)."""
    H, W = mask.shape
    lab = np.zeros((H, W), np.int32)
    sizes = [0]
    cur = 0
    ys, xs = np.nonzero(mask)
    for y0, x0 in zip(ys, xs):
        if lab[y0, x0]:
            continue
        cur += 1
        stack = [(y0, x0)]
        lab[y0, x0] = cur
        n = 0
        while stack:
            y, x = stack.pop()
            n += 1
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < H and 0 <= xx < W and mask[yy, xx] and not lab[yy, xx]:
                    lab[yy, xx] = cur
                    stack.append((yy, xx))
        sizes.append(n)
    return lab, np.array(sizes)


def _hull_area(points):
    """Area of the convex hull of 2D points (monotone chain)."""
    pts = np.unique(points, axis=0)
    if len(pts) < 3:
        return 0.0
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(tuple(p))
    for p in pts[::-1]:
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(tuple(p))
    hull = np.array(lower[:-1] + upper[:-1], dtype=np.float64)
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def shape_features(mask):
    """(extent, solidity, circularity) of a 2D bool mask (one component)."""
    ys, xs = np.nonzero(mask)
    A = float(len(ys))
    if A < 4:
        return None
    bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    extent = A / (bw * bh)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], -1) for dx in (0, 1) for dy in (0, 1)])
    hull = _hull_area(corners)
    solidity = A / hull if hull > 0 else 0.0
    m = np.pad(mask, 1)
    perim = float(np.sum(m[1:, :] != m[:-1, :]) + np.sum(m[:, 1:] != m[:, :-1]))
    # pixel perimeters overestimate diagonal edges by up to 4/pi; fine for relative matching
    circ = 4 * math.pi * A / (perim ** 2) if perim > 0 else 0.0
    return np.array([extent, solidity, circ, bh / bw])


_PROTOS = None


def prototypes(H=D.DEFAULT_H, W=D.DEFAULT_W):
    """Mean features per shape over rendered ground-truth shapes at several sizes/positions."""
    global _PROTOS
    if _PROTOS is None:
        rng = np.random.default_rng(7)
        feats = {s: [] for s in D.SHAPES}
        for s in D.SHAPES:
            for _ in range(40):
                r = rng.uniform(0.08, 0.3) * min(H, W)
                cx, cy = rng.uniform(r + 1, W - r - 1), rng.uniform(r + 1, H - r - 1)
                cov = D.shape_coverage(s, [cx], [cy], [r], H, W)[0]
                f = shape_features(cov > 0.5)
                if f is not None:
                    feats[s].append(f)
        allf = np.concatenate([np.array(v) for v in feats.values()])
        _PROTOS = ({s: np.mean(v, 0) for s, v in feats.items()}, allf.std(0) + 1e-6)
    return _PROTOS


def classify_shape(feat):
    protos, scale = prototypes()
    d = {s: float(np.sum(((feat - p) / scale) ** 2)) for s, p in protos.items()}
    return min(d, key=d.get)


def _nearest(rgb, palette):
    names = list(palette)
    cols = np.array([palette[n] for n in names], np.float64)
    return names[int(np.argmin(((cols - rgb[None]) ** 2).sum(1)))]


def check_clip(clip, caption=None, objects=1):
    clip = np.asarray(clip)
    if clip.dtype != np.uint8:
        clip = np.clip(np.rint(clip * 255.0), 0, 255).astype(np.uint8)
    Fn, H, W, _ = clip.shape
    x = clip.astype(np.float64)
    ring = np.concatenate([x[:, :2].reshape(Fn, -1, 3), x[:, -2:].reshape(Fn, -1, 3),
                           x[:, :, :2].reshape(Fn, -1, 3), x[:, :, -2:].reshape(Fn, -1, 3)], 1)
    bg = np.median(ring, axis=1)  # [F,3]
    dist = np.sqrt(((x - bg[:, None, None]) ** 2).sum(-1))
    fg = dist > FG_THRESH
    shapes, cents, areas, dominant = [], [], [], []
    core_pix = []
    for f in range(Fn):
        lab, sizes = _components(fg[f])
        if len(sizes) <= 1 or sizes[1:].max() < 6 or sizes[1:].max() > 0.5 * H * W:
            cents.append(None); areas.append(0); dominant.append(False)
            continue
        k = int(np.argmax(sizes[1:])) + 1
        m = lab == k
        dominant.append(sizes[k] >= 0.8 * sizes[1:].sum())
        ys, xs = np.nonzero(m)
        cents.append((xs.mean() + 0.5, ys.mean() + 0.5))
        areas.append(len(ys))
        feat = shape_features(m)
        if feat is not None:
            shapes.append(classify_shape(feat))
        dm = dist[f][m]
        core_pix.append(x[f][m][dm >= np.percentile(dm, 30)])
    res = dict(present_frames=int(sum(a > 0 for a in areas)))
    bg_rgb = np.median(bg, 0)
    res["pred_background"] = _nearest(bg_rgb, D.BACKGROUNDS)
    if core_pix:
        rgb = np.median(np.concatenate(core_pix), 0)
        res["pred_colour"] = _nearest(rgb, D.COLOURS)
        res["rgb"] = rgb.round(1).tolist()
    else:
        res["pred_colour"] = None
    if shapes:
        vals, cnt = np.unique(shapes, return_counts=True)
        res["pred_shape"] = str(vals[np.argmax(cnt)])
        res["shape_agreement"] = float(cnt.max() / len(shapes))
    else:
        res["pred_shape"] = None
    # motion coherence
    coherent = all(c is not None for c in cents) and all(dominant)
    track = None
    if coherent:
        track = np.array(cents)
        steps = np.linalg.norm(np.diff(track, axis=0), axis=1)
        ar = np.array(areas, np.float64)
        ratio = np.maximum(ar[1:] / ar[:-1], ar[:-1] / ar[1:])
        coherent = bool(steps.max() <= 0.25 * max(H, W) and ratio.max() <= 1.7)
        res["path_length"] = float(steps.sum())
        res["max_step"] = float(steps.max())
    res["coherent"] = bool(coherent)
    res["track"] = None if track is None else track.round(2).tolist()
    if caption is not None:
        c, s, b = parse_caption(caption)
        res.update(colour=c, shape=s, background=b)
        res["colour_ok"] = res["pred_colour"] == c
        res["shape_ok"] = res["pred_shape"] == s
        res["background_ok"] = (b is None) or res["pred_background"] == b
        res["both_ok"] = res["colour_ok"] and res["shape_ok"]
    return res


def summarise(results):
    n = len(results)
    keys = ["colour_ok", "shape_ok", "both_ok", "background_ok", "coherent"]
    return {k: float(np.mean([r[k] for r in results])) for k in keys} | {"n": n}


def table(summary, title=""):
    s = summary
    lines = [f"{title}", "| n | colour | shape | colour+shape | background | coherent motion |",
             "|---|---|---|---|---|---|",
             f"| {s['n']} | {100*s['colour_ok']:.1f}% | {100*s['shape_ok']:.1f}% | {100*s['both_ok']:.1f}% | "
             f"{100*s['background_ok']:.1f}% | {100*s['coherent']:.1f}% |"]
    return "\n".join(lines)


def eval_captions(n, seed=0):
    """n held-out captions, cycling through all 30 held-out combos in a seeded order."""
    caps = D.held_out_captions()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(caps))
    return [caps[order[i % len(caps)]] for i in range(n)]


def main():
    import argparse
    import json
    import os
    import time
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="onnx/models/tiny-shapes")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--cfg", type=float, default=None)
    ap.add_argument("--shift", type=float, default=None)
    ap.add_argument("--batch", type=int, default=4, help="captions per denoiser call (x2 for CFG)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--gifs", default=None, help="write a grid GIF of the samples here")
    ap.add_argument("--json", default=None)
    ap.add_argument("--selftest", action="store_true", help="check ground-truth clips instead")
    a = ap.parse_args()
    if a.selftest:
        caps = eval_captions(a.n, a.seed)
        res = []
        for i, cap in enumerate(caps):
            c, s, b = parse_caption(cap)
            clip, _, _ = D.make_clip(np.random.default_rng([a.seed, i]), objects=[(c, s)], background=b, exclude=None)
            res.append(check_clip(clip, cap))
        print(table(summarise(res), "ground-truth clips (checker self-test)"))
        return
    from .sample import OrtBundle
    bundle = OrtBundle(a.bundle, threads=a.threads)
    d = bundle.manifest["defaults"]
    caps = eval_captions(a.n, a.seed)
    t0 = time.time()
    clips = bundle.sample_many(caps, steps=a.steps or d["steps"], cfg=a.cfg or d["cfg"],
                               shift=a.shift or bundle.manifest["scheduler"]["shift"], seed=a.seed, batch=a.batch)
    dt = time.time() - t0
    res = [check_clip(c, cap) for c, cap in zip(clips, caps)]
    summ = summarise(res)
    print(table(summ, f"held-out captions, {a.bundle}, steps={a.steps or d['steps']} cfg={a.cfg or d['cfg']} "
                      f"({dt:.1f} s, {dt / len(caps):.2f} s/clip)"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(summary=summ, results=[dict(caption=c, **{k: v for k, v in r.items() if k != 'track'})
                                                  for c, r in zip(caps, res)]), f, indent=1)
    if a.gifs:
        k = min(len(clips), 16)
        rows = [np.concatenate(clips[r * 4:(r + 1) * 4], axis=2) for r in range(k // 4)]
        D.save_gif(np.concatenate(rows, axis=1), a.gifs, scale=2)


if __name__ == "__main__":
    main()
