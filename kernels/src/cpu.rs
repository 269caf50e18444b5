//! CPU back end: the reference implementation, always available.
//!
//! Q and K are repacked once to `[frames, S, heads*head_dim]` (f32) so that the head-averaged
//! logit is one contiguous dot product: `l(p, k) = scale * <Qp, Kk>`, `scale = tau/(sqrt(d)*H)`.
//! Work is split over threads by pair (forward), by query frame (dQ) and by key frame (dK), so
//! every thread writes disjoint outputs; the backward recomputes logits instead of storing them.

use crate::element::Element;
use crate::spec::{round_centre, CentreMode, LossPlan, Plan, Readout};

/// Repack `[H, F, S, d]` to `[F, S, H*d]` f32.
fn pack<T: Element>(x: &[T], plan: &Plan) -> Vec<f32> {
    let (hn, f, s, d) = (plan.heads, plan.frames, plan.geom.s(), plan.d);
    let dd = hn * d;
    let mut out = vec![0f32; f * s * dd];
    for h in 0..hn {
        for fr in 0..f {
            for t in 0..s {
                let src = &x[((h * f + fr) * s + t) * d..][..d];
                let dst = &mut out[(fr * s + t) * dd + h * d..][..d];
                for (o, v) in dst.iter_mut().zip(src) {
                    *o = v.to_f32();
                }
            }
        }
    }
    out
}

/// Inverse of [`pack`] for f32 gradients.
fn unpack(x: &[f32], plan: &Plan) -> Vec<f32> {
    let (hn, f, s, d) = (plan.heads, plan.frames, plan.geom.s(), plan.d);
    let dd = hn * d;
    let mut out = vec![0f32; hn * f * s * d];
    for h in 0..hn {
        for fr in 0..f {
            for t in 0..s {
                out[((h * f + fr) * s + t) * d..][..d]
                    .copy_from_slice(&x[(fr * s + t) * dd + h * d..][..d]);
            }
        }
    }
    out
}

/// Whether the AVX2+FMA versions of `dot`/`axpy` can run (checked once).
#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { dot_avx2(a, b) };
    }
    dot_generic(a, b)
}

#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: as in `dot`.
        return unsafe { axpy_avx2(y, a, x) };
    }
    axpy_generic(y, a, x)
}

