"""Synthetic motion clips: coloured shapes moving on plain backgrounds, with captions.

numpy + Pillow only (also used on CPU-only machines by the motion-fidelity harness).

    clip, caption, info = make_clip(rng)                 # training distribution
    clip, caption, info = make_harness_clip(rng)         # unlike training: textures, moving bg
    clips, captions = generate_dataset(n, seed)          # uint8 [n, F, H, W, 3], list of str

A clip is uint8 [F, H, W, 3]. `info["objects"]` lists each object with its ground-truth
trajectory: `centre` float [F, 2] as (x, y) in pixels (pixel centres at integer + 0.5, i.e.
x in [0, W]), `size` float [F] (half-size in pixels), `shape`, `colour`.
Everything is deterministic from the seed: clip i of a dataset uses
np.random.default_rng([seed, i]) whatever the number of worker processes.
"""
from __future__ import annotations

import math
import re

import numpy as np

# ----------------------------------------------------------------------------- vocabulary
COLOURS = {
    "red": (225, 30, 30),
    "green": (40, 190, 40),
    "blue": (40, 80, 245),
    "yellow": (245, 215, 20),
    "purple": (170, 50, 215),
    "cyan": (20, 215, 225),
}
BACKGROUNDS = {
    "black": (12, 12, 12),
    "white": (240, 240, 240),
    "gray": (120, 120, 120),
    "brown": (105, 65, 35),
}
SHAPES = ["circle", "square", "triangle", "star", "cross"]
TRAJECTORIES = ["straight", "accelerating", "curved", "circular", "zigzag", "bouncing", "scaling", "still"]
TRAJ_WEIGHTS = [0.17, 0.12, 0.14, 0.14, 0.12, 0.15, 0.12, 0.04]

VOCAB = ["<pad>", "<unk>", "a", "an", "and", "on", "background"] + list(COLOURS) + \
    [b for b in BACKGROUNDS if b not in COLOURS] + SHAPES
PAD_ID, UNK_ID = 0, 1
MAX_LEN = 12

DEFAULT_FRAMES, DEFAULT_H, DEFAULT_W = 8, 48, 48


def tokenize(text: str, max_len: int = MAX_LEN, vocab=VOCAB) -> np.ndarray:
    """Lowercase, split on anything not a-z0-9, word -> vocab index (unknown -> UNK_ID),
    truncate / pad with PAD_ID to max_len. Returns int64 [max_len]."""
    index = {w: i for i, w in enumerate(vocab)}
    words = [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]
    ids = [index.get(w, UNK_ID) for w in words][:max_len]
    ids = ids + [PAD_ID] * (max_len - len(ids))
    return np.asarray(ids, dtype=np.int64)


def caption_for(objects, background: str) -> str:
    parts = [f"a {o['colour']} {o['shape']}" for o in objects]
    return " and ".join(parts) + f" on a {background} background"


