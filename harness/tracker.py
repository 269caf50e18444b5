"""Point tracks for the harness (numpy only).

    tr = track_video(video)            # dict: tracks [T,F,2] (row 0 = centroid), centroid, areas, ...
    ref = reference_tracks_gt(entry)   # ground-truth tracks of a clips.json reference

Coordinates are (x, y) in pixels with pixel centres at integer + 0.5 (data.py's convention).
Flat-coloured objects: grid points follow the object's similarity motion (centroid shift and
sqrt(area) scale). Textured objects: that prediction refined by block matching. See README.md.
"""
from __future__ import annotations

import math

import numpy as np

from segment import dilate, erode, foreground, object_stats

GRID_FRAC = 1 / 12        # grid stride: 4 px at 48
SEARCH_FRAC = 1 / 12      # block-matching search radius around the prediction: 4 px at 48
PATCH_R = 2               # block-matching patch: 5 x 5
PRIOR_LAMBDA = 1e-3       # cost = mean squared patch difference (0..1 units) + lambda * px^2 from prediction
MAX_POINTS = 64
TEXTURE_STD = 10.0        # interior RGB std above which an object is textured (block matching)


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
