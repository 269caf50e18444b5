#!/usr/bin/env python3
"""Fake runs for testing the scorer before / without the Rust harness binary.

    python harness/fake_runs.py --clips DIR --out RUN_DIR [--modes none,ditflow,fastvmt,adaptive]

Writes RUN_DIR/runs.json in the Rust harness's format and one GIF per (clip, mode), rendered
with data.py instead of a model: the prompt's target object on the target background, moving
  none      along another clip's trajectory (what plain sampling amounts to: unrelated motion),
  ditflow   exactly along the reference trajectory (a perfect transfer),
  fastvmt   along it with 0.5 px of jitter,
  adaptive  along it with 1 px of jitter,
  reversed  along it backwards in time, static: standing still at the first position.
Wall times and pass counts are invented (machine = "fake"): only the scorer is being tested.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "onnx"))
from fastvmt_onnx import data as D  # noqa: E402

FAKE_COST = {  # wall_s, real_forward, real_backward, cached_steps, guided_steps
    "none": (1.0, 30, 0, 0, 0), "ditflow": (3.0, 90, 60, 0, 6), "fastvmt": (1.9, 54, 24, 36, 6),
    "adaptive": (1.6, 46, 16, 44, 6), "reversed": (1.0, 30, 0, 0, 0), "static": (1.0, 30, 0, 0, 0)}


def render(entry, centre, size=None):
    """The entry's target (colour, shape, background) drawn along centre [F,2]."""
    t = entry["target"]
    F, H, W = len(centre), entry["height"], entry["width"]
    size = np.asarray(size if size is not None else entry.get("size") or [0.2 * min(H, W)] * F, np.float64)
    bg = np.broadcast_to(np.asarray(D.BACKGROUNDS[t["background"]], np.float32), (F, H, W, 3))
    obj = dict(shape=t["shape"], centre=np.asarray(centre, np.float64), size=size, fill=D.COLOURS[t["colour"]])
    return D._render(bg, [obj], H, W)


def fake_video(entry, mode, entries, rng):
    c = np.asarray(entry["trajectory"], np.float64)
    size = np.asarray(entry.get("size") or [0.2 * min(entry["height"], entry["width"])] * len(c), np.float64)
    if mode == "none":
        others = [e for e in entries if e["name"] != entry["name"]] or [entry]
        o = others[rng.integers(len(others))]
        return render(entry, np.asarray(o["trajectory"], np.float64)[:len(c)], size)
    if mode == "ditflow":
        return render(entry, c, size)
    if mode in ("fastvmt", "adaptive"):
        jit = 0.5 if mode == "fastvmt" else 1.0
        return render(entry, c + rng.normal(0, jit, c.shape), size)
    if mode == "reversed":
        return render(entry, c[::-1], size[::-1])
    if mode == "static":
        return render(entry, np.repeat(c[:1], len(c), 0), np.repeat(size[:1], len(c)))
    raise ValueError(mode)


def write_fake_runs(clips_json, out, modes=("none", "ditflow", "fastvmt", "adaptive"), seed=0):
    with open(clips_json) as f:
        entries = json.load(f)
    clips_dir = os.path.dirname(os.path.abspath(clips_json))
    os.makedirs(os.path.join(out, "gifs"), exist_ok=True)
    runs = []
    for i, e in enumerate(entries):
        for j, m in enumerate(modes):
            rng = np.random.default_rng([seed, i, j])
            rel = os.path.join("gifs", f"{e['name']}.{m}.gif")
            D.save_gif(fake_video(e, m, entries, rng), os.path.join(out, rel), fps=e.get("fps", 8))
            wall, fwd, bwd, cached, guided = FAKE_COST.get(m, (1.0, 30, 0, 0, 0))
            runs.append(dict(clip=e["name"], mode=m, gif=rel,
                             reference_gif=os.path.relpath(os.path.join(clips_dir, e["gif"]), out),
                             prompt=e["prompt"], wall_s=wall * (1 + 0.05 * rng.standard_normal()),
                             real_forward=fwd, real_backward=bwd, cached_steps=cached, guided_steps=guided,
                             final_loss=0.01 if guided else None, seed=0))
    doc = dict(machine="fake (harness/fake_runs.py: rendered, no model)", model="none", runs=runs)
    with open(os.path.join(out, "runs.json"), "w") as f:
        json.dump(doc, f, indent=1)
    return doc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", required=True, help="reference set folder or its clips.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", default="none,ditflow,fastvmt,adaptive")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    cj = os.path.join(a.clips, "clips.json") if os.path.isdir(a.clips) else a.clips
    doc = write_fake_runs(cj, a.out, [m for m in a.modes.split(",") if m], a.seed)
    print(f"wrote {len(doc['runs'])} fake runs -> {os.path.join(a.out, 'runs.json')}")


if __name__ == "__main__":
    main()