def all_combos():
    return [(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]


def held_out_combos():
    """One background per (colour, shape) pair is never seen in training: 30 of 120 combos.
    Every colour-shape pair and every colour/shape/background word is still seen."""
    cols, bgs = list(COLOURS), list(BACKGROUNDS)
    out = set()
    for ci, c in enumerate(cols):
        for si, s in enumerate(SHAPES):
            out.add((c, s, bgs[(ci + 2 * si) % len(bgs)]))
    return out


HELD_OUT = held_out_combos()


def held_out_captions():
    return sorted(caption_for([{"colour": c, "shape": s}], b) for (c, s, b) in HELD_OUT)


# ----------------------------------------------------------------------------- shapes
def _polygon(shape: str):
    """Unit polygon (vertices, radius ~1, y down) for polygonal shapes."""
    if shape == "triangle":
        return np.array([[0.0, -1.0], [1.0, 0.8], [-1.0, 0.8]])
    if shape == "star":
        pts = []
        for i in range(10):
            r = 1.0 if i % 2 == 0 else 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append([r * math.cos(a), r * math.sin(a) + 0.1])
        return np.array(pts)
    raise ValueError(shape)


def _inside_polygon(px, py, poly):
    inside = np.zeros(np.broadcast(px, py).shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        cond = (y1 > py) != (y2 > py)
        xint = (x2 - x1) * (py - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= cond & (px < xint)
    return inside


def _unit_mask(shape, dx, dy):
    if shape == "circle":
        return dx * dx + dy * dy <= 1.0
    if shape == "square":
        return (np.abs(dx) <= 0.85) & (np.abs(dy) <= 0.85)
    if shape == "cross":
        t = 0.4
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= 1.0) & (ay <= t)) | ((ax <= t) & (ay <= 1.0))
    return _inside_polygon(dx, dy, _polygon(shape))


def shape_coverage(shape, cx, cy, r, H, W, ss=3):
    """Anti-aliased coverage in [0,1], float32 [F, H, W]. cx, cy, r: arrays [F] (pixels).
    Supersampled ss x ss per pixel, evaluated only inside each frame's bounding box."""
    cx, cy, r = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (cx, cy, r))
    Fn = len(cx)
    out = np.zeros((Fn, H, W), np.float32)
    off = (np.arange(ss) + 0.5) / ss
    for f in range(Fn):
        x0 = max(int(math.floor(cx[f] - r[f])) - 1, 0)
        x1 = min(int(math.ceil(cx[f] + r[f])) + 1, W)
        y0 = max(int(math.floor(cy[f] - r[f])) - 1, 0)
        y1 = min(int(math.ceil(cy[f] + r[f])) + 1, H)
        if x1 <= x0 or y1 <= y0:
            continue
        xs = (np.arange(x0, x1)[:, None] + off[None, :]).reshape(-1)
        ys = (np.arange(y0, y1)[:, None] + off[None, :]).reshape(-1)
        dx = ((xs - cx[f]) / r[f])[None, :]
        dy = ((ys - cy[f]) / r[f])[:, None]
        m = _unit_mask(shape, dx, dy).astype(np.float32)
        out[f, y0:y1, x0:x1] = m.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))
    return out


# ----------------------------------------------------------------------------- trajectories
def make_trajectory(rng, kind, F, H, W, r):
    """Centre (x, y) [F, 2] and scale [F] for a trajectory family; stays inside the frame."""
    tau = np.linspace(0.0, 1.0, F)
    lo_x, hi_x = r + 1, W - r - 1
    lo_y, hi_y = r + 1, H - r - 1
    scale = np.ones(F)

    def rand_pt():
        return np.array([rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)])

    def far_pair(min_d):
        for _ in range(20):
            a, b = rand_pt(), rand_pt()
            if np.linalg.norm(a - b) >= min_d:
                return a, b
        return a, b

    span = min(W, H)
    if kind == "straight":
        a, b = far_pair(0.35 * span)
        c = a[None] + (b - a)[None] * tau[:, None]
    elif kind == "accelerating":
        a, b = far_pair(0.4 * span)
        p = tau ** 2 if rng.random() < 0.5 else 1 - (1 - tau) ** 2
        c = a[None] + (b - a)[None] * p[:, None]
    elif kind == "curved":
        a, b = far_pair(0.35 * span)
        ctrl = rand_pt()
        c = ((1 - tau) ** 2)[:, None] * a + (2 * (1 - tau) * tau)[:, None] * ctrl + (tau ** 2)[:, None] * b
    elif kind == "circular":
        rad = rng.uniform(0.15, 0.32) * span
        rad = min(rad, (hi_x - lo_x) / 2, (hi_y - lo_y) / 2)
        cen = np.array([rng.uniform(lo_x + rad, hi_x - rad), rng.uniform(lo_y + rad, hi_y - rad)])
        a0 = rng.uniform(0, 2 * math.pi)
        sweep = rng.uniform(0.6, 1.5) * math.pi * (1 if rng.random() < 0.5 else -1)
        ang = a0 + sweep * tau
        c = cen[None] + rad * np.stack([np.cos(ang), np.sin(ang)], -1)
    elif kind == "zigzag":
        horiz = rng.random() < 0.5
        amp = rng.uniform(0.1, 0.2) * span
        n_teeth = rng.integers(1, 3)
        tri = 2 * np.abs((tau * n_teeth * 2) % 2 - 1) - 1  # triangle wave in [-1,1]
        a_lo, a_hi = (lo_x, hi_x) if horiz else (lo_y, hi_y)
        b_lo, b_hi = (lo_y, hi_y) if horiz else (lo_x, hi_x)
        s0, s1 = rng.uniform(a_lo, a_lo + 0.2 * span), rng.uniform(a_hi - 0.2 * span, a_hi)
        if rng.random() < 0.5:
            s0, s1 = s1, s0
        main = s0 + (s1 - s0) * tau
        amp = min(amp, (b_hi - b_lo) / 2)
        mid = rng.uniform(b_lo + amp, b_hi - amp)
        cross = mid + amp * tri
        c = np.stack([main, cross], -1) if horiz else np.stack([cross, main], -1)
    elif kind == "bouncing":
        p = rand_pt()
        speed = rng.uniform(0.08, 0.16) * span * 8 / max(F - 1, 1)
        ang = rng.uniform(0, 2 * math.pi)
        v = speed * np.array([math.cos(ang), math.sin(ang)])
        c = np.zeros((F, 2))
        lo, hi = np.array([lo_x, lo_y]), np.array([hi_x, hi_y])
        for f in range(F):
            c[f] = p
            p = p + v
            for d in range(2):
                if p[d] < lo[d]:
                    p[d] = 2 * lo[d] - p[d]; v[d] = -v[d]
                if p[d] > hi[d]:
                    p[d] = 2 * hi[d] - p[d]; v[d] = -v[d]
    elif kind == "scaling":
        s0, s1 = (0.55, 1.35) if rng.random() < 0.5 else (1.35, 0.55)
        scale = s0 + (s1 - s0) * tau
        rmax = r * 1.35
        a = np.array([rng.uniform(rmax + 1, W - rmax - 1), rng.uniform(rmax + 1, H - rmax - 1)])
        b = a + rng.normal(0, 0.08 * span, 2)
        b = np.clip(b, [rmax + 1, rmax + 1], [W - rmax - 1, H - rmax - 1])
        c = a[None] + (b - a)[None] * tau[:, None]
    elif kind == "still":
        c = np.repeat(rand_pt()[None], F, 0)
    else:
        raise ValueError(kind)
    return c.astype(np.float64), scale


