//! CPU back end of the fused attention (see the parent module for the definition).
//!
//! Flash-attention style: nothing `Nq x Nk` is ever stored. Inputs are converted to f32 once
//! (Q pre-multiplied by the scale; K, V and, in the backward, Q and dO also transposed so the
//! columns of a chunk can be packed with contiguous copies). Work goes in *tiles* of up to
//! 4 or 6 rows (`Q_LOCAL`, `Q_DENSE`) that share their columns: consecutive queries of one video row (their key
//! windows differ only in the x offset, so the tile walks the union and masks per row), or
//! consecutive keys. Only visible columns are walked, as runs of consecutive tokens (dense: one
//! run; local: one run per visible (frame, row), plus the text keys), in chunks of [`CHUNK`]:
//!
//! * forward: an online softmax per query row (running max and sum, f32), writing O and lse;
//! * backward: `delta = rowsum(dO * O)`, then `dQ` per query tile (probabilities recomputed
//!   from lse) and `dK`, `dV` per key tile over the queries that see those keys (per axis an
//!   interval of query coordinates, the inverse of the clamp-shifted window), so every thread
//!   writes only its own rows: no atomics, no per-thread partial sums.
//!
//! Logits and the `P V`-style products are `Q x 16` register tiles (written so LLVM keeps them
//! in vector registers). Rows (flattened over batch and heads) are split evenly over up to 16
//! scoped threads (`available_parallelism`); problems under [`PARALLEL_WORK`] multiply-adds run
//! on the calling thread. On x86_64 the tile loops are compiled a second time with AVX2+FMA and
//! chosen at run time. `exp` is a vectorisable polynomial (Cephes `expf`, ~1 ulp); NaN and
//! infinities in the inputs propagate to the outputs and never panic.

use std::ops::Range;

use super::{window_axis, AttentionMask, AttentionSpec};
use crate::element::Element;
use crate::error::KernelError;

/// Rows per tile (queries, or keys in the dK/dV pass): 6 x 16 register tiles for dense masks,
/// 4 x 16 for local windows (the tile walks the union of its rows' windows, which grows with
/// the tile: 6 rows were ~35% slower than 4 on a 7-wide window, and ~15% faster dense).
const Q_DENSE: usize = 6;
const Q_LOCAL: usize = 4;
/// The larger of the two (buffer sizes).
const QMAX: usize = 6;
/// Columns per online-softmax step (a multiple of 16).
const CHUNK: usize = 256;
/// Row length of a packed chunk operand: 16 columns of slack for whole-vector copies.
const PACK_STRIDE: usize = CHUNK + 16;
/// Below this many multiply-adds a call runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 20;
/// Upper bound on the worker threads of one call.
const MAX_THREADS: usize = 16;

/// Forward: `out[B,H,Nq,dv]` and `lse[B,H,Nq]` (f32) from `q[B,H,Nq,d]`, `k[B,H,Nk,d]`,
/// `v[B,H,Nk,dv]`.
pub fn forward<T: Element>(
    spec: &AttentionSpec,
    q: &[T],
    k: &[T],
    v: &[T],
    out: &mut [T],
    lse: &mut [f32],
) -> Result<(), KernelError> {
    let [nq, nk, nv, no] = checked_numel(spec)?;
    check_len("q", q.len(), nq)?;
    check_len("k", k.len(), nk)?;
    check_len("v", v.len(), nv)?;
    check_len("out", out.len(), no)?;
    check_len("lse", lse.len(), spec.lse_len())?;
    let g = Geometry::new(spec);
    let ctx = FwdCtx {
        qs: scaled(q, g.scale),
        kt: transpose_blocks(k, g.bh, g.nk, g.d),
        v: convert(v),
        g: &g,
    };
    let rows = g.bh * g.nq;
    let nt = g.threads(g.visible_pairs(), rows);
    let bounds = split_bounds(rows, nt);
    let outs = split_rows(out, g.dv, &bounds);
    let lses = split_rows(lse, 1, &bounds);
    run_parts(outs.into_iter().zip(lses), &bounds, |range, (o, l)| {
        fwd_rows(g.local.is_none(), &ctx, range, o, l)
    });
    Ok(())
}

