#!/usr/bin/env python3
"""Score motion-transfer runs: motion fidelity, prompt adherence, temporal consistency, cost.

    python harness/score.py RUN_DIR [--clips CLIPS_DIR_or_clips.json]

Reads RUN_DIR/runs.json (written by the Rust `fastvmt-harness` binary), loads each generated GIF
and its reference, writes RUN_DIR/scores.json (per run) and RUN_DIR/table.md (per mode), and
prints the table. numpy + Pillow only; see harness/README.md for the definitions.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "onnx"))

from fastvmt_onnx import checker as C  # noqa: E402

MODE_ORDER = ["none", "ditflow", "fastvmt", "adaptive"]
PAPER_HEADLINE_SPEEDUP = 3.43

# tracker / metric constants, as fractions of the frame's larger side (48 px -> value in px)
FG_THRESH = 50.0          # RGB distance from the background estimate that counts as foreground
FG_THRESH_TEXTURED = 35.0  # same, against a textured background's aligned temporal median
FLAT_BG_SPREAD = 12.0     # border-ring spread (median RGB distance) above which a flat bg is 'noisy'
GRID_FRAC = 1 / 12        # grid stride: 4 px at 48
SEARCH_FRAC = 1 / 12      # block-matching search radius around the prediction: 4 px at 48
PATCH_R = 2               # block-matching patch: 5 x 5
PRIOR_LAMBDA = 1e-3       # cost = mean squared patch difference (0..1 units) + lambda * px^2 from prediction
MOVE_FRAC = 0.01          # a step shorter than this is "still": 0.48 px at 48
STATIC_FRAC = 0.03        # a track whose max distance from its start is below this is static: 1.44 px
MAX_POINTS = 64
TEXTURE_STD = 10.0        # interior RGB std above which an object is textured (block matching)
STABLE_AREA_RATIO = 1.7   # temporal consistency: as the checker's coherent-motion test
STABLE_JUMP_FRAC = 0.25


# ----------------------------------------------------------------------------- io
def load_gif(path, frame_ms=None):
    """uint8 [F,H,W,3]. GIF writers (Pillow among them) merge identical consecutive frames into
    one longer frame: each frame is repeated round(duration / frame_ms) times, frame_ms being
    the given frame duration or else the shortest one in the file."""
    from PIL import Image, ImageSequence
    frames, durs = [], []
    with Image.open(path) as im:
        for f in ImageSequence.Iterator(im):
            frames.append(np.asarray(f.convert("RGB")))
            durs.append(f.info.get("duration") or 0)
    base = frame_ms or min([d for d in durs if d > 0], default=0)
    if base:
        reps = [max(1, int(round(d / base))) if d else 1 for d in durs]
        frames = [f for f, r in zip(frames, reps) for _ in range(r)]
    return np.stack(frames)


def resize_video(v, H, W):
    if v.shape[1:3] == (H, W):
        return v
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(f).resize((W, H), Image.BILINEAR)) for f in v])


# ----------------------------------------------------------------------------- masks
def _shift2d(a, dy, dx, fill):
    """out[y, x] = a[y - dy, x - dx] (integer shift, fill outside)."""
    H, W = a.shape[:2]
    out = np.full_like(a, fill)
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    if H - abs(dy) > 0 and W - abs(dx) > 0:
        out[yd, xd] = a[ys, xs]
    return out


def erode(m, r=1):
    out = m.copy()
    for _ in range(r):
        p = np.pad(out, 1, constant_values=False)
        out = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return out


def dilate(m, r=1):
    out = m.copy()
    for _ in range(r):
        p = np.pad(out, 1, constant_values=False)
        out = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return out


def components(mask):
    """4-connected components -> (labels int32 [H,W], sizes array, index 0 = background)."""
    H, W = mask.shape
    lab = np.zeros((H, W), np.int32)
    sizes = [0]
    for y0, x0 in zip(*np.nonzero(mask)):
        if lab[y0, x0]:
            continue
        cur = len(sizes)
        lab[y0, x0] = cur
        stack, n = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            n += 1
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < H and 0 <= xx < W and mask[yy, xx] and not lab[yy, xx]:
                    lab[yy, xx] = cur
                    stack.append((yy, xx))
        sizes.append(n)
    return lab, np.array(sizes)


def background_shifts(x, band=4, radius=3):
    """Integer global translation (dy, dx) of a textured background per frame relative to frame 0
    (frame f pixel p shows what frame 0 showed at p - s_f): match the outer `band` pixels of each
    frame against frame 0 over shifts within `radius` of a constant-velocity prediction, robust
    cost = mean of the lowest 80% of |differences|. The object stays off the border in these clips, so the band is
    background."""
    Fn, H, W, _ = x.shape
    yy, xx = np.mgrid[0:H, 0:W]
    inb = (yy < band) | (yy >= H - band) | (xx < band) | (xx >= W - band)
    by, bx = yy[inb], xx[inb]
    shifts = [(0, 0)]
    for f in range(1, Fn):
        py, px = shifts[-1]
        if f >= 2:
            py, px = 2 * shifts[-1][0] - shifts[-2][0], 2 * shifts[-1][1] - shifts[-2][1]
        best, best_c = (py, px), np.inf
        for dy in range(py - radius, py + radius + 1):
            for dx in range(px - radius, px + radius + 1):
                sy, sx = by - dy, bx - dx
                ok = (sy >= 0) & (sy < H) & (sx >= 0) & (sx < W)
                if ok.sum() < 0.25 * len(by):
                    continue
                d = np.sort(np.abs(x[f][by[ok], bx[ok]] - x[0][sy[ok], sx[ok]]).sum(-1))
                c = float(d[: max(1, int(0.8 * len(d)))].mean())  # trimmed mean: robust, no ties
                c += 1e-3 * ((dy - py) ** 2 + (dx - px) ** 2)  # tie-break toward the prediction
                if c < best_c:
                    best, best_c = (dy, dx), c
        shifts.append(best)
    return shifts


def _aligned_median(x, shifts, exclude=None):
    """Per-pixel temporal median in background-aligned coordinates, mapped back to each frame;
    `exclude` (bool [F,H,W]) pixels do not vote."""
    Fn, H, W, _ = x.shape
    al = np.full((Fn, H, W, 3), np.nan)
    for f, (dy, dx) in enumerate(shifts):
        xf = x[f] if exclude is None else np.where(exclude[f][..., None], np.nan, x[f])
        al[f] = _shift2d(xf, -dy, -dx, np.nan)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        canvas = np.nanmedian(al, 0)
    bg = np.stack([_shift2d(canvas, dy, dx, np.nan) for dy, dx in shifts])
    return np.where(np.isnan(bg), x, bg)  # never seen as background -> counts as background


def fill_holes(m):
    """Fill background regions of a 2D mask that do not touch the border."""
    lab, _ = components(~m)
    border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))) - {0}
    return m | ((lab > 0) & ~np.isin(lab, list(border)))


def background(video, force_textured=False):
    """Background estimate float [F,H,W,3], a description, and the background's per-frame shift
    (None for a flat background). Flat when the 2-px border ring is one colour up to noise (< 5%
    of its pixels farther than FG_THRESH from the frame's ring median; "flat, noisy" when their
    median distance exceeds FLAT_BG_SPREAD) -> each frame's ring median colour. Textured -> the
    per-pixel temporal median after aligning frames by the background's global translation
    (border-band matching)."""
    x = video.astype(np.float64)
    Fn, H, W, _ = x.shape
    if not force_textured:
        ring = np.concatenate([x[:, :2].reshape(Fn, -1, 3), x[:, -2:].reshape(Fn, -1, 3),
                               x[:, :, :2].reshape(Fn, -1, 3), x[:, :, -2:].reshape(Fn, -1, 3)], 1)
        med = np.median(ring, 1)
        rd = np.sqrt(((ring - med[:, None]) ** 2).sum(-1))
        if float((rd > FG_THRESH).mean()) < 0.05:
            kind = "flat" if float(np.median(rd)) < FLAT_BG_SPREAD else "flat, noisy"
            # some frame's border not explained by one colour (a moving gradient entering, or
            # an object touching the border): flag it for a comparison with the textured model
            if float((rd > FG_THRESH).mean(1).max()) >= 0.02:
                kind += ", uncertain"
            return np.broadcast_to(med[:, None, None], x.shape).copy(), kind, None
    shifts = background_shifts(x)
    moving = any(s != (0, 0) for s in shifts)
    kind = "textured" + (f", moving ({shifts[-1][1]}, {shifts[-1][0]}) px (x, y) by the last frame" if moving else ", static")
    return _aligned_median(x, shifts), kind, shifts


def _clean(m):
    return np.stack([dilate(erode(fill_holes(erode(dilate(f, 1), 1)), 1), 1) for f in m])


def foreground(video, force_textured=False):
    """Foreground mask bool [F,H,W], the background description and the distance map.
    Flat background: RGB distance > FG_THRESH from the border colour (opened if noisy).
    Textured: distance > FG_THRESH_TEXTURED from the aligned temporal median, closed,
    hole-filled and opened; the median is then recomputed without the foreground's votes
    (twice) so slow objects do not ghost into the background. When the flat model is uncertain
    (some frame's border is not one colour), both are computed and the one leaving the smaller
    foreground is kept if it is under 0.6x the flat one (the textured median can swallow part of
    a slow object, so it must explain the frames clearly better)."""
    x = video.astype(np.float64)
    bg, kind, shifts = background(video, force_textured)
    if shifts is None:
        dist = np.sqrt(((x - bg) ** 2).sum(-1))
        fg = dist > FG_THRESH
        if kind != "flat":
            fg = np.stack([dilate(erode(f, 1), 1) for f in fg])
        if kind.endswith(", uncertain"):
            fg_t, kind_t, dist_t = foreground(video, force_textured=True)
            if fg_t.sum() < 0.6 * fg.sum():
                return fg_t, kind_t, dist_t
            kind = kind[: -len(", uncertain")]
        return fg, kind, dist
    fg = _clean(np.sqrt(((x - bg) ** 2).sum(-1)) > FG_THRESH_TEXTURED)
    for _ in range(2):
        bg = _aligned_median(x, shifts, exclude=np.stack([dilate(f, 1) for f in fg]))
        dist = np.sqrt(((x - bg) ** 2).sum(-1))
        fg = _clean(dist > FG_THRESH_TEXTURED)
    return fg, kind, dist


def object_stats(fg, video=None, dist=None, soft=False):
    """Per frame: centroid (x, y) in pixel-index coords (NaN if absent), area of the largest
    component, whether it dominates (>= 80% of the foreground), its mask, and the colour
    spread of its interior (std of RGB, 0 for a flat colour). soft: sub-pixel centroid and area
    from anti-aliased coverage, estimated as distance-from-background / the interior's median
    distance over the component grown by one pixel (exact for a flat object on a flat bg)."""
    Fn, H, W = fg.shape
    cents = np.full((Fn, 2), np.nan)
    areas = np.zeros(Fn)
    dominant = np.zeros(Fn, bool)
    masks = np.zeros_like(fg)
    spread = np.full(Fn, np.nan)
    for f in range(Fn):
        lab, sizes = components(fg[f])
        if len(sizes) <= 1 or sizes[1:].max() < 6 or sizes[1:].max() > 0.5 * H * W:
            continue
        k = int(np.argmax(sizes[1:])) + 1
        m = lab == k
        core = erode(m, 1)
        if core.sum() < 4:
            core = m
        if video is not None:
            spread[f] = float(video[f][core].astype(np.float64).std(0).mean())
        ys, xs = np.nonzero(m)
        cents[f] = xs.mean(), ys.mean()
        areas[f] = len(ys)
        if soft and dist is not None:
            D0 = float(np.median(dist[f][core]))
            w = np.clip(dist[f] / max(D0, 1e-6), 0, 1) * dilate(m, 1)
            yy, xx = np.nonzero(w)
            ww = w[yy, xx]
            cents[f] = (xx * ww).sum() / ww.sum(), (yy * ww).sum() / ww.sum()
            areas[f] = ww.sum()
        dominant[f] = sizes[k] >= 0.8 * sizes[1:].sum()
        masks[f] = m
    return cents, areas, dominant, masks, spread


# ----------------------------------------------------------------------------- tracking
def grid_seeds(mask, H, W):
    """Grid points (x, y) (pixel-index coords) inside the mask eroded by the patch radius."""
    g = max(2, int(round(max(H, W) * GRID_FRAC)))
    inner = erode(mask, PATCH_R)
    if not inner.any():
        inner = mask
    ys, xs = np.mgrid[g // 2:H:g, g // 2:W:g]
    keep = inner[ys, xs]
    pts = np.stack([xs[keep], ys[keep]], -1).astype(np.float64)
    if len(pts) > MAX_POINTS:
        pts = pts[np.linspace(0, len(pts) - 1, MAX_POINTS).round().astype(int)]
    return pts


def _bilinear(img, pts):
    """img float [H,W,C], pts float [...,2] (x, y) -> [...,C], edge-clamped."""
    H, W = img.shape[:2]
    x = np.clip(pts[..., 0], 0, W - 1)
    y = np.clip(pts[..., 1], 0, H - 1)
    x0 = np.clip(np.floor(x).astype(int), 0, W - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, H - 2)
    ax, ay = (x - x0)[..., None], (y - y0)[..., None]
    return ((1 - ay) * ((1 - ax) * img[y0, x0] + ax * img[y0, x0 + 1]) +
            ay * ((1 - ax) * img[y0 + 1, x0] + ax * img[y0 + 1, x0 + 1]))


def block_match_step(f0, f1, pts, pred):
    """Track pts (P,2) from frame f0 to f1 (float [H,W,3] in 0..1): SSD of a 5x5 patch over a
    search window around `pred`, plus a small penalty on distance from `pred` (so untextured
    patches follow the prediction), then parabolic sub-pixel refinement."""
    H, W = f0.shape[:2]
    R = max(2, int(round(max(H, W) * SEARCH_FRAC)))
    o = np.arange(-PATCH_R, PATCH_R + 1)
    offs = np.stack(np.meshgrid(o, o, indexing="xy"), -1).reshape(-1, 2)          # (K,2) x,y
    src = _bilinear(f0, pts[:, None, :] + offs[None])                             # (P,K,3)
    s = np.arange(-R, R + 1)
    cand = np.stack(np.meshgrid(s, s, indexing="xy"), -1).reshape(-1, 2)          # (S,2)
    base = np.rint(pred).astype(int)
    q = base[:, None, :] + cand[None]                                             # (P,S,2)
    q[..., 0] = np.clip(q[..., 0], PATCH_R, W - 1 - PATCH_R)
    q[..., 1] = np.clip(q[..., 1], PATCH_R, H - 1 - PATCH_R)
    pix = q[:, :, None, :] + offs[None, None]                                     # (P,S,K,2)
    tgt = f1[pix[..., 1], pix[..., 0]]                                            # (P,S,K,3)
    ssd = ((tgt - src[:, None]) ** 2).mean((-1, -2))                              # (P,S)
    cost = ssd + PRIOR_LAMBDA * ((q - pred[:, None]) ** 2).sum(-1)
    best = np.argmin(cost, 1)
    n = 2 * R + 1
    cost_g = cost.reshape(-1, n, n)                                               # [P, y, x]
    by, bx = best // n, best % n
    out = q[np.arange(len(pts)), best].astype(np.float64)
    for p in range(len(pts)):
        y, x = by[p], bx[p]
        if 0 < x < n - 1:
            c0, c1, c2 = cost_g[p, y, x - 1], cost_g[p, y, x], cost_g[p, y, x + 1]
            den = c0 - 2 * c1 + c2
            if den > 1e-12:
                out[p, 0] += float(np.clip(0.5 * (c0 - c2) / den, -0.5, 0.5))
        if 0 < y < n - 1:
            c0, c1, c2 = cost_g[p, y - 1, x], cost_g[p, y, x], cost_g[p, y + 1, x]
            den = c0 - 2 * c1 + c2
            if den > 1e-12:
                out[p, 1] += float(np.clip(0.5 * (c0 - c2) / den, -0.5, 0.5))
    return out


def track_video(video):
    """Tracks of one video: [T,F,2] (x, y) in pixel-centre coords (data.py's convention, pixel
    centres at integer + 0.5), row 0 = the object's centroid, then grid points seeded inside
    the foreground on the first frame where an object is found. NaN = not tracked."""
    Fn, H, W, _ = video.shape
    fg, bg_kind, dist = foreground(video)
    cents, areas, dominant, masks, spread = object_stats(fg, video, dist, soft=bg_kind.startswith("flat"))
    textured = bool(np.nanmedian(spread) > TEXTURE_STD) if np.isfinite(spread).any() else False
    present = np.nonzero(~np.isnan(cents[:, 0]))[0]
    tracks = [cents.copy()]
    if len(present):
        f0 = int(present[0])
        seeds = grid_seeds(fg[f0] & dilate(masks[f0], 1), H, W)
        if len(seeds):
            v = video.astype(np.float64) / 255.0
            pts = np.full((len(seeds), Fn, 2), np.nan)
            pts[:, f0] = seeds
            cur = seeds
            for f in range(f0, Fn - 1):
                if not (np.isnan(cents[f, 0]) or np.isnan(cents[f + 1, 0])):
                    s = math.sqrt(areas[f + 1] / areas[f]) if areas[f] > 0 else 1.0
                    s = min(max(s, 0.7), 1.4)
                    pred = cents[f + 1][None] + (cur - cents[f][None]) * s
                else:
                    pred = cur
                pred = np.clip(pred, 0, [W - 1, H - 1])
                # a flat-coloured object shows no motion inside it but its similarity motion
                cur = block_match_step(v[f], v[f + 1], cur, pred) if textured else pred
                pts[:, f + 1] = cur
            tracks.extend(list(pts))
    tr = np.stack(tracks) + 0.5
    return dict(tracks=tr, centroid=cents + 0.5, areas=areas, dominant=dominant, masks=masks,
                fg=fg, background=bg_kind, textured_object=textured)


def reference_tracks_gt(entry, textured=None):
    """Ground-truth tracks of a clips.json reference: the object's centre + the grid points within
    its first-frame bounding disc (radius = size), moved with the object (similarity: centre + scale for flat
    objects; translation by the rounded centre shift for textured ones, whose texture is only
    translated by data.make_harness_clip)."""
    H, W = entry["height"], entry["width"]
    c = np.asarray(entry["trajectory"], np.float64)
    size = np.asarray(entry.get("size") or [1.0] * len(c), np.float64)
    if textured is None:
        textured = entry.get("domain") == "out_of_domain"
    tracks = [c]
    if entry.get("size"):
        # the object's motion field over its bounding disc (not only the shape's own pixels:
        # an output drawn as another shape should still find tracks in every direction)
        g = max(2, int(round(max(H, W) * GRID_FRAC)))
        ys, xs = np.mgrid[g // 2:H:g, g // 2:W:g]
        seeds = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64) + 0.5
        seeds = seeds[np.linalg.norm(seeds - c[0], axis=-1) <= size[0]]
        if textured:
            shift = np.rint(c - c[:1])
            pts = seeds[:, None, :] + shift[None]
        else:
            pts = c[None] + (seeds[:, None, :] - c[None, :1]) * (size / size[0])[None, :, None]
        tracks.extend(list(pts))
    return np.stack(tracks)


# ----------------------------------------------------------------------------- metric
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
    if ref_tracks is None:
        if entry is not None and entry.get("trajectory"):
            ref_tracks = reference_tracks_gt(entry)
            out["reference_tracks"] = "ground truth"
        else:
            ref_tracks = track_video(ref)["tracks"]
            out["reference_tracks"] = "tracked"
    ref_tracks = ref_tracks[:, :Fn]
    out.update(motion_fidelity(tg["tracks"], ref_tracks, Hr, Wr))
    gt = np.asarray(entry["trajectory"], np.float64)[:Fn] if entry and entry.get("trajectory") else ref_tracks[0]
    out["centroid_err_px"], out["centroid_err_max_px"] = centroid_error(tg["centroid"], gt, Hr, Wr)
    out.update({"tc_" + k: v for k, v in temporal_consistency(gen, tg).items()})
    out["gen_background"] = tg["background"]
    if check_prompt:
        out.update(adherence(gen, (entry or {}).get("target")))
    return out


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
