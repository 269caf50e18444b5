#!/usr/bin/env python3
"""Write the motion-fidelity reference set: GIFs with known motion + clips.json.

    python harness/make_clips.py --out DIR [--count N] [--seed S] [--families straight,...] [--bundle onnx/models/tiny-shapes]

Clips come from onnx/fastvmt_onnx/data.py: about two thirds `make_clip` (in-domain: one flat
coloured shape on a flat background), one third `make_harness_clip` (out-of-domain: a textured
object on a textured, often moving background). Trajectory families cycle over --families,
by default every moving family of data.TRAJECTORIES except "scaling" ("still" has no motion to
transfer; "scaling" is opt-in, see DEFAULT_FAMILIES, and only ever in-domain because
make_harness_clip does not scale the texture with the shape).
Each clip gets a prompt asking for different content: a colour, a shape and a background all
different from the reference's, from the training vocabulary (uniform over the vocabulary's combinations;
`target_held_out` says whether the combination was held out of the training captions).

numpy + Pillow only. Deterministic in (seed, index): clip i uses np.random.default_rng([seed, i]).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "onnx"))

from fastvmt_onnx import data as D  # noqa: E402

MOVING = [t for t in D.TRAJECTORIES if t != "still"]
# Default families. "scaling" is opt-in (--families): its reference tracks point radially in every
# direction, so under the best-match motion-fidelity definition almost any translating output
# finds a good match (unrelated outputs score ~0.5 against a scaling reference, ~0 otherwise).
DEFAULT_FAMILIES = [t for t in MOVING if t != "scaling"]


def bundle_defaults(bundle):
    """frames, height, width, fps from the bundle manifest's "defaults" (data.py defaults, 8 fps
    otherwise). Accepts frames/num_frames, height/h/size, width/w/size, fps."""
    d = {}
    path = os.path.join(bundle, "manifest.json") if bundle else None
    if path and os.path.exists(path):
        with open(path) as f:
            d = json.load(f).get("defaults", {}) or {}

    def pick(*keys, default):
        for k in keys:
            if d.get(k) is not None:
                return d[k]
        return default
    frames = int(pick("frames", "num_frames", default=D.DEFAULT_FRAMES))
    height = int(pick("height", "h", "size", default=D.DEFAULT_H))
    width = int(pick("width", "w", "size", default=D.DEFAULT_W))
    fps = float(pick("fps", default=8))
    return frames, height, width, (int(fps) if fps == int(fps) else fps), (path if d else None)


def _object_colour(clip, centre, size, shape):
    """Nearest palette colour of the reference object's pixels (for textured objects)."""
    F, H, W, _ = clip.shape
    cov = D.shape_coverage(shape, centre[:, 0], centre[:, 1], size, H, W)
    pix = clip[cov > 0.99].astype(np.float64)
    if len(pix) == 0:
        return None
    cols = np.array(list(D.COLOURS.values()), np.float64)
    votes = np.argmin(((pix[:, None] - cols[None]) ** 2).sum(-1), 1)
    return list(D.COLOURS)[int(np.bincount(votes, minlength=len(cols)).argmax())]


def pick_target(rng, ref_colour, ref_shape, ref_bg):
    """(colour, shape, background), each different from the reference's, uniformly among the
    training vocabulary's combinations (a quarter of them are held out of training captions)."""
    pool = [x for x in D.all_combos() if x[0] != ref_colour and x[1] != ref_shape and x[2] != ref_bg]
    return pool[rng.integers(len(pool))]


