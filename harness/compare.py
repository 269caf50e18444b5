#!/usr/bin/env python3
"""Paired comparisons of harness variants: the numbers that decide defaults.

    python harness/compare.py RUN_DIR A:B [A1+A2:B1+B2 ...] [--csv FILE]

Reads RUN_DIR/scores.json (written by score.py). For each pair of mode names A:B it takes the
clips both scored (a finite MF in both) and prints the mean of MF(A) - MF(B) with its standard
error over those clips, the two means and the mean backward passes of each. Per clip the
outcome is nearly binary (the object follows the reference or stands still), so the spread over
clips is large; the paired difference is what separates two variants run on the same clips.
`A1+A2:B1+B2` pools pairs: A1 against B1 and A2 against B2 (e.g. one mode per seed), over the
clips each pair shares. `--csv FILE` also writes one row per clip with each named mode's MF and
backward passes.
numpy-free on purpose: it is a few means.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys


def load_scores(run_dir):
    with open(os.path.join(run_dir, "scores.json")) as f:
        runs = json.load(f)["runs"]
    by_mode = {}
    for r in runs:
        mf = r.get("mf")
        if "error" in r or mf is None or not math.isfinite(mf):
            continue
        by_mode.setdefault(r["mode"], {})[r["clip"]] = r
    return by_mode


def paired(by_mode, a, b):
    """Paired MF difference A - B over the clips both scored, or None when they share none.

    `a` and `b` may also be lists of the same length (e.g. one mode per seed): A[i] is paired
    with B[i] over their shared clips and the differences are pooled."""
    a_modes, b_modes = ([a], [b]) if isinstance(a, str) else (list(a), list(b))
    if len(a_modes) != len(b_modes):
        raise KeyError(f"{'+'.join(a_modes)} and {'+'.join(b_modes)}: pool as many modes on each side")
    for m in a_modes + b_modes:
        if m not in by_mode:
            raise KeyError(f"mode {m!r} is not in scores.json (modes: {', '.join(sorted(by_mode))})")
    pairs = [(x, y, c) for x, y in zip(a_modes, b_modes) for c in sorted(set(by_mode[x]) & set(by_mode[y]))]
    if not pairs:
        return None
    d = [by_mode[x][c]["mf"] - by_mode[y][c]["mf"] for x, y, c in pairs]
    n = len(d)
    mean = sum(d) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1) / n) if n > 1 else float("nan")

    def avg(side, key):
        return sum(by_mode[(x, y)[side]][c].get(key) or 0 for x, y, c in pairs) / n

    return dict(a="+".join(a_modes), b="+".join(b_modes), n=n, diff=mean, se=se, mf_a=avg(0, "mf"),
                mf_b=avg(1, "mf"), bwd_a=avg(0, "real_backward"), bwd_b=avg(1, "real_backward"))


def format_row(p):
    return (f"{p['a']} - {p['b']}: {p['diff']:+.3f} ± {p['se']:.3f} (n={p['n']}; MF {p['mf_a']:.3f} vs "
            f"{p['mf_b']:.3f}; backward passes {p['bwd_a']:.1f} vs {p['bwd_b']:.1f})")


def write_csv(by_mode, modes, path):
    clips = sorted({c for m in modes for c in by_mode.get(m, {})})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip"] + [f"{m}_{k}" for m in modes for k in ("mf", "bwd")])
        for c in clips:
            row = [c]
            for m in modes:
                r = by_mode.get(m, {}).get(c)
                row += ["", ""] if r is None else [f"{r['mf']:.3f}", r.get("real_backward")]
            w.writerow(row)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("pairs", nargs="+", metavar="A:B")
    ap.add_argument("--csv", help="write per-clip MF and backward passes of every named mode here")
    a = ap.parse_args(argv)
    by_mode = load_scores(a.run_dir)
    names = []
    for pair in a.pairs:
        if pair.count(":") != 1:
            ap.error(f"{pair!r}: write a pair as MODE_A:MODE_B")
        x, y = (side.split("+") for side in pair.split(":"))
        try:
            p = paired(by_mode, x, y)
        except KeyError as e:
            ap.error(str(e.args[0]))
        print(format_row(p) if p else f"{'+'.join(x)} - {'+'.join(y)}: no clip scored in both")
        names += [m for m in x + y if m not in names]
    if a.csv:
        write_csv(by_mode, names, a.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