/// The same loops compiled with AVX2+FMA enabled (8-lane accumulators map to one register).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(y: &mut [f32], a: f32, x: &[f32]) {
    axpy_generic(y, a, x)
}

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy_generic(y: &mut [f32], a: f32, x: &[f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(16)
}

/// Run `f(index, chunk)` over `out.chunks_mut(chunk)` on several threads.
fn par_chunks<F>(out: &mut [f32], chunk: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    if chunk == 0 || out.is_empty() {
        return;
    }
    let n = out.len() / chunk;
    let nt = threads().min(n).max(1);
    let per = n.div_ceil(nt);
    std::thread::scope(|sc| {
        for (t, part) in out.chunks_mut(per * chunk).enumerate() {
            let f = &f;
            sc.spawn(move || {
                for (c, ch) in part.chunks_mut(chunk).enumerate() {
                    f(t * per + c, ch);
                }
            });
        }
    });
}

/// Largest score matrix (elements) the backward keeps instead of recomputing logits.
const STORE_LIMIT: usize = 128 << 20;

/// Packed inputs plus the per-(pair, query) window starts.
pub(crate) struct Prepared {
    q: Vec<f32>,
    k: Vec<f32>,
    /// `[P, S]` window start (row, col).
    starts: Vec<(usize, usize)>,
}

/// Softmax statistics of one (pair, query) row.
#[derive(Clone, Copy, Default)]
struct RowStats {
    max: f32,
    sum: f32,
    ey: f32,
    ex: f32,
    arg: usize,
}

fn row_stats(
    plan: &Plan,
    qv: &[f32],
    kframe: &[f32],
    r0: usize,
    c0: usize,
    logits: &mut Vec<f32>,
) -> RowStats {
    let g = &plan.geom;
    let dd = plan.heads * plan.d;
    logits.clear();
    for y in r0..r0 + g.wh {
        for x in c0..c0 + g.ww {
            let kt = y * g.w + x;
            logits.push(plan.scale * dot(qv, &kframe[kt * dd..(kt + 1) * dd]));
        }
    }
    let mut st = RowStats {
        max: f32::NEG_INFINITY,
        ..Default::default()
    };
    for (i, &l) in logits.iter().enumerate() {
        if l > st.max {
            st.max = l;
            st.arg = i;
        }
    }
    let (mut sum, mut sy, mut sx) = (0f32, 0f32, 0f32);
    for (i, l) in logits.iter_mut().enumerate() {
        let e = (*l - st.max).exp();
        *l = e;
        sum += e;
        sy += e * (r0 + i / g.ww) as f32;
        sx += e * (c0 + i % g.ww) as f32;
    }
    st.sum = sum;
    st.ey = sy / sum;
    st.ex = sx / sum;
    st
}

pub(crate) fn prepare<T: Element>(plan: &Plan, q: &[T], k: &[T]) -> Prepared {
    let g = plan.geom;
    let s = g.s();
    let qp = pack(q, plan);
    let kp = pack(k, plan);
    let dd = plan.heads * plan.d;
    let npairs = plan.pairs.len();
    let mut starts = vec![(0usize, 0usize); npairs * s];
    match g.mode {
        CentreMode::Full => {}
        CentreMode::Query => {
            for p in 0..npairs {
                for t in 0..s {
                    starts[p * s + t] = g.start_for_centre((t / g.w) as i64, (t % g.w) as i64);
                }
            }
        }
        CentreMode::Coarse { th, tw } => {
            // Coarse pass: the tile-centre query over all keys of frame j.
            let (nty, ntx) = g.tiles();
            let full = Plan {
                geom: crate::spec::Geometry {
                    wh: g.h,
                    ww: g.w,
                    mode: CentreMode::Full,
                    ..g
                },
                ..plan.clone()
            };
            let mut centres = vec![0f32; npairs * nty * ntx * 2];
            par_chunks(&mut centres, nty * ntx * 2, |p, out| {
                let (i, j) = plan.pairs[p];
                let kframe = &kp[j * s * dd..(j + 1) * s * dd];
                let mut buf = Vec::new();
                for ty in 0..nty {
                    for tx in 0..ntx {
                        let ct = g.tile_centre_token(ty, tx);
                        let qv = &qp[(i * s + ct) * dd..(i * s + ct + 1) * dd];
                        let st = row_stats(&full, qv, kframe, 0, 0, &mut buf);
                        out[(ty * ntx + tx) * 2] = st.ey;
                        out[(ty * ntx + tx) * 2 + 1] = st.ex;
                    }
                }
            });
            for p in 0..npairs {
                for t in 0..s {
                    let tile = (t / g.w / th) * ntx + (t % g.w) / tw;
                    let e = &centres[(p * nty * ntx + tile) * 2..][..2];
                    starts[p * s + t] =
                        g.start_for_centre(round_centre(e[0], g.h), round_centre(e[1], g.w));
                }
            }
        }
    }
    Prepared {
        q: qp,
        k: kp,
        starts,
    }
}

/// Forward: `[P, S, 2]` displacements.
pub(crate) fn forward(plan: &Plan, pre: &Prepared, readout: Readout) -> Vec<f32> {
    let g = plan.geom;
    let s = g.s();
    let dd = plan.heads * plan.d;
    let mut disp = vec![0f32; plan.pairs.len() * s * 2];
    par_chunks(&mut disp, s * 2, |p, out| {
        let (i, j) = plan.pairs[p];
        let kframe = &pre.k[j * s * dd..(j + 1) * s * dd];
        let mut buf = Vec::new();
        for t in 0..s {
            let (r0, c0) = pre.starts[p * s + t];
            let qv = &pre.q[(i * s + t) * dd..(i * s + t + 1) * dd];
            let st = row_stats(plan, qv, kframe, r0, c0, &mut buf);
            let (py, px) = ((t / g.w) as f32, (t % g.w) as f32);
            let (y, x) = match readout {
                Readout::SoftArgmax => (st.ey, st.ex),
                Readout::Argmax => ((r0 + st.arg / g.ww) as f32, (c0 + st.arg % g.ww) as f32),
            };
            out[t * 2] = y - py;
            out[t * 2 + 1] = x - px;
        }
    });
    disp
}

/// Loss and gradients of the soft-argmax AMF against `reference`.
///
/// When the score matrix fits (`P*S*W <= STORE_LIMIT`), one pass computes each row's softmax,
/// displacement, loss gradient and scores, and the dQ/dK passes only accumulate (three
/// products' worth of work); otherwise the forward runs first and the scores are recomputed
/// in each gradient pass.
pub(crate) fn loss_and_grad(
    plan: &Plan,
    pre: &Prepared,
    reference: &[f32],
    lp: &LossPlan,
) -> (f32, Vec<f32>, Vec<f32>) {
    let g = plan.geom;
    let s = g.s();
    let dd = plan.heads * plan.d;
    let npairs = plan.pairs.len();
    let wl = g.wlen();
    // Tests set FASTVMT_AMF_CPU_STORE_LIMIT=0 to exercise the recomputing path.
    let limit = std::env::var("FASTVMT_AMF_CPU_STORE_LIMIT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(STORE_LIMIT);
    let store = npairs * s * wl <= limit;
    // Fused pass (store): per pair, [scores S*W | disp S*2].
    let mut fused = Vec::new();
    let disp_owned;
    let disp: &[f32] = if store {
        let per = s * wl + 2 * s;
        fused = vec![0f32; npairs * per];
        par_chunks(&mut fused, per, |p, out| {
            let (i, j) = plan.pairs[p];
            let kframe = &pre.k[j * s * dd..(j + 1) * s * dd];
            let (sc, dsp) = out.split_at_mut(s * wl);
            let mut buf = Vec::new();
            for t in 0..s {
                let row = p * s + t;
                let (r0, c0) = pre.starts[row];
                let qv = &pre.q[(i * s + t) * dd..(i * s + t + 1) * dd];
                let st = row_stats(plan, qv, kframe, r0, c0, &mut buf);
                let dy = st.ey - (t / g.w) as f32;
                let dx = st.ex - (t % g.w) as f32;
                dsp[t * 2] = dy;
                dsp[t * 2 + 1] = dx;
                let c = lp.coef[row];
                if c == 0.0 {
                    continue;
                }
                let gy = c * (dy - reference[row * 2]);
                let gx = c * (dx - reference[row * 2 + 1]);
                let inv = 1.0 / st.sum;
                for (n, (o, e)) in sc[t * wl..(t + 1) * wl].iter_mut().zip(&buf).enumerate() {
                    let ddy = (r0 + n / g.ww) as f32 - st.ey;
                    let ddx = (c0 + n % g.ww) as f32 - st.ex;
                    *o = plan.scale * (e * inv) * (gy * ddy + gx * ddx);
                }
            }
        });
        disp_owned = (0..npairs)
            .flat_map(|p| fused[p * per + s * wl..(p + 1) * per].iter().copied())
            .collect::<Vec<f32>>();
        &disp_owned
    } else {
        disp_owned = forward(plan, pre, Readout::SoftArgmax);
        &disp_owned
    };
    // Per-row gradient w.r.t. the displacement: coef * (d - r).
    let mut loss = 0f64;
    let mut gr = vec![0f32; npairs * s * 2];
    for row in 0..npairs * s {
        let c = lp.coef[row];
        if c == 0.0 {
            continue;
        }
        let ey = disp[row * 2] - reference[row * 2];
        let ex = disp[row * 2 + 1] - reference[row * 2 + 1];
        loss += 0.5 * c as f64 * (ey as f64 * ey as f64 + ex as f64 * ex as f64);
        gr[row * 2] = c * ey;
        gr[row * 2 + 1] = c * ex;
    }
    // Score gradient for one row, written into `buf` (one value per window key, times scale).
    let row_scores = |p: usize, t: usize, buf: &mut Vec<f32>| -> bool {
        let row = p * s + t;
        let (gy, gx) = (gr[row * 2], gr[row * 2 + 1]);
        if gy == 0.0 && gx == 0.0 {
            return false;
        }
        let (i, j) = plan.pairs[p];
        let (r0, c0) = pre.starts[row];
        let qv = &pre.q[(i * s + t) * dd..(i * s + t + 1) * dd];
        let kframe = &pre.k[j * s * dd..(j + 1) * s * dd];
        let st = row_stats(plan, qv, kframe, r0, c0, buf);
        let inv = 1.0 / st.sum;
        for (n, v) in buf.iter_mut().enumerate() {
            let dy = (r0 + n / g.ww) as f32 - st.ey;
            let dx = (c0 + n % g.ww) as f32 - st.ex;
            *v = plan.scale * (*v * inv) * (gy * dy + gx * dx);
        }
        true
    };
    let per = s * wl + 2 * s;
    let stored: Option<&[f32]> = store.then_some(&fused[..]);
    // Scores of row (p, t) into `buf`, from the store or recomputed; false if the row is inert.
    let scores_of = |p: usize, t: usize, buf: &mut Vec<f32>| -> bool {
        let row = p * s + t;
        if gr[row * 2] == 0.0 && gr[row * 2 + 1] == 0.0 {
            return false;
        }
        match stored {
            Some(all) => {
                buf.clear();
                buf.extend_from_slice(&all[p * per + t * wl..p * per + (t + 1) * wl]);
                true
            }
            None => row_scores(p, t, buf),
        }
    };
    // dQ: one frame of queries per work item.
    let mut dq = vec![0f32; plan.frames * s * dd];
    par_chunks(&mut dq, s * dd, |i, out| {
        let mut buf = Vec::new();
        for (p, &(pi, j)) in plan.pairs.iter().enumerate() {
            if pi != i {
                continue;
            }
            let kframe = &pre.k[j * s * dd..(j + 1) * s * dd];
            for t in 0..s {
                if !scores_of(p, t, &mut buf) {
                    continue;
                }
                let (r0, c0) = pre.starts[p * s + t];
                let acc = &mut out[t * dd..(t + 1) * dd];
                for (n, &sc) in buf.iter().enumerate() {
                    let kt = (r0 + n / g.ww) * g.w + c0 + n % g.ww;
                    axpy(acc, sc, &kframe[kt * dd..(kt + 1) * dd]);
                }
            }
        }
    });
    // dK: one frame of keys per work item.
    let mut dk = vec![0f32; plan.frames * s * dd];
    par_chunks(&mut dk, s * dd, |j, out| {
        let mut buf = Vec::new();
        for (p, &(i, pj)) in plan.pairs.iter().enumerate() {
            if pj != j {
                continue;
            }
            for t in 0..s {
                if !scores_of(p, t, &mut buf) {
                    continue;
                }
                let (r0, c0) = pre.starts[p * s + t];
                let qv = &pre.q[(i * s + t) * dd..(i * s + t + 1) * dd];
                for (n, &sc) in buf.iter().enumerate() {
                    let kt = (r0 + n / g.ww) * g.w + c0 + n % g.ww;
                    axpy(&mut out[kt * dd..(kt + 1) * dd], sc, qv);
                }
            }
        }
    });
    (loss as f32, unpack(&dq, plan), unpack(&dk, plan))
}
