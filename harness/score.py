#!/usr/bin/env python3
"""Score motion-transfer runs: motion fidelity, prompt adherence, temporal consistency, cost.

    python harness/score.py RUN_DIR [--clips CLIPS_DIR_or_clips.json] [--quiet] [--no-selfcheck]

Reads RUN_DIR/runs.json (written by the Rust `fastvmt-harness` binary), loads each generated GIF
and its reference, writes RUN_DIR/scores.json (per run) and RUN_DIR/table.md (per mode), and
prints the table. numpy + Pillow only; see harness/README.md for the definitions.
Modules: segment.py (GIFs, background, foreground), tracker.py (tracks), metrics.py (per-run
scores), this file (runs, aggregation, table).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from metrics import motion_fidelity, score_pair  # noqa: E402
from segment import load_gif  # noqa: E402
from tracker import reference_tracks_gt, track_video  # noqa: E402

MODE_ORDER = ["none", "ditflow", "fastvmt", "adaptive"]
PAPER_HEADLINE_SPEEDUP = 3.43


# ----------------------------------------------------------------------------- runs
def load_clips(path):
    if path is None:
        return None, {}
    p = os.path.join(path, "clips.json") if os.path.isdir(path) else path
    with open(p) as f:
        entries = json.load(f)
    return os.path.dirname(os.path.abspath(p)), {e["name"]: e for e in entries}


def _resolve(p, *bases):
    if os.path.isabs(p):
        return p
    for b in bases:
        if b is None:
            continue
        q = os.path.join(b, p)
        if os.path.exists(q):
            return q
    return os.path.join(bases[0], p)


def _finite(vals):
    v = np.asarray([x for x in vals if x is not None], np.float64)
    return v[np.isfinite(v)]


def _mean(vals):
    v = _finite(vals)
    return float(v.mean()) if len(v) else float("nan")


def aggregate(scores):
    modes = sorted({s["mode"] for s in scores}, key=lambda m: (MODE_ORDER.index(m) if m in MODE_ORDER else 99, m))
    rows = {}
    for m in modes:
        rs = [s for s in scores if s["mode"] == m]
        ok = [s for s in rs if "error" not in s]
        mf = _finite([s.get("mf") for s in ok])
        rows[m] = dict(
            n=len(rs), failed=len(rs) - len(ok),
            mf_mean=float(mf.mean()) if len(mf) else float("nan"),
            mf_std=float(mf.std()) if len(mf) else float("nan"),
            mf_centroid=_mean([s.get("mf_centroid") for s in ok]),
            mf_symmetric=_mean([s.get("mf_symmetric") for s in ok]),
            centroid_err_px=_mean([s.get("centroid_err_px") for s in ok]),
            colour=_mean([s.get("colour_ok") for s in ok]), shape=_mean([s.get("shape_ok") for s in ok]),
            both=_mean([s.get("both_ok") for s in ok]), background=_mean([s.get("background_ok") for s in ok]),
            tc_stable=_mean([s.get("tc_stable") for s in ok]), tc_aligned_diff=_mean([s.get("tc_aligned_diff") for s in ok]),
            wall_s=_mean([s.get("wall_s") for s in rs]),
            real_forward=_mean([s.get("real_forward") for s in rs]),
            real_backward=_mean([s.get("real_backward") for s in rs]),
            stopped_on_nan=int(sum(bool(s.get("stopped_on_nan")) for s in rs)),
        )
        for dom in ("in_domain", "out_of_domain"):
            v = _finite([s.get("mf") for s in ok if s.get("domain") == dom])
            rows[m]["mf_" + dom] = float(v.mean()) if len(v) else float("nan")
        fams = sorted({s.get("family") for s in ok if s.get("family")})
        rows[m]["mf_by_family"] = {f: _mean([s.get("mf") for s in ok if s.get("family") == f]) for f in fams}
        held = [s for s in ok if s.get("target_held_out")]
        rows[m]["both_held_out_targets"] = _mean([s.get("both_ok") for s in held])
    base = rows.get("ditflow", {}).get("wall_s")
    for m, r in rows.items():
        r["speedup_vs_ditflow"] = (base / r["wall_s"]) if base and r["wall_s"] and math.isfinite(base) else float("nan")
    return rows


def _f(x, fmt="{:.3f}", na="n/a"):
    return na if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def table(rows, meta=None):
    meta = meta or {}
    lines = []
    if meta:
        extra = "".join(f" · {k}: {meta[k]}" for k in ("device", "steps") if meta.get(k) is not None)
        lines.append(f"Machine: {meta.get('machine', '?')} · model: {meta.get('model', '?')}{extra} · "
                     f"{meta.get('n_clips', '?')} clips")
        lines.append("")
    lines += ["| mode | runs | motion fidelity | MF in / out of domain | MF symmetric | centroid err (px) | colour | shape | "
              "colour+shape | temporal consistency (stable / aligned diff) | wall (s) | real fwd | real bwd | "
              "speedup vs ditflow |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, r in rows.items():
        runs = f"{r['n']}" + (f" ({r['failed']} failed)" if r["failed"] else "") + \
            (f" ({r['stopped_on_nan']} NaN-stopped)" if r.get("stopped_on_nan") else "")
        lines.append(
            f"| {m} | {runs} | {_f(r['mf_mean'])} ± {_f(r['mf_std'])} | {_f(r['mf_in_domain'], '{:.2f}')} / "
            f"{_f(r['mf_out_of_domain'], '{:.2f}')} | {_f(r['mf_symmetric'], '{:.2f}')} | {_f(r['centroid_err_px'], '{:.1f}')} | "
            f"{_f(100 * r['colour'], '{:.0f}%')} | {_f(100 * r['shape'], '{:.0f}%')} | {_f(100 * r['both'], '{:.0f}%')} | "
            f"{_f(100 * r['tc_stable'], '{:.0f}%')} / {_f(r['tc_aligned_diff'], '{:.3f}')} | {_f(r['wall_s'], '{:.2f}')} | "
            f"{_f(r['real_forward'], '{:.1f}')} | {_f(r['real_backward'], '{:.1f}')} | "
            f"{_f(r['speedup_vs_ditflow'], '{:.2f}x')} |")
    sp = {m: r["speedup_vs_ditflow"] for m, r in rows.items() if m != "ditflow" and math.isfinite(r["speedup_vs_ditflow"])}
    if sp:
        lines.append("")
        lines.append(f"FastVMT's headline speedup is {PAPER_HEADLINE_SPEEDUP}x (whole job vs DiTFlow): " + "; ".join(
            f"{m} {v:.2f}x = {100 * v / PAPER_HEADLINE_SPEEDUP:.0f}% of it" for m, v in sp.items()) + ".")
    sc = meta.get("tracker_selfcheck_mf")
    if sc:
        lines.append("")
        lines.append(f"Tracker self-check (each reference scored as its own output against its ground truth): "
                     f"MF {sc['mean']:.3f} mean, {sc['min']:.3f} min over {sc['n']} clips.")
    lines.append("")
    lines.append("Motion fidelity: mean over generated tracks of the best-matching reference track's mean cosine "
                 "of per-step displacements (1 = same motion, 0 = unrelated or still, -1 = opposite); symmetric: "
                 "also each reference track's best generated match, averaged with it; centroid "
                 "error vs the reference's ground-truth centre. Colour/shape: checker.py against the prompt. "
                 "Stable: share of frame steps with one object of steady area; aligned diff: mean abs change of the "
                 "object region after undoing its motion (0..1, lower is steadier). See harness/README.md.")
    return "\n".join(lines)


def _jsonable(d):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _jsonable(v)
        if isinstance(v, (np.floating, float)):
            v = float(v)
            v = v if math.isfinite(v) else None
        elif isinstance(v, (np.integer,)):
            v = int(v)
        elif isinstance(v, (np.bool_,)):
            v = bool(v)
        out[k] = v
    return out


def score_runs(run_dir, clips=None, quiet=False, selfcheck=True):
    with open(os.path.join(run_dir, "runs.json")) as f:
        runs_doc = json.load(f)
    runs = runs_doc.get("runs", [])
    if clips is None and runs:
        ref0 = _resolve(runs[0].get("reference_gif", ""), run_dir, os.getcwd())
        cand = [os.path.join(os.path.dirname(ref0), "clips.json"),
                os.path.join(run_dir, "..", "clips", "clips.json")]
        clips = next((c for c in cand if os.path.exists(c)), None)
    clips_dir, entries = load_clips(clips)
    ref_cache, scores = {}, []
    for i, run in enumerate(runs):
        entry = entries.get(run.get("clip"))
        rec = dict(clip=run.get("clip"), mode=run.get("mode"), gif=run.get("gif"),
                   domain=(entry or {}).get("domain"), family=(entry or {}).get("family"),
                   target_held_out=(entry or {}).get("target_held_out"),
                   **{k: run.get(k) for k in ("wall_s", "real_forward", "real_backward", "cached_steps",
                                              "guided_steps", "denoiser_passes", "first_loss", "final_loss",
                                              "stopped_on_nan", "seed")})
        try:
            ref_path = _resolve(run["reference_gif"], run_dir, os.getcwd(), clips_dir) if run.get("reference_gif") \
                else os.path.join(clips_dir, entry["gif"])
            key = os.path.abspath(ref_path)
            fms = 1000.0 / float(entry["fps"]) if entry and entry.get("fps") else None
            if key not in ref_cache:
                ref = load_gif(ref_path, fms)
                rt = reference_tracks_gt(entry) if entry and entry.get("trajectory") else None
                ref_cache[key] = (ref, rt)
            ref, rt = ref_cache[key]
            gen = load_gif(_resolve(run["gif"], run_dir, os.getcwd()), fms)
            rec.update(score_pair(gen, ref, entry, rt))
        except Exception as e:  # a broken run is reported, not fatal
            rec["error"] = f"{type(e).__name__}: {e}"
        scores.append(_jsonable(rec))
        if not quiet:
            print(f"[{i + 1}/{len(runs)}] {rec['mode']:>8} {rec['clip']}: "
                  + (f"MF {_f(rec.get('mf'))}, centroid err {_f(rec.get('centroid_err_px'), '{:.1f}')} px, "
                     f"colour {rec.get('colour_ok')}, shape {rec.get('shape_ok')}" if "error" not in rec else rec["error"]),
                  file=sys.stderr)
    # tracker self-check: each reference scored as its own output against its ground truth
    checks = []
    for key, (ref, rt) in (ref_cache.items() if selfcheck else ()):
        if rt is not None:
            tr = track_video(ref)["tracks"]
            checks.append(motion_fidelity(tr, rt[:, :len(ref)], ref.shape[1], ref.shape[2])["mf"])
    rows = aggregate(scores)
    meta = dict(machine=runs_doc.get("machine"), model=runs_doc.get("model"), device=runs_doc.get("device"),
                steps=runs_doc.get("steps"), n_clips=len({s["clip"] for s in scores}))
    sc = _finite(checks)
    if len(sc):
        meta["tracker_selfcheck_mf"] = dict(mean=float(sc.mean()), min=float(sc.min()), n=int(len(sc)))
    md = table(rows, meta)
    with open(os.path.join(run_dir, "scores.json"), "w") as f:
        json.dump(dict(meta=meta, clips=os.path.abspath(clips) if clips else None,
                       per_mode={m: _jsonable(r) for m, r in rows.items()}, runs=scores), f, indent=1)
    with open(os.path.join(run_dir, "table.md"), "w") as f:
        f.write(md + "\n")
    return md, rows, scores


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--clips", default=None, help="reference set folder (or its clips.json); default: "
                    "the folder of the first reference GIF, else RUN_DIR/../clips")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--no-selfcheck", action="store_true", help="skip tracking the references themselves")
    a = ap.parse_args(argv)
    md, _, _ = score_runs(a.run_dir, a.clips, a.quiet, selfcheck=not a.no_selfcheck)
    print(md)


if __name__ == "__main__":
    main()