/// Backward: `dq`, `dk`, `dv` (same shapes as q, k, v) from `dout` and the forward's `out`
/// and `lse`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Element>(
    spec: &AttentionSpec,
    dout: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
    lse: &[f32],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) -> Result<(), KernelError> {
    let [nq, nk, nv, no] = checked_numel(spec)?;
    check_len("dout", dout.len(), no)?;
    check_len("q", q.len(), nq)?;
    check_len("k", k.len(), nk)?;
    check_len("v", v.len(), nv)?;
    check_len("out", out.len(), no)?;
    check_len("lse", lse.len(), spec.lse_len())?;
    check_len("dq", dq.len(), nq)?;
    check_len("dk", dk.len(), nk)?;
    check_len("dv", dv.len(), nv)?;
    let g = Geometry::new(spec);
    let (bh, nql, nkl, d, dvd) = (g.bh, g.nq, g.nk, g.d, g.dv);
    let dof = convert(dout);
    // delta(q) = <dO[q], O[q]>
    let delta: Vec<f32> = dof
        .chunks_exact(dvd)
        .zip(out.chunks_exact(dvd))
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum())
        .collect();
    let qs = scaled(q, g.scale);
    let ctx = BwdCtx {
        qst: transpose_blocks(&qs, bh, nql, d),
        qs,
        k: convert(k),
        kt: transpose_blocks(k, bh, nkl, d),
        v: convert(v),
        vt: transpose_blocks(v, bh, nkl, dvd),
        dot: transpose_blocks(&dof, bh, nql, dvd),
        dout: dof,
        lse,
        delta,
        g: &g,
    };
    let work = g.visible_pairs();
    // dQ: one row per query.
    let rows = bh * nql;
    let bounds = split_bounds(rows, g.threads(work, rows));
    let parts = split_rows(dq, d, &bounds);
    run_parts(parts.into_iter(), &bounds, |range, part| {
        dq_rows(g.local.is_none(), &ctx, range, part)
    });
    // dK, dV: one row per key, split by the number of queries each key has (a text key is
    // seen by every query, a video key only by those of its window).
    let rows = bh * nkl;
    let nt = g.threads(work, rows);
    let bounds = if nt > 1 && g.local.is_some() {
        split_weighted(rows, nt, |r| g.key_cost(r % nkl))
    } else {
        split_bounds(rows, nt)
    };
    let dks = split_rows(dk, d, &bounds);
    let dvs = split_rows(dv, dvd, &bounds);
    run_parts(dks.into_iter().zip(dvs), &bounds, |range, (a, b)| {
        dkv_rows(g.local.is_none(), &ctx, range, a, b)
    });
    Ok(())
}

fn checked_numel(spec: &AttentionSpec) -> Result<[usize; 4], KernelError> {
    spec.validate()?;
    spec.numel()
}