def make_set(count=24, seed=0, frames=D.DEFAULT_FRAMES, H=D.DEFAULT_H, W=D.DEFAULT_W, ood_every=3,
             families=None):
    """-> list of (name, clip uint8 [F,H,W,3], entry dict without gif/fps)."""
    fams = list(families or DEFAULT_FAMILIES)
    bad = [f for f in fams if f not in MOVING]
    if bad:
        raise ValueError(f"unknown or motionless trajectory families {bad}; choose from {MOVING}")
    # make_harness_clip translates a scaling object's texture without scaling it: points on it
    # have no single true motion, so out-of-domain clips never use "scaling"
    fams_ood = [f for f in fams if f != "scaling"] or [f for f in DEFAULT_FAMILIES]
    out = []
    n_in = n_ood = 0
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        ood = (i % ood_every) == ood_every - 1
        if ood:
            fam = fams_ood[(n_ood + 1) % len(fams_ood)]
            n_ood += 1
            clip, cap, info = D.make_harness_clip(rng, frames, H, W, trajectory=fam)
            o = info["objects"][0]
            ref_colour = _object_colour(clip, o["centre"].astype(np.float64), o["size"].astype(np.float64), o["shape"])
            ref_bg = None
            ref_caption = f"a textured {o['shape']} on a textured background"
            bgm = [round(float(v), 3) for v in info.get("background_motion", (0.0, 0.0))]
            name = f"ood{i:03d}_{fam}_{o['shape']}" + ("_movingbg" if any(bgm) else "")
        else:
            fam = fams[n_in % len(fams)]
            n_in += 1
            clip, cap, info = D.make_clip(rng, frames, H, W, n_obj=1, trajectory=fam, exclude=None)
            o = info["objects"][0]
            ref_colour, ref_bg, ref_caption, bgm = o["colour"], info["background"], cap, [0.0, 0.0]
            name = f"in{i:03d}_{fam}_{o['colour']}_{o['shape']}"
        c, s, b = pick_target(rng, ref_colour, o["shape"], ref_bg)
        entry = dict(
            name=name,
            prompt=D.caption_for([{"colour": c, "shape": s}], b),
            reference_caption=ref_caption,
            frames=int(clip.shape[0]), height=int(clip.shape[1]), width=int(clip.shape[2]),
            trajectory=np.asarray(o["centre"], np.float64).round(3).tolist(),
            target={"colour": c, "shape": s, "background": b},
            target_held_out=bool((c, s, b) in D.HELD_OUT),
            # extra fields (not needed by the Rust harness; used by score.py)
            domain="out_of_domain" if ood else "in_domain",
            family=fam,
            reference={"colour": ref_colour if not ood else "textured", "nearest_colour": ref_colour,
                       "shape": o["shape"], "background": ref_bg or "textured",
                       "background_motion": bgm},
            size=np.asarray(o["size"], np.float64).round(3).tolist(),
        )
        out.append((name, clip, entry))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bundle", default=os.path.join(REPO, "onnx", "models", "tiny-shapes"),
                    help="model bundle whose manifest 'defaults' give frames/size/fps")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--fps", type=float, default=None)
    ap.add_argument("--families", default=",".join(DEFAULT_FAMILIES),
                    help=f"comma-separated trajectory families to cycle through (from {','.join(MOVING)}); "
                         "'scaling' is left out by default, see README")
    a = ap.parse_args(argv)
    frames, H, W, fps, src = bundle_defaults(a.bundle)
    frames, H, W = a.frames or frames, a.height or H, a.width or W
    if a.fps:
        fps = int(a.fps) if a.fps == int(a.fps) else a.fps
    os.makedirs(a.out, exist_ok=True)
    entries = []
    fams = [f for f in a.families.split(",") if f]
    for name, clip, entry in make_set(a.count, a.seed, frames, H, W, families=fams):
        gif = name + ".gif"
        D.save_gif(clip, os.path.join(a.out, gif), fps=fps)
        entries.append(dict(name=entry["name"], gif=gif, **{k: v for k, v in entry.items() if k != "name"}, fps=fps))
    path = os.path.join(a.out, "clips.json")
    with open(path + ".tmp", "w") as f:
        json.dump(entries, f, indent=1)
    os.replace(path + ".tmp", path)
    n_ood = sum(e["domain"] == "out_of_domain" for e in entries)
    print(f"wrote {len(entries)} clips ({len(entries) - n_ood} in-domain, {n_ood} out-of-domain) "
          f"at {frames}x{H}x{W}, {fps} fps ({'from ' + src if src else 'data.py defaults'}) -> {path}")
    return path


if __name__ == "__main__":
    main()
