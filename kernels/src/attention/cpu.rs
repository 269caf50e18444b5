//! CPU back end of the fused attention (see the parent module for the definition).
//!
//! Flash-attention style: nothing `Nq x Nk` is ever stored. Inputs are converted to f32 once
//! (Q pre-multiplied by the scale; K, V and, in the backward, Q and dO also transposed so the
//! logits of a run of consecutive keys are one vectorisable `axpy` per feature). Each query row
//! walks only its visible keys, as runs of consecutive tokens (dense: one run; local: one run
//! of `min(2rs+1, w)` keys per visible (frame, row), plus the text keys), in chunks of
//! [`CHUNK`] keys:
//!
//! * forward: an online softmax per query row (running max and sum, f32), writing O and lse;
//! * backward: `delta = rowsum(dO * O)`, then `dQ` per query row (probabilities recomputed
//!   from lse) and `dK`, `dV` per key row over the queries that see that key (per axis an
//!   interval of query coordinates, the inverse of the clamp-shifted window), so every thread
//!   writes only its own rows: no atomics, no per-thread partial sums.
//!
//! Rows (flattened over batch and heads) are split evenly over up to 16 scoped threads
//! (`available_parallelism`); problems under [`PARALLEL_WORK`] multiply-adds run on the calling
//! thread. On x86_64 the row loops are compiled a second time with AVX2+FMA and chosen at run
//! time. `exp` is a vectorisable polynomial (Cephes `expf`, ~1 ulp); NaN and infinities in the
//! inputs propagate to the outputs and never panic.

use std::ops::Range;

use super::{window_axis, AttentionMask, AttentionSpec};
use crate::element::Element;
use crate::error::KernelError;

/// Keys per online-softmax step (the per-thread scratch is a few of these).
const CHUNK: usize = 256;
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
        fwd_rows(&ctx, range, o, l)
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
        dq_rows(&ctx, range, part)
    });
    // dK, dV: one row per key.
    let rows = bh * nkl;
    let bounds = split_bounds(rows, g.threads(work, rows));
    let dks = split_rows(dk, d, &bounds);
    let dvs = split_rows(dv, dvd, &bounds);
    run_parts(dks.into_iter().zip(dvs), &bounds, |range, (a, b)| {
        dkv_rows(&ctx, range, a, b)
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
// Geometry: which keys a query sees, which queries see a key, as runs of consecutive tokens.

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

    /// The keys query `q` sees, as `(first key, count)` runs.
    fn key_runs(&self, q: usize, runs: &mut Vec<(usize, usize)>) {
        runs.clear();
        let Some(l) = &self.local else {
            runs.push((0, self.nk));
            return;
        };
        let hw = l.h * l.w;
        let (qf, qy, qx) = (q / hw, (q % hw) / l.w, q % l.w);
        let (f0, y0, x0) = (l.f_axis.start[qf], l.y_axis.start[qy], l.x_axis.start[qx]);
        for f in f0..f0 + l.f_axis.size {
            for y in y0..y0 + l.y_axis.size {
                runs.push(((f * l.h + y) * l.w + x0, l.x_axis.size));
            }
        }
        if self.nk > l.video {
            runs.push((l.video, self.nk - l.video));
        }
    }

    /// The queries that see key `k`, as `(first query, count)` runs.
    fn query_runs(&self, k: usize, runs: &mut Vec<(usize, usize)>) {
        runs.clear();
        let l = match &self.local {
            Some(l) if k < l.video => l,
            _ => {
                runs.push((0, self.nq));
                return;
            }
        };
        let hw = l.h * l.w;
        let (kf, ky, kx) = (k / hw, (k % hw) / l.w, k % l.w);
        let (f0, f1) = l.f_axis.seen_by[kf];
        let (y0, y1) = l.y_axis.seen_by[ky];
        let (x0, x1) = l.x_axis.seen_by[kx];
        for f in f0..f1 {
            for y in y0..y1 {
                runs.push(((f * l.h + y) * l.w + x0, x1 - x0));
            }
        }
    }
}

/// Cuts runs into chunks of at most [`CHUNK`] tokens.
struct Chunker<'a> {
    runs: &'a [(usize, usize)],
    i: usize,
    off: usize,
}

impl<'a> Chunker<'a> {
    fn new(runs: &'a [(usize, usize)]) -> Self {
        Chunker { runs, i: 0, off: 0 }
    }

