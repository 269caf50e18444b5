"""Per-run scores for the harness: motion fidelity, centroid error, temporal consistency and
prompt adherence (onnx/fastvmt_onnx/checker.py), numpy only. See harness/README.md.

    score_pair(generated uint8 [F,H,W,3], reference, clips.json entry) -> dict
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from segment import _shift2d, resize_video
from tracker import reference_tracks_gt, track_video

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "onnx"))
from fastvmt_onnx import checker as C  # noqa: E402

MOVE_FRAC = 0.01          # a step shorter than this is "still": 0.48 px at 48
STATIC_FRAC = 0.03        # a track whose max distance from its start is below this is static: 1.44 px
STABLE_AREA_RATIO = 1.7   # temporal consistency: as the checker's coherent-motion test
STABLE_JUMP_FRAC = 0.25


def _ref_steps(tracks, eps):
    """Reference steps: unit displacement where the track moves >= eps, else not counted."""
    d = np.diff(tracks, axis=1)                                   # [T,F-1,2]
    valid = np.isfinite(d).all(-1)
    n = np.linalg.norm(np.where(valid[..., None], d, 0.0), axis=-1)
    moving = valid & (n >= eps)
    return np.where(moving[..., None], d / np.maximum(n, 1e-12)[..., None], 0.0), moving


def _gen_steps(tracks, eps):
    """Generated steps: displacement / max(|displacement|, eps) -- a unit vector when it moves
    at least eps, shrinking to 0 for a still point; 0 where untracked."""
    d = np.diff(tracks, axis=1)
    valid = np.isfinite(d).all(-1)
    d = np.where(valid[..., None], d, 0.0)
    n = np.linalg.norm(d, axis=-1)
    return d / np.maximum(n, eps)[..., None]


def similarity(gen, ref, eps):
    """[Tg,Tr]: mean, over the frame steps where the reference track moves, of the dot product
    of the two tracks' unit displacements (a generated point that stands still scores 0 there;
    steps where the reference is still are not counted)."""
    ug = _gen_steps(gen, eps)
    ur, mr = _ref_steps(ref, eps)
    dots = np.einsum("gfc,rfc->grf", ug, ur)                      # 0 where the reference is still
    return dots.sum(-1) / np.maximum(mr.sum(-1), 1)[None]


def moving_tracks(tracks, H, W):
    """Tracks that carry motion: max distance from the start >= STATIC_FRAC * size and moving
    (>= MOVE_FRAC * size) on at least a quarter of the frame steps."""
    L = max(H, W)
    start = tracks[:, :1]
    far = np.nan_to_num(np.linalg.norm(tracks - start, axis=-1), nan=0.0).max(1) >= STATIC_FRAC * L
    _, mv = _ref_steps(tracks, MOVE_FRAC * L)
    need = max(1, int(math.ceil(0.25 * (tracks.shape[1] - 1))))
    return far & (mv.sum(1) >= need)


def motion_fidelity(gen, ref, H, W):
    """gen, ref: tracks [T,F,2] (same F). Static tracks (see moving_tracks) are dropped from
    both sets: they carry no motion, and a still point would otherwise be scored against moving
    ones (or, were still steps counted as agreement, still points would match each other).
    mf = mean over the generated moving tracks of the max over the reference moving tracks of
    similarity(); 0 when the output has no moving track at all (the reference moves, it does
    not); NaN when the reference has none. mf_symmetric also averages the other direction
    (reference tracks' best generated match); mf_centroid compares the two centroid tracks."""
    eps = MOVE_FRAC * max(H, W)
    kr, kg = moving_tracks(ref, H, W), moving_tracks(gen, H, W)
    out = dict(n_gen_tracks=int(kg.sum()), n_gen_static=int((~kg).sum()),
               n_ref_tracks=int(kr.sum()), n_ref_static=int((~kr).sum()))
    if not kr.any():
        return dict(out, mf=float("nan"), mf_symmetric=float("nan"), mf_centroid=float("nan"))
    if not kg.any():
        return dict(out, mf=0.0, mf_symmetric=0.0, mf_centroid=0.0)
    S = similarity(gen[kg], ref[kr], eps)
    out["mf"] = float(S.max(1).mean())
    out["mf_symmetric"] = float(0.5 * (S.max(1).mean() + S.max(0).mean()))
    out["mf_centroid"] = float(similarity(gen[:1], ref[:1], eps)[0, 0]) if kr[0] else float("nan")
    return out


def centroid_error(track, gt, H, W):
    """Mean / max distance (px) between a centroid track and the ground-truth centre; frames
    without an object count as half the frame diagonal."""
    d = np.linalg.norm(track - gt, axis=-1)
    d = np.where(np.isnan(d), 0.5 * math.hypot(H, W), d)
    return float(d.mean()), float(d.max())


def temporal_consistency(video, tr):
    """stable: fraction of frame steps where the object is found in both frames as one dominant
    component, its area changes by < 1.7x and its centroid moves < 1/4 of the frame.
    aligned_diff: mean |frame t+1 shifted back by the object's displacement - frame t| / 255 over
    the object's padded bounding box (0 = the object is carried unchanged from frame to frame)."""
    Fn, H, W, _ = video.shape
    c, a, dom = tr["centroid"], tr["areas"], tr["dominant"]
    stable, diffs = [], []
    x = video.astype(np.float64) / 255.0
    for f in range(Fn - 1):
        ok = bool(a[f] > 0 and a[f + 1] > 0 and dom[f] and dom[f + 1])
        if ok:
            r = max(a[f + 1] / a[f], a[f] / a[f + 1])
            ok = r < STABLE_AREA_RATIO and np.linalg.norm(c[f + 1] - c[f]) < STABLE_JUMP_FRAC * max(H, W)
        stable.append(ok)
        if a[f] > 0 and a[f + 1] > 0:
            ys, xs = np.nonzero(tr["masks"][f])
            y0, y1 = max(ys.min() - 2, 0), min(ys.max() + 3, H)
            x0, x1 = max(xs.min() - 2, 0), min(xs.max() + 3, W)
            dx, dy = np.rint(c[f + 1] - c[f]).astype(int)
            back = _shift2d(x[f + 1], -dy, -dx, np.nan)
            d = np.abs(back[y0:y1, x0:x1] - x[f][y0:y1, x0:x1])
            if np.isfinite(d).any():
                diffs.append(float(np.nanmean(d)))
    return dict(stable=float(np.mean(stable)) if stable else float("nan"),
                aligned_diff=float(np.mean(diffs)) if diffs else float("nan"))


def adherence(video, target):
    try:
        r = C.check_clip(video)
    except Exception as e:  # the checker is not ours: report, do not fail the run
        r = dict(error=f"{type(e).__name__}: {e}")
    out = dict(pred_colour=r.get("pred_colour"), pred_shape=r.get("pred_shape"), checker_error=r.get("error"),
               pred_background=r.get("pred_background"), coherent=bool(r.get("coherent")))
    if target:
        out.update(colour_ok=r.get("pred_colour") == target.get("colour"),
                   shape_ok=r.get("pred_shape") == target.get("shape"),
                   background_ok=r.get("pred_background") == target.get("background"))
        out["both_ok"] = out["colour_ok"] and out["shape_ok"]
    return out


# ----------------------------------------------------------------------------- scoring a pair
def score_pair(gen, ref, entry=None, ref_tracks=None, check_prompt=True):
    """Score a generated video against a reference. entry: the clip's clips.json record (gives
    ground-truth tracks and the target); without it the reference is tracked like the output."""
    Hr, Wr = ref.shape[1:3]
    gen = resize_video(gen, Hr, Wr)
    Fn = min(len(gen), len(ref))
    out = {}
    if len(gen) != len(ref):
        out["frame_mismatch"] = [int(len(gen)), int(len(ref))]
    gen, ref = gen[:Fn], ref[:Fn]
    tg = track_video(gen)
    has_gt = entry is not None and bool(entry.get("trajectory"))
    out["reference_tracks"] = "ground truth" if has_gt else "tracked"
    if ref_tracks is None:
        if has_gt:
            ref_tracks = reference_tracks_gt(entry)
        else:
            ref_tracks = track_video(ref)["tracks"]
    ref_tracks = ref_tracks[:, :Fn]
    out.update(motion_fidelity(tg["tracks"], ref_tracks, Hr, Wr))
    gt = np.asarray(entry["trajectory"], np.float64)[:Fn] if has_gt else ref_tracks[0]
    out["centroid_err_px"], out["centroid_err_max_px"] = centroid_error(tg["centroid"], gt, Hr, Wr)
    out.update({"tc_" + k: v for k, v in temporal_consistency(gen, tg).items()})
    out["gen_background"] = tg["background"]
    if check_prompt:
        out.update(adherence(gen, (entry or {}).get("target")))
    return out
