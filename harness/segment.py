"""Video loading and foreground segmentation for the harness (numpy + Pillow only).

    video = load_gif(path, frame_ms)                # uint8 [F,H,W,3]
    fg, kind, dist = foreground(video)              # bool [F,H,W], background description, RGB distance
    cents, areas, dominant, masks, spread = object_stats(fg, video, dist, soft=True)

Background: flat (each frame's border-ring colour) or textured (per-pixel temporal median after
aligning frames by the background's global translation). The object is the largest
4-connected foreground component. See harness/README.md.
"""
from __future__ import annotations

import numpy as np

FG_THRESH = 50.0          # RGB distance from the background estimate that counts as foreground
FG_THRESH_TEXTURED = 35.0  # same, against a textured background's aligned temporal median
FLAT_BG_SPREAD = 12.0     # border-ring spread (median RGB distance) above which a flat bg is 'noisy'


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