fn check_len(tensor: &'static str, actual: usize, expected: usize) -> Result<(), KernelError> {
    if actual == expected {
        Ok(())
    } else {
        Err(KernelError::ShapeMismatch {
            tensor,
            expected,
            actual,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Geometry: tiles of up to Q rows that share one list of column runs.

/// Consecutive columns `[start, start + len)` (keys of a query tile, or queries of a key
/// tile). In a `masked` run row `t` of the tile sees only the run offsets `win[t]`; other
/// runs (dense, text keys, queries of a text key) are seen whole.
#[derive(Clone, Copy)]
struct Run {
    start: usize,
    len: usize,
    masked: bool,
}

/// Up to `Q` rows of one `(batch, head)` and the columns they see.
struct Tile {
    /// Flattened index of the first row (`bh * rows_per_bh + i`).
    row: usize,
    /// Rows in the tile (1..=Q).
    n: usize,
    runs: Vec<Run>,
    /// Per row, the visible offsets `[lo, hi)` inside every masked run.
    win: [(usize, usize); QMAX],
}

/// One axis of the local window: per coordinate the query's key window `[start, start+size)`
/// and the key's query interval `[lo, hi)` (queries whose window contains it).
struct Axis {
    size: usize,
    start: Vec<usize>,
    seen_by: Vec<(usize, usize)>,
}

impl Axis {
    fn new(radius: usize, extent: usize) -> Self {
        let start: Vec<usize> = (0..extent)
            .map(|c| window_axis(c, radius, extent).0)
            .collect();
        let size = window_axis(0, radius, extent).1;
        // `start` is non-decreasing, so both predicates hold on a prefix.
        let seen_by = (0..extent)
            .map(|kc| {
                let lo = start.partition_point(|&s| s + size <= kc);
                let hi = start.partition_point(|&s| s <= kc);
                (lo, hi)
            })
            .collect();
        Axis {
            size,
            start,
            seen_by,
        }
    }
}

struct Local {
    h: usize,
    w: usize,
    video: usize,
    f_axis: Axis,
    y_axis: Axis,
    x_axis: Axis,
}

struct Geometry {
    bh: usize,
    nq: usize,
    nk: usize,
    d: usize,
    dv: usize,
    scale: f32,
    local: Option<Local>,
}

impl Geometry {
    /// `spec` must be valid.
    fn new(spec: &AttentionSpec) -> Self {
        let s = &spec.shape;
        let local = match spec.mask {
            AttentionMask::Dense => None,
            AttentionMask::Local(w) => Some(Local {
                h: w.height,
                w: w.width,
                video: w.frames * w.height * w.width,
                f_axis: Axis::new(w.temporal_radius, w.frames),
                y_axis: Axis::new(w.spatial_radius, w.height),
                x_axis: Axis::new(w.spatial_radius, w.width),
            }),
        };
        Geometry {
            bh: s.batch * s.heads,
            nq: s.q_len,
            nk: s.kv_len,
            d: s.head_dim,
            dv: s.v_dim,
            scale: spec.scale,
            local,
        }
    }

    /// Multiply-adds of one pass (saturating): visible (query, key) pairs times `d + dv`.
    fn visible_pairs(&self) -> usize {
        let per_query = match &self.local {
            None => self.nk,
            Some(l) => l.f_axis.size * l.y_axis.size * l.x_axis.size + (self.nk - l.video),
        };
        self.bh
            .saturating_mul(self.nq)
            .saturating_mul(per_query)
            .saturating_mul(self.d + self.dv)
    }

    fn threads(&self, work: usize, rows: usize) -> usize {
        if work < PARALLEL_WORK {
            return 1;
        }
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(MAX_THREADS)
            .min(rows)
            .max(1)
    }

    /// Queries that see key `k` (local masks; `nq` for dense).
    fn key_cost(&self, k: usize) -> usize {
        match &self.local {
            Some(l) if k < l.video => {
                let hw = l.h * l.w;
                let len = |(a, b): (usize, usize)| b - a;
                len(l.f_axis.seen_by[k / hw])
                    * len(l.y_axis.seen_by[(k % hw) / l.w])
                    * len(l.x_axis.seen_by[k % l.w])
            }
            _ => self.nq,
        }
    }

    /// The query tile starting at flattened row `row` (< `end`): consecutive queries of one
    /// video row (local) and the keys they see.
    fn query_tile(&self, q: usize, row: usize, end: usize, t: &mut Tile) {
        let qi = row % self.nq;
        let mut n = q.min(end - row).min(self.nq - qi);
        t.row = row;
        t.runs.clear();
        match &self.local {
            None => t.runs.push(Run {
                start: 0,
                len: self.nk,
                masked: false,
            }),
            Some(l) => {
                let hw = l.h * l.w;
                let (qf, qy, qx) = (qi / hw, (qi % hw) / l.w, qi % l.w);
                n = n.min(l.w - qx);
                let xs = &l.x_axis.start;
                let x0 = xs[qx];
                let x1 = xs[qx + n - 1] + l.x_axis.size;
                for (i, w) in t.win.iter_mut().take(n).enumerate() {
                    *w = (xs[qx + i] - x0, xs[qx + i] - x0 + l.x_axis.size);
                }
                let (f0, y0) = (l.f_axis.start[qf], l.y_axis.start[qy]);
                for f in f0..f0 + l.f_axis.size {
                    for y in y0..y0 + l.y_axis.size {
                        t.runs.push(Run {
                            start: (f * l.h + y) * l.w + x0,
                            len: x1 - x0,
                            masked: x1 - x0 != l.x_axis.size,
                        });
                    }
                }
                if self.nk > l.video {
                    t.runs.push(Run {
                        start: l.video,
                        len: self.nk - l.video,
                        masked: false,
                    });
                }
            }
        }
        t.n = n;
    }

    /// The key tile starting at flattened row `row` (< `end`): consecutive keys of one video
    /// row, or text keys (local), and the queries that see them.
    fn key_tile(&self, q: usize, row: usize, end: usize, t: &mut Tile) {
        let ki = row % self.nk;
        let mut n = q.min(end - row).min(self.nk - ki);
        t.row = row;
        t.runs.clear();
        match &self.local {
            Some(l) if ki < l.video => {
                let hw = l.h * l.w;
                let (kf, ky, kx) = (ki / hw, (ki % hw) / l.w, ki % l.w);
                n = n.min(l.w - kx);
                let sx = &l.x_axis.seen_by;
                let (x0, x1) = (sx[kx].0, sx[kx + n - 1].1);
                let mut same = true;
                for (i, w) in t.win.iter_mut().take(n).enumerate() {
                    *w = (sx[kx + i].0 - x0, sx[kx + i].1 - x0);
                    same &= *w == (0, x1 - x0);
                }
                let (f0, f1) = l.f_axis.seen_by[kf];
                let (y0, y1) = l.y_axis.seen_by[ky];
                for f in f0..f1 {
                    for y in y0..y1 {
                        t.runs.push(Run {
                            start: (f * l.h + y) * l.w + x0,
                            len: x1 - x0,
                            masked: !same,
                        });
                    }
                }
            }
            _ => t.runs.push(Run {
                start: 0,
                len: self.nq,
                masked: false,
            }),
        }
        t.n = n;
    }
}

/// A piece of a run inside one chunk: columns `[start, start + len)` at chunk offset `off`,
/// starting `run_off` columns into its run.
#[derive(Clone, Copy)]
struct Piece {
    start: usize,
    len: usize,
    off: usize,
    run_off: usize,
    masked: bool,
}

/// Cuts a tile's runs into chunks of at most [`CHUNK`] columns.
struct Chunker {
    i: usize,
    off: usize,
}

impl Chunker {
    /// Fills `pieces` with the next chunk of `runs`; returns its column count (0 when done).
    #[inline(always)]
    fn next(&mut self, runs: &[Run], pieces: &mut Vec<Piece>) -> usize {
        pieces.clear();
        let mut total = 0;
        while self.i < runs.len() && total < CHUNK {
            let r = runs[self.i];
            let take = (r.len - self.off).min(CHUNK - total);
            if take > 0 {
                pieces.push(Piece {
                    start: r.start + self.off,
                    len: take,
                    off: total,
                    run_off: self.off,
                    masked: r.masked,
                });
            }
            total += take;
            self.off += take;
            if self.off == r.len {
                self.i += 1;
                self.off = 0;
            }
        }
        total
    }
}

// ---------------------------------------------------------------------------------------------
// Packing.

fn convert<T: Element>(x: &[T]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

fn scaled<T: Element>(x: &[T], s: f32) -> Vec<f32> {
    x.iter().map(|v| v.to_f32() * s).collect()
}

/// Row length of a transposed operand: `n` rounded up to 16 columns, so every chunk that is
/// one piece can be read in place and rows start 64-byte apart.
fn padded(n: usize) -> usize {
    n.next_multiple_of(16)
}

/// `[blocks, n, c]` to `[blocks, c, padded(n)]` (zero padding) plus 16 zeros of slack, f32.
fn transpose_blocks<T: Element>(x: &[T], blocks: usize, n: usize, c: usize) -> Vec<f32> {
    let np = padded(n);
    let mut out = vec![0f32; blocks * np * c + 16];
    for (src, dst) in x.chunks_exact(n * c).zip(out.chunks_exact_mut(np * c)) {
        for (i, row) in src.chunks_exact(c).enumerate() {
            for (j, v) in row.iter().enumerate() {
                dst[j * np + i] = v.to_f32();
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Threads.

/// `nt + 1` row boundaries splitting `rows` evenly.
fn split_bounds(rows: usize, nt: usize) -> Vec<usize> {
    (0..=nt).map(|t| rows * t / nt).collect()
}

/// `nt + 1` row boundaries splitting `rows` so that the parts have about equal total `cost`.
fn split_weighted(rows: usize, nt: usize, cost: impl Fn(usize) -> usize) -> Vec<usize> {
    let total: usize = (0..rows).map(&cost).fold(0, usize::saturating_add);
    let mut bounds = vec![0];
    let mut acc = 0usize;
    for r in 0..rows {
        // Cut before row r once the rows so far reach the next part's share.
        let part = bounds.len();
        if part < nt && acc >= total / nt * part {
            bounds.push(r);
        }
        acc = acc.saturating_add(cost(r));
    }
    bounds.resize(nt + 1, rows);
    bounds
}

/// `x` (rows of `width`) cut at `bounds`.
fn split_rows<'a, T>(mut x: &'a mut [T], width: usize, bounds: &[usize]) -> Vec<&'a mut [T]> {
    let mut parts = Vec::with_capacity(bounds.len() - 1);
    for w in bounds.windows(2) {
        let (a, b) = std::mem::take(&mut x).split_at_mut((w[1] - w[0]) * width);
        parts.push(a);
        x = b;
    }
    parts
}

/// Runs `f(rows, part)` for every part, the last on the calling thread.
fn run_parts<P: Send, I: Iterator<Item = P>>(
    parts: I,
    bounds: &[usize],
    f: impl Fn(Range<usize>, P) + Sync,
) {
    let f = &f;
    std::thread::scope(|sc| {
        let mut last = None;
        for (t, p) in parts.enumerate() {
            let range = bounds[t]..bounds[t + 1];
            if t + 2 == bounds.len() {
                last = Some((range, p));
            } else {
                sc.spawn(move || f(range, p));
            }
        }
        if let Some((range, p)) = last {
            f(range, p);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Kernels (inlined into the AVX2 and the generic copies of the tile loops).

/// Whether the AVX2+FMA copy runs (checked once; `FASTVMT_ATTN_CPU_PORTABLE=1` forces the
/// portable copy, to test it on machines that have AVX2).
#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::env::var_os("FASTVMT_ATTN_CPU_PORTABLE").is_none_or(|v| v != "1")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    })
}

/// Per-thread buffers of one tile loop.
struct Scratch {
    /// Chunk columns, transposed: `[c, PACK_STRIDE]` (two operands).
    b1: Vec<f32>,
    b2: Vec<f32>,
    /// Tile rows transposed, `[c, Q]` (two operands).
    a1: Vec<f32>,
    a2: Vec<f32>,
    /// `[Q, CHUNK]` logits / probabilities and `dP` / `dS`.
    s: Vec<f32>,
    dp: Vec<f32>,
    /// A `[CHUNK, Q]` transposed copy of `s` or `dp` for [`tile_axpy`].
    pt: Vec<f32>,
    /// Column index of every chunk position.
    cols: Vec<usize>,
    pieces: Vec<Piece>,
    tile: Tile,
}

impl Scratch {
    fn new(c1: usize, c2: usize) -> Self {
        Scratch {
            b1: vec![0.0; c1 * PACK_STRIDE],
            b2: vec![0.0; c2 * PACK_STRIDE],
            a1: vec![0.0; QMAX * c1],
            a2: vec![0.0; QMAX * c2],
            s: vec![0.0; QMAX * CHUNK],
            dp: vec![0.0; QMAX * CHUNK],
            pt: vec![0.0; QMAX * CHUNK],
            cols: Vec::with_capacity(CHUNK),
            pieces: Vec::new(),
            tile: Tile {
                row: 0,
                n: 0,
                runs: Vec::new(),
                win: [(0, 0); QMAX],
            },
        }
    }
}

/// The tile's `n` rows of width `c` from `src` (rows from `row`), transposed into `dst`
/// `[c, Q]`; missing rows are zero.
#[inline(always)]
fn load_rows<const Q: usize>(dst: &mut [f32], src: &[f32], row: usize, n: usize, c: usize) {
    dst.fill(0.0);
    for (t, r) in src[row * c..(row + n) * c].chunks_exact(c).enumerate() {
        for (j, &x) in r.iter().enumerate() {
            dst[j * Q + t] = x;
        }
    }
}

/// The chunk's columns of `mt` (`[c, ncols]`, one `(batch, head)`; `ncols` padded) as
/// `(matrix, stride)`
/// for [`tile_dots`]: read in place when they are one piece with room for the 16-column
/// rounding, else gathered into `b` (`[c, PACK_STRIDE]`) 16 columns at a time (pieces of a
/// local window are short: whole-vector copies instead of a `memcpy` call per piece and
/// feature). Reads up to 15 columns past a piece (`mt` carries 16 columns of slack at its
/// end) and writes up to 15 past it, which the next piece or the chunk's end overwrites or
/// ignores.
#[inline(always)]
fn pack_cols<'a>(
    b: &'a mut [f32],
    mt: &'a [f32],
    ncols: usize,
    c: usize,
    pieces: &[Piece],
) -> (&'a [f32], usize) {
    if let [p] = pieces {
        if p.start + p.len.next_multiple_of(16) <= ncols {
            return (&mt[p.start..], ncols);
        }
    }
    for p in pieces {
        for j in 0..c {
            let dst = &mut b[j * PACK_STRIDE + p.off..];
            let src = &mt[j * ncols + p.start..];
            for u in (0..p.len).step_by(16) {
                let block: &[f32; 16] = src[u..u + 16].try_into().unwrap();
                dst[u..u + 16].copy_from_slice(block);
            }
        }
    }
    (b, PACK_STRIDE)
}

fn chunk_cols(cols: &mut Vec<usize>, pieces: &[Piece]) {
    cols.clear();
    for p in pieces {
        cols.extend(p.start..p.start + p.len);
    }
}

/// `s[t, i] = sum_j at[j, t] * b[j * stride + i]` for all Q rows and `i < n` (rounded up
/// to 16): a `Q x 16` register tile per step. `at` is the tile's rows transposed, `[c, Q]`.
#[inline(always)]
fn tile_dots<const F: bool, const Q: usize>(
    s: &mut [f32],
    at: &[f32],
    b: &[f32],
    stride: usize,
    c: usize,
    n: usize,
) {
    let at = &at[..c * Q];
    for i0 in (0..n).step_by(16) {
        let mut acc = [[0f32; 16]; Q];
        let b0 = &b[i0..];
        for (j, aj) in at.chunks_exact(Q).enumerate() {
            let aj: &[f32; Q] = aj.try_into().unwrap();
            let bj: &[f32; 16] = b0[j * stride..j * stride + 16].try_into().unwrap();
            for t in 0..Q {
                for l in 0..16 {
                    acc[t][l] = fmadd::<F>(aj[t], bj[l], acc[t][l]);
                }
            }
        }
        for (t, acc_t) in acc.iter().enumerate() {
            s[t * CHUNK + i0..t * CHUNK + i0 + 16].copy_from_slice(acc_t);
        }
    }
}

/// `pt[i, t] = p[t, i]` for `i < n`: the tile's weights column-major for [`tile_axpy`].
#[inline(always)]
fn transpose_tile<const Q: usize>(pt: &mut [f32], p: &[f32], n: usize) {
    for (i, pi) in pt[..n * Q].chunks_exact_mut(Q).enumerate() {
        for (t, x) in pi.iter_mut().enumerate() {
            *x = p[t * CHUNK + i];
        }
    }
}

/// `acc[t, :] += sum_i pt[i, t] * src[cols[i], :]` (rows of width `c`): `Q x 16` register
/// tiles over the columns, the `c % 16` tail scalar. `pt` is `[n, Q]`.
#[inline(always)]
fn tile_axpy<const F: bool, const Q: usize>(
    acc: &mut [f32],
    pt: &[f32],
    src: &[f32],
    cols: &[usize],
    c: usize,
) {
    let pt = &pt[..cols.len() * Q];
    let mut j0 = 0;
    while j0 + 16 <= c {
        let mut r = [[0f32; 16]; Q];
        for (t, r_t) in r.iter_mut().enumerate() {
            r_t.copy_from_slice(&acc[t * c + j0..t * c + j0 + 16]);
        }
        for (pi, &col) in pt.chunks_exact(Q).zip(cols) {
            let pi: &[f32; Q] = pi.try_into().unwrap();
            let v: &[f32; 16] = src[col * c + j0..col * c + j0 + 16].try_into().unwrap();
            for t in 0..Q {
                for l in 0..16 {
                    r[t][l] = fmadd::<F>(pi[t], v[l], r[t][l]);
                }
            }
        }
        for (t, r_t) in r.iter().enumerate() {
            acc[t * c + j0..t * c + j0 + 16].copy_from_slice(r_t);
        }
        j0 += 16;
    }
    if j0 < c {
        for (pi, &col) in pt.chunks_exact(Q).zip(cols) {
            let v = &src[col * c + j0..col * c + c];
            for (t, &p) in pi.iter().enumerate() {
                for (a, x) in acc[t * c + j0..t * c + c].iter_mut().zip(v) {
                    *a = fmadd::<F>(p, *x, *a);
                }
            }
        }
    }
}

/// Sets the chunk positions that row window `win` does not see to `val`.
#[inline(always)]
fn mask_row(s: &mut [f32], pieces: &[Piece], win: (usize, usize), val: f32) {
    for p in pieces.iter().filter(|p| p.masked) {
        let lo = win.0.saturating_sub(p.run_off).min(p.len);
        let hi = win.1.saturating_sub(p.run_off).clamp(lo, p.len);
        s[p.off..p.off + lo].fill(val);
        s[p.off + hi..p.off + p.len].fill(val);
    }
}

/// `a * b + c`, fused where the copy being compiled has FMA (`F`).
#[inline(always)]
fn fmadd<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Whether the portable copy of the tile loops uses `mul_add` (a single instruction there).
const GENERIC_FMA: bool = cfg!(target_arch = "aarch64");

/// Max ignoring NaN (8 lanes so it vectorises); `-inf` for an empty or all-NaN slice.
#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let c = x.chunks_exact(8);
    let rest = c.remainder();
    for ch in c {
        for l in 0..8 {
            acc[l] = acc[l].max(ch[l]);
        }
    }
    let mut m = rest.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for a in acc {
        m = m.max(a);
    }
    m
}

#[inline(always)]
fn sum_of(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let c = x.chunks_exact(8);
    let rest = c.remainder();
    for ch in c {
        for l in 0..8 {
            acc[l] += ch[l];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// `exp(x)` (Cephes `expf` polynomial, relative error ~1e-7); 0 below -87, NaN stays NaN.
#[inline(always)]
fn exp_fast<const F: bool>(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(-87.0, 88.0); // NaN stays NaN
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = fmadd::<F>(n, 2.121_944_4e-4, fmadd::<F>(n, -0.693_359_4, xc));
    let mut p = 1.987_569_1e-4_f32;
    p = fmadd::<F>(p, r, 1.398_199_9e-3);
    p = fmadd::<F>(p, r, 8.333_452e-3);
    p = fmadd::<F>(p, r, 4.166_579_6e-2);
    p = fmadd::<F>(p, r, 1.666_666_5e-1);
    p = fmadd::<F>(p, r, 0.5);
    let y = fmadd::<F>(p * r, r, r + 1.0);
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let pow = f32::from_bits((ni.wrapping_add(127) as u32).wrapping_shl(23));
    if x < -87.0 {
        0.0
    } else {
        y * pow
    }
}

// ---------------------------------------------------------------------------------------------
// Tile loops. Each `*_rows` dispatches to an AVX2+FMA copy of `*_rows_impl` when it can run.

struct FwdCtx<'a> {
    /// `[BH, Nq, d]`, times the scale.
    qs: Vec<f32>,
    /// `[BH, d, Nk]`.
    kt: Vec<f32>,
    /// `[BH, Nk, dv]`.
    v: Vec<f32>,
    g: &'a Geometry,
}

struct BwdCtx<'a> {
    qs: Vec<f32>,
    /// `[BH, d, Nq]`, times the scale.
    qst: Vec<f32>,
    k: Vec<f32>,
    kt: Vec<f32>,
    v: Vec<f32>,
    /// `[BH, dv, Nk]`.
    vt: Vec<f32>,
    /// dO `[BH, Nq, dv]`.
    dout: Vec<f32>,
    /// dO transposed, `[BH, dv, Nq]`.
    dot: Vec<f32>,
    lse: &'a [f32],
    delta: Vec<f32>,
    g: &'a Geometry,
}

/// `$name(dense, args)`: the AVX2+FMA or the portable copy of `$imp`, with 6-row tiles for a
/// dense mask and 4-row tiles for a local one.
macro_rules! dispatch {
    ($name:ident, $avx:ident, $imp:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name<T: Element>(dense: bool, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                // SAFETY: the CPU supports AVX2 and FMA (checked above).
                return unsafe { $avx::<T>(dense, $($arg),*) };
            }
            if dense {
                $imp::<T, GENERIC_FMA, Q_DENSE>($($arg),*)
            } else {
                $imp::<T, GENERIC_FMA, Q_LOCAL>($($arg),*)
            }
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx<T: Element>(dense: bool, $($arg: $ty),*) {
            if dense {
                $imp::<T, true, Q_DENSE>($($arg),*)
            } else {
                $imp::<T, true, Q_LOCAL>($($arg),*)
            }
        }
    };
}

dispatch!(fwd_rows, fwd_rows_avx2, fwd_rows_impl,
    (c: &FwdCtx, rows: Range<usize>, out: &mut [T], lse: &mut [f32]));
dispatch!(dq_rows, dq_rows_avx2, dq_rows_impl,
    (c: &BwdCtx, rows: Range<usize>, dq: &mut [T]));
dispatch!(dkv_rows, dkv_rows_avx2, dkv_rows_impl,
    (c: &BwdCtx, rows: Range<usize>, dk: &mut [T], dv: &mut [T]));

/// Online softmax over the visible keys of the query rows in `rows` (flattened
/// `bh * Nq + q`), a tile of up to Q queries at a time.
#[inline(always)]
fn fwd_rows_impl<T: Element, const F: bool, const Q: usize>(
    c: &FwdCtx,
    rows: Range<usize>,
    out: &mut [T],
    lse: &mut [f32],
) {
    let g = c.g;
    let (nq, nk, d, dv) = (g.nq, g.nk, g.d, g.dv);
    let mut sc = Scratch::new(d, 0);
    let mut acc = vec![0f32; Q * dv];
    let mut row = rows.start;
    while row < rows.end {
        g.query_tile(Q, row, rows.end, &mut sc.tile);
        let (tn, b) = (sc.tile.n, row / nq);
        let nkp = padded(nk);
        let kt = &c.kt[b * d * nkp..];
        let v = &c.v[b * nk * dv..(b + 1) * nk * dv];
        load_rows::<Q>(&mut sc.a1, &c.qs, row, tn, d);
        let mut m = [f32::NEG_INFINITY; Q];
        let mut l = [0f32; Q];
        acc.fill(0.0);
        let mut chunks = Chunker { i: 0, off: 0 };
        loop {
            let n = chunks.next(&sc.tile.runs, &mut sc.pieces);
            if n == 0 {
                break;
            }
            let (b1, st1) = pack_cols(&mut sc.b1, kt, nkp, d, &sc.pieces);
            tile_dots::<F, Q>(&mut sc.s, &sc.a1, b1, st1, d, n);
            chunk_cols(&mut sc.cols, &sc.pieces);
            for t in 0..tn {
                let s = &mut sc.s[t * CHUNK..t * CHUNK + n];
                mask_row(s, &sc.pieces, sc.tile.win[t], f32::NEG_INFINITY);
                let bm = max_of(s);
                if bm > m[t] {
                    let r = (m[t] - bm).exp();
                    l[t] *= r;
                    for a in &mut acc[t * dv..(t + 1) * dv] {
                        *a *= r;
                    }
                    m[t] = bm;
                }
                for x in s.iter_mut() {
                    *x = exp_fast::<F>(*x - m[t]);
                }
                mask_row(s, &sc.pieces, sc.tile.win[t], 0.0);
                l[t] += sum_of(s);
            }
            for t in tn..Q {
                sc.s[t * CHUNK..t * CHUNK + n].fill(0.0);
            }
            transpose_tile::<Q>(&mut sc.pt, &sc.s, n);
            tile_axpy::<F, Q>(&mut acc, &sc.pt, v, &sc.cols, dv);
        }
        let i = row - rows.start;
        for t in 0..tn {
            let inv = 1.0 / l[t];
            for (o, a) in out[(i + t) * dv..(i + t + 1) * dv]
                .iter_mut()
                .zip(&acc[t * dv..(t + 1) * dv])
            {
                *o = T::from_f32(a * inv);
            }
            lse[i + t] = m[t] + l[t].ln();
        }
        row += tn;
    }
}

/// `dQ[q] = scale * sum_k P (dP - delta) K[k]` for the query rows in `rows`.
#[inline(always)]
fn dq_rows_impl<T: Element, const F: bool, const Q: usize>(
    c: &BwdCtx,
    rows: Range<usize>,
    dq: &mut [T],
) {
    let g = c.g;
    let (nq, nk, d, dv) = (g.nq, g.nk, g.d, g.dv);
    let mut sc = Scratch::new(d, dv);
    let mut acc = vec![0f32; Q * d];
    let mut row = rows.start;
    while row < rows.end {
        g.query_tile(Q, row, rows.end, &mut sc.tile);
        let (tn, b) = (sc.tile.n, row / nq);
        let nkp = padded(nk);
        let kt = &c.kt[b * d * nkp..];
        let vt = &c.vt[b * dv * nkp..];
        let k = &c.k[b * nk * d..(b + 1) * nk * d];
        load_rows::<Q>(&mut sc.a1, &c.qs, row, tn, d);
        load_rows::<Q>(&mut sc.a2, &c.dout, row, tn, dv);
        acc.fill(0.0);
        let mut chunks = Chunker { i: 0, off: 0 };
        loop {
            let n = chunks.next(&sc.tile.runs, &mut sc.pieces);
            if n == 0 {
                break;
            }
            let (b1, st1) = pack_cols(&mut sc.b1, kt, nkp, d, &sc.pieces);
            tile_dots::<F, Q>(&mut sc.s, &sc.a1, b1, st1, d, n);
            let (b2, st2) = pack_cols(&mut sc.b2, vt, nkp, dv, &sc.pieces);
            tile_dots::<F, Q>(&mut sc.dp, &sc.a2, b2, st2, dv, n);
            chunk_cols(&mut sc.cols, &sc.pieces);
            for t in 0..tn {
                let (lse, delta) = (c.lse[row + t], c.delta[row + t]);
                let s = &mut sc.s[t * CHUNK..t * CHUNK + n];
                for (x, y) in s.iter_mut().zip(&sc.dp[t * CHUNK..t * CHUNK + n]) {
                    *x = exp_fast::<F>(*x - lse) * (y - delta);
                }
                mask_row(s, &sc.pieces, sc.tile.win[t], 0.0);
            }
            for t in tn..Q {
                sc.s[t * CHUNK..t * CHUNK + n].fill(0.0);
            }
            transpose_tile::<Q>(&mut sc.pt, &sc.s, n);
            tile_axpy::<F, Q>(&mut acc, &sc.pt, k, &sc.cols, d);
        }
        let i = row - rows.start;
        for (o, a) in dq[i * d..(i + tn) * d].iter_mut().zip(&acc) {
            *o = T::from_f32(a * g.scale);
        }
        row += tn;
    }
}

/// `dV[k] = sum_q P dO[q]`, `dK[k] = sum_q P (dP - delta) scale Q[q]` for the key rows in
/// `rows` (flattened `bh * Nk + k`), over the queries that see each key.
#[inline(always)]
fn dkv_rows_impl<T: Element, const F: bool, const Q: usize>(
    c: &BwdCtx,
    rows: Range<usize>,
    dk: &mut [T],
    dv: &mut [T],
) {
    let g = c.g;
    let (nq, nk, d, dvd) = (g.nq, g.nk, g.d, g.dv);
    let mut sc = Scratch::new(d, dvd);
    let mut acc_k = vec![0f32; Q * d];
    let mut acc_v = vec![0f32; Q * dvd];
    let mut lse_c = vec![0f32; CHUNK];
    let mut delta_c = vec![0f32; CHUNK];
    let mut row = rows.start;
    while row < rows.end {
        g.key_tile(Q, row, rows.end, &mut sc.tile);
        let (tn, b) = (sc.tile.n, row / nk);
        let nqp = padded(nq);
        let qst = &c.qst[b * d * nqp..];
        let dot = &c.dot[b * dvd * nqp..];
        let qs = &c.qs[b * nq * d..(b + 1) * nq * d];
        let dout = &c.dout[b * nq * dvd..(b + 1) * nq * dvd];
        let lse = &c.lse[b * nq..(b + 1) * nq];
        let delta = &c.delta[b * nq..(b + 1) * nq];
        load_rows::<Q>(&mut sc.a1, &c.k, row, tn, d);
        load_rows::<Q>(&mut sc.a2, &c.v, row, tn, dvd);
        acc_k.fill(0.0);
        acc_v.fill(0.0);
        let mut chunks = Chunker { i: 0, off: 0 };
        loop {
            let n = chunks.next(&sc.tile.runs, &mut sc.pieces);
            if n == 0 {
                break;
            }
            let (b1, st1) = pack_cols(&mut sc.b1, qst, nqp, d, &sc.pieces);
            tile_dots::<F, Q>(&mut sc.s, &sc.a1, b1, st1, d, n);
            let (b2, st2) = pack_cols(&mut sc.b2, dot, nqp, dvd, &sc.pieces);
            tile_dots::<F, Q>(&mut sc.dp, &sc.a2, b2, st2, dvd, n);
            chunk_cols(&mut sc.cols, &sc.pieces);
            for (i, &q) in sc.cols.iter().enumerate() {
                lse_c[i] = lse[q];
                delta_c[i] = delta[q];
            }
            for t in 0..tn {
                let s = &mut sc.s[t * CHUNK..t * CHUNK + n];
                let dp = &mut sc.dp[t * CHUNK..t * CHUNK + n];
                for i in 0..n {
                    let p = exp_fast::<F>(s[i] - lse_c[i]);
                    s[i] = p;
                    dp[i] = p * (dp[i] - delta_c[i]);
                }
                mask_row(s, &sc.pieces, sc.tile.win[t], 0.0);
                mask_row(dp, &sc.pieces, sc.tile.win[t], 0.0);
            }
            for t in tn..Q {
                sc.s[t * CHUNK..t * CHUNK + n].fill(0.0);
                sc.dp[t * CHUNK..t * CHUNK + n].fill(0.0);
            }
            transpose_tile::<Q>(&mut sc.pt, &sc.s, n);
            tile_axpy::<F, Q>(&mut acc_v, &sc.pt, dout, &sc.cols, dvd);
            transpose_tile::<Q>(&mut sc.pt, &sc.dp, n);
            tile_axpy::<F, Q>(&mut acc_k, &sc.pt, qs, &sc.cols, d);
        }
        let i = row - rows.start;
        for (o, a) in dk[i * d..(i + tn) * d].iter_mut().zip(&acc_k) {
            *o = T::from_f32(*a);
        }
        for (o, a) in dv[i * dvd..(i + tn) * dvd].iter_mut().zip(&acc_v) {
            *o = T::from_f32(*a);
        }
        row += tn;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_split_covers_rows_and_balances_cost() {
        // 100 cheap rows then 10 rows 10x as expensive (text keys after video keys).
        let cost = |r: usize| if r < 100 { 1 } else { 10 };
        for nt in 1..=5 {
            let b = split_weighted(110, nt, cost);
            assert_eq!(b.len(), nt + 1);
            assert_eq!((b[0], b[nt]), (0, 110));
            assert!(b.windows(2).all(|w| w[0] <= w[1]), "{b:?}");
            let parts: Vec<usize> = b.windows(2).map(|w| (w[0]..w[1]).map(cost).sum()).collect();
            let max = *parts.iter().max().unwrap();
            assert!(max <= 200 / nt + 10, "nt {nt}: {parts:?}");
        }
        // Fewer cost units than threads: empty parts are fine.
        let b = split_weighted(2, 4, |_| 0);
        assert_eq!((b.len(), b[0], b[4]), (5, 0, 2));
    }
}