# ----------------------------------------------------------------------------- clips
def _render(bg_img, objects, H, W):
    """bg_img float [F,H,W,3] (0..255); objects with 'centre', 'size', 'shape', 'fill' [F,H,W,3] or rgb."""
    img = bg_img.copy()
    for o in objects:
        cov = shape_coverage(o["shape"], o["centre"][:, 0], o["centre"][:, 1], o["size"], H, W)[..., None]
        fill = o["fill"]
        img = img * (1 - cov) + np.asarray(fill, dtype=np.float32) * cov
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def sample_objects(rng, n_obj, exclude=HELD_OUT, bg=None):
    """Pick (colour, shape) per object and a background avoiding held-out combos."""
    cols, bgs = list(COLOURS), list(BACKGROUNDS)
    for _ in range(100):
        b = bg or bgs[rng.integers(len(bgs))]
        objs = []
        used_c = set()
        for _ in range(n_obj):
            c = cols[rng.integers(len(cols))]
            while c in used_c:
                c = cols[rng.integers(len(cols))]
            used_c.add(c)
            objs.append((c, SHAPES[rng.integers(len(SHAPES))]))
        if exclude and any((c, s, b) in exclude for c, s in objs):
            continue
        return objs, b
    raise RuntimeError("could not sample objects")


def make_clip(rng, frames=DEFAULT_FRAMES, H=DEFAULT_H, W=DEFAULT_W, n_obj=None, objects=None,
              background=None, trajectory=None, exclude=HELD_OUT):
    """One training-distribution clip. objects: optional list of (colour, shape)."""
    if n_obj is None:
        n_obj = 1 if rng.random() < 0.85 else 2
    if objects is None:
        objects, background = sample_objects(rng, n_obj, exclude, background)
    elif background is None:
        background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    span = min(H, W)
    objs = []
    for (c, s) in objects:
        r = rng.uniform(0.15, 0.24) * span if len(objects) == 1 else rng.uniform(0.12, 0.17) * span
        kind = trajectory or TRAJECTORIES[rng.choice(len(TRAJECTORIES), p=TRAJ_WEIGHTS)]
        centre, scale = make_trajectory(rng, kind, frames, H, W, r)
        objs.append(dict(colour=c, shape=s, fill=COLOURS[c], centre=centre, size=r * scale, trajectory=kind))
    bg = np.broadcast_to(np.asarray(BACKGROUNDS[background], np.float32), (frames, H, W, 3))
    clip = _render(bg, objs, H, W)
    caption = caption_for(objs, background)
    info = dict(background=background, objects=[
        dict(colour=o["colour"], shape=o["shape"], trajectory=o["trajectory"],
             centre=o["centre"].astype(np.float32), size=o["size"].astype(np.float32)) for o in objs])
    return clip, caption, info