    /// Fills `pieces` with the next chunk; returns its token count (0 when done).
    #[inline(always)]
    fn next(&mut self, pieces: &mut Vec<(usize, usize)>) -> usize {
        pieces.clear();
        let mut total = 0;
        while self.i < self.runs.len() && total < CHUNK {
            let (start, len) = self.runs[self.i];
            let take = (len - self.off).min(CHUNK - total);
            if take > 0 {
                pieces.push((start + self.off, take));
            }
            total += take;
            self.off += take;
            if self.off == len {
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

/// `[blocks, n, c]` to `[blocks, c, n]`, f32.
fn transpose_blocks<T: Element>(x: &[T], blocks: usize, n: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; blocks * n * c];
    for (src, dst) in x.chunks_exact(n * c).zip(out.chunks_exact_mut(n * c)) {
        for (i, row) in src.chunks_exact(c).enumerate() {
            for (j, v) in row.iter().enumerate() {
                dst[j * n + i] = v.to_f32();
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
// Vector helpers (inlined into the AVX2 and the generic copies of the row loops).

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// `s[off..off+len] = sum_j a[j] * mt[j*n + start ..][..len]` for the chunk's pieces.
#[inline(always)]
fn gather_dots(s: &mut [f32], a: &[f32], mt: &[f32], n: usize, pieces: &[(usize, usize)]) {
    let mut off = 0;
    for &(start, len) in pieces {
        let seg = &mut s[off..off + len];
        seg.fill(0.0);
        for (j, &aj) in a.iter().enumerate() {
            let col = &mt[j * n + start..j * n + start + len];
            for (x, y) in seg.iter_mut().zip(col) {
                *x += aj * y;
            }
        }
        off += len;
    }
}

#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

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

/// `exp(x)` (Cephes `expf` polynomial, relative error ~1e-7); 0 below -87.3, NaN stays NaN.
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(-87.0, 88.0); // NaN stays NaN
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let pow = f32::from_bits((ni.wrapping_add(127) as u32).wrapping_shl(23));
    if x < -87.0 {
        0.0
    } else {
        y * pow
    }
}

// ---------------------------------------------------------------------------------------------
// Row loops. Each `*_rows` dispatches to an AVX2+FMA copy of `*_rows_impl` when it can run.

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

macro_rules! dispatch {
    ($name:ident, $avx:ident, $imp:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name<T: Element>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                // SAFETY: the CPU supports AVX2 and FMA (checked above).
                return unsafe { $avx($($arg),*) };
            }
            $imp($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx<T: Element>($($arg: $ty),*) {
            $imp($($arg),*)
        }
    };
}

dispatch!(fwd_rows, fwd_rows_avx2, fwd_rows_impl,
    (c: &FwdCtx, rows: Range<usize>, out: &mut [T], lse: &mut [f32]));
dispatch!(dq_rows, dq_rows_avx2, dq_rows_impl,
    (c: &BwdCtx, rows: Range<usize>, dq: &mut [T]));
dispatch!(dkv_rows, dkv_rows_avx2, dkv_rows_impl,
    (c: &BwdCtx, rows: Range<usize>, dk: &mut [T], dv: &mut [T]));

/// Online softmax over the visible keys of each query row in `rows` (flattened `bh * Nq + q`).
#[inline(always)]
fn fwd_rows_impl<T: Element>(c: &FwdCtx, rows: Range<usize>, out: &mut [T], lse: &mut [f32]) {
    let g = c.g;
    let (nq, nk, d, dv) = (g.nq, g.nk, g.d, g.dv);
    let mut runs = Vec::new();
    let mut pieces = Vec::new();
    let mut s = vec![0f32; CHUNK];
    let mut acc = vec![0f32; dv];
    for (i, row) in rows.enumerate() {
        let (b, qi) = (row / nq, row % nq);
        let qrow = &c.qs[row * d..(row + 1) * d];
        let kt = &c.kt[b * d * nk..(b + 1) * d * nk];
        let v = &c.v[b * nk * dv..(b + 1) * nk * dv];
        g.key_runs(qi, &mut runs);
        let mut chunks = Chunker::new(&runs);
        let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
        acc.fill(0.0);
        loop {
            let n = chunks.next(&mut pieces);
            if n == 0 {
                break;
            }
            let s = &mut s[..n];
            gather_dots(s, qrow, kt, nk, &pieces);
            let bm = max_of(s);
            if bm > m {
                let r = (m - bm).exp();
                l *= r;
                for a in acc.iter_mut() {
                    *a *= r;
                }
                m = bm;
            }
            for x in s.iter_mut() {
                *x = exp_fast(*x - m);
            }
            l += sum_of(s);
            let mut idx = 0;
            for &(start, len) in &pieces {
                for key in start..start + len {
                    axpy(&mut acc, s[idx], &v[key * dv..(key + 1) * dv]);
                    idx += 1;
                }
            }
        }
        let inv = 1.0 / l;
        for (o, a) in out[i * dv..(i + 1) * dv].iter_mut().zip(&acc) {
            *o = T::from_f32(a * inv);
        }
        lse[i] = m + l.ln();
    }
}

/// `dQ[q] = scale * sum_k P (dP - delta) K[k]` for each query row in `rows`.
#[inline(always)]
fn dq_rows_impl<T: Element>(c: &BwdCtx, rows: Range<usize>, dq: &mut [T]) {
    let g = c.g;
    let (nq, nk, d, dv) = (g.nq, g.nk, g.d, g.dv);
    let mut runs = Vec::new();
    let mut pieces = Vec::new();
    let mut s = vec![0f32; CHUNK];
    let mut dp = vec![0f32; CHUNK];
    let mut acc = vec![0f32; d];
    for (i, row) in rows.enumerate() {
        let (b, qi) = (row / nq, row % nq);
        let qrow = &c.qs[row * d..(row + 1) * d];
        let orow = &c.dout[row * dv..(row + 1) * dv];
        let kt = &c.kt[b * d * nk..(b + 1) * d * nk];
        let vt = &c.vt[b * dv * nk..(b + 1) * dv * nk];
        let k = &c.k[b * nk * d..(b + 1) * nk * d];
        let (lse, delta) = (c.lse[row], c.delta[row]);
        g.key_runs(qi, &mut runs);
        let mut chunks = Chunker::new(&runs);
        acc.fill(0.0);
        loop {
            let n = chunks.next(&mut pieces);
            if n == 0 {
                break;
            }
            let (s, dp) = (&mut s[..n], &mut dp[..n]);
            gather_dots(s, qrow, kt, nk, &pieces);
            gather_dots(dp, orow, vt, nk, &pieces);
            for (x, y) in s.iter_mut().zip(dp.iter()) {
                *x = exp_fast(*x - lse) * (y - delta);
            }
            let mut idx = 0;
            for &(start, len) in &pieces {
                for key in start..start + len {
                    axpy(&mut acc, s[idx], &k[key * d..(key + 1) * d]);
                    idx += 1;
                }
            }
        }
        for (o, a) in dq[i * d..(i + 1) * d].iter_mut().zip(&acc) {
            *o = T::from_f32(a * g.scale);
        }
    }
}

/// `dV[k] = sum_q P dO[q]`, `dK[k] = sum_q P (dP - delta) scale Q[q]` for each key row in
/// `rows` (flattened `bh * Nk + k`), over the queries that see the key.
#[inline(always)]
fn dkv_rows_impl<T: Element>(c: &BwdCtx, rows: Range<usize>, dk: &mut [T], dv: &mut [T]) {
    let g = c.g;
    let (nq, nk, d, dvd) = (g.nq, g.nk, g.d, g.dv);
    let mut runs = Vec::new();
    let mut pieces = Vec::new();
    let mut s = vec![0f32; CHUNK];
    let mut dp = vec![0f32; CHUNK];
    let mut acc_k = vec![0f32; d];
    let mut acc_v = vec![0f32; dvd];
    for (i, row) in rows.enumerate() {
        let (b, ki) = (row / nk, row % nk);
        let krow = &c.k[row * d..(row + 1) * d];
        let vrow = &c.v[row * dvd..(row + 1) * dvd];
        let qst = &c.qst[b * d * nq..(b + 1) * d * nq];
        let dot = &c.dot[b * dvd * nq..(b + 1) * dvd * nq];
        let qs = &c.qs[b * nq * d..(b + 1) * nq * d];
        let dout = &c.dout[b * nq * dvd..(b + 1) * nq * dvd];
        let lse = &c.lse[b * nq..(b + 1) * nq];
        let delta = &c.delta[b * nq..(b + 1) * nq];
        g.query_runs(ki, &mut runs);
        let mut chunks = Chunker::new(&runs);
        acc_k.fill(0.0);
        acc_v.fill(0.0);
        loop {
            let n = chunks.next(&mut pieces);
            if n == 0 {
                break;
            }
            let (s, dp) = (&mut s[..n], &mut dp[..n]);
            gather_dots(s, krow, qst, nq, &pieces);
            gather_dots(dp, vrow, dot, nq, &pieces);
            let mut idx = 0;
            for &(start, len) in &pieces {
                for q in start..start + len {
                    let p = exp_fast(s[idx] - lse[q]);
                    let ds = p * (dp[idx] - delta[q]);
                    axpy(&mut acc_v, p, &dout[q * dvd..(q + 1) * dvd]);
                    axpy(&mut acc_k, ds, &qs[q * d..(q + 1) * d]);
                    idx += 1;
                }
            }
        }
        for (o, a) in dk[i * d..(i + 1) * d].iter_mut().zip(&acc_k) {
            *o = T::from_f32(*a);
        }
        for (o, a) in dv[i * dvd..(i + 1) * dvd].iter_mut().zip(&acc_v) {
            *o = T::from_f32(*a);
        }
    }
}