def _texture(rng, kind, F, H, W, c1, c2, motion=(0.0, 0.0)):
    """Float [F,H,W,3] texture mixing two colours; optionally translating by motion px/frame."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    f = np.arange(F)[:, None, None]
    X = xx[None] - motion[0] * f
    Y = yy[None] - motion[1] * f
    if kind == "stripes":
        period = rng.uniform(4, 10)
        ang = rng.uniform(0, math.pi)
        u = X * math.cos(ang) + Y * math.sin(ang)
        a = (np.sin(2 * math.pi * u / period) > 0).astype(np.float64)
    elif kind == "checker":
        p = rng.integers(3, 7)
        a = ((np.floor(X / p) + np.floor(Y / p)) % 2).astype(np.float64)
    elif kind == "noise":
        g = rng.random((H // 4 + 4, W // 4 + 4))
        gi = np.clip((np.floor(Y / 4).astype(int)) % g.shape[0], 0, g.shape[0] - 1)
        gj = np.clip((np.floor(X / 4).astype(int)) % g.shape[1], 0, g.shape[1] - 1)
        a = g[gi, gj]
    else:  # gradient
        ang = rng.uniform(0, 2 * math.pi)
        u = (X * math.cos(ang) + Y * math.sin(ang)) / max(H, W)
        a = 0.5 + 0.5 * np.sin(2 * math.pi * u)
    c1 = np.asarray(c1, np.float64)
    c2 = np.asarray(c2, np.float64)
    return (c1 * (1 - a[..., None]) + c2 * a[..., None]).astype(np.float32)


def make_harness_clip(rng, frames=DEFAULT_FRAMES, H=DEFAULT_H, W=DEFAULT_W, trajectory=None):
    """A reference clip unlike the training data: a textured object (stripes / checker of two
    colours) and/or a textured, possibly moving background. One object; its ground-truth
    trajectory is in info['objects'][0]['centre'] (x, y per frame)."""
    span = min(H, W)
    shape = SHAPES[rng.integers(len(SHAPES))]
    kind = trajectory or TRAJECTORIES[rng.choice(len(TRAJECTORIES) - 1, p=np.asarray(TRAJ_WEIGHTS[:-1]) / sum(TRAJ_WEIGHTS[:-1]))]
    r = rng.uniform(0.15, 0.24) * span
    centre, scale = make_trajectory(rng, kind, frames, H, W, r)
    pal = [np.array(v) for v in COLOURS.values()]
    obj_c1, obj_c2 = pal[rng.integers(len(pal))], np.array([255, 255, 255]) * rng.random(3)
    bg1 = rng.integers(0, 256, 3)
    bg2 = np.clip(bg1 + rng.normal(0, 60, 3), 0, 255)
    bg_motion = (0.0, 0.0)
    if rng.random() < 0.6:
        a = rng.uniform(0, 2 * math.pi)
        sp = rng.uniform(0.5, 2.0)
        bg_motion = (sp * math.cos(a), sp * math.sin(a))
    bg = _texture(rng, ["noise", "gradient", "stripes"][rng.integers(3)], frames, H, W, bg1, bg2, bg_motion)
    # the object's texture moves with the object
    tex_kind = ["stripes", "checker", "noise"][rng.integers(3)]
    tex = _texture(rng, tex_kind, frames, H, W, obj_c1, obj_c2)
    shift = np.rint(centre - centre[:1]).astype(int)
    tex = np.stack([np.roll(tex[f], (shift[f, 1], shift[f, 0]), axis=(0, 1)) for f in range(frames)])
    obj = dict(shape=shape, centre=centre, size=r * scale, fill=tex)
    clip = _render(bg, [obj], H, W)
    info = dict(background="textured", background_motion=bg_motion, objects=[dict(
        colour="textured", shape=shape, trajectory=kind,
        centre=centre.astype(np.float32), size=(r * scale).astype(np.float32))])
    return clip, f"a textured {shape}", info


# ----------------------------------------------------------------------------- datasets
def _gen_range(args):
    seed, start, stop, frames, H, W = args
    clips = np.zeros((stop - start, frames, H, W, 3), np.uint8)
    caps = []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        clip, cap, _ = make_clip(rng, frames, H, W)
        clips[i - start] = clip
        caps.append(cap)
    return clips, caps


def generate_dataset(n, seed=0, frames=DEFAULT_FRAMES, H=DEFAULT_H, W=DEFAULT_W, workers=1, chunk=2000):
    """n training clips, uint8 [n, F, H, W, 3] and captions. Deterministic in (seed, i)."""
    jobs = [(seed, s, min(n, s + chunk), frames, H, W) for s in range(0, n, chunk)]
    if workers > 1:
        import multiprocessing as mp
        with mp.get_context("fork").Pool(workers) as pool:
            res = pool.map(_gen_range, jobs)
    else:
        res = [_gen_range(j) for j in jobs]
    clips = np.concatenate([r[0] for r in res])
    caps = [c for r in res for c in r[1]]
    return clips, caps


def save_gif(clip, path, fps=8, scale=1):
    from PIL import Image
    frames = [Image.fromarray(f) for f in clip]
    if scale != 1:
        frames = [f.resize((f.width * scale, f.height * scale), Image.NEAREST) for f in frames]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(round(1000 / fps)), loop=0)


def load_gif(path):
    from PIL import Image, ImageSequence
    im = Image.open(path)
    return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])


def write_references(out_dir, frames=DEFAULT_FRAMES, H=DEFAULT_H, W=DEFAULT_W, fps=8):
    """Sample reference clips for the examples folder (GIF + JSON trajectory each)."""
    import json
    import os
    os.makedirs(out_dir, exist_ok=True)
    specs = [
        ("red_circle_right", dict(objects=[("red", "circle")], background="black", trajectory=None), "right"),
        ("bouncing_square", dict(objects=[("yellow", "square")], background="gray", trajectory="bouncing"), None),
        ("blue_star_circular", dict(objects=[("blue", "star")], background="white", trajectory="circular"), None),
        ("green_triangle_zigzag", dict(objects=[("green", "triangle")], background="black", trajectory="zigzag"), None),
        ("purple_cross_growing", dict(objects=[("purple", "cross")], background="white", trajectory="scaling"), None),
    ]
    written = []
    for i, (name, kw, special) in enumerate(specs):
        rng = np.random.default_rng([1234, i])
        if special == "right":
            r = 0.18 * min(H, W)
            xs = np.linspace(r + 2, W - r - 2, frames)
            centre = np.stack([xs, np.full(frames, H / 2)], -1)
            objs = [dict(colour="red", shape="circle", fill=COLOURS["red"], centre=centre, size=np.full(frames, r), trajectory="straight")]
            bg = np.broadcast_to(np.asarray(BACKGROUNDS["black"], np.float32), (frames, H, W, 3))
            clip = _render(bg, objs, H, W)
            cap = caption_for(objs, "black")
            info = dict(objects=[dict(trajectory="straight", centre=centre, size=np.full(frames, r))])
        else:
            clip, cap, info = make_clip(rng, frames, H, W, exclude=None, **kw)
        written.append((name, clip, cap, info))
    rng = np.random.default_rng([1234, 99])
    clip, cap, info = make_harness_clip(rng, frames, H, W, trajectory="straight")
    written.append(("textured_on_moving_background", clip, cap, info))
    for name, clip, cap, info in written:
        save_gif(clip, os.path.join(out_dir, name + ".gif"), fps=fps)
        meta = dict(caption=cap, frames=int(clip.shape[0]), height=int(clip.shape[1]), width=int(clip.shape[2]), fps=fps,
                    trajectory=info["objects"][0].get("trajectory"),
                    centre_xy=np.asarray(info["objects"][0]["centre"]).round(2).tolist(),
                    size=np.asarray(info["objects"][0]["size"]).round(2).tolist())
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump(meta, f)
    return [w[0] for w in written]


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--references", default=None, help="write sample reference GIFs to this folder")
    ap.add_argument("--preview", default=None, help="write a grid GIF of training clips here")
    ap.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    ap.add_argument("--size", type=int, default=DEFAULT_H)
    a = ap.parse_args()
    if a.references:
        print(write_references(a.references, a.frames, a.size, a.size))
    if a.preview:
        rng = np.random.default_rng(0)
        clips = [make_clip(rng, a.frames, a.size, a.size)[0] for _ in range(16)]
        grid = np.concatenate([np.concatenate(clips[r * 4:(r + 1) * 4], axis=2) for r in range(4)], axis=1)
        save_gif(grid, a.preview, scale=2)
