//! Shared test helpers: seeded inputs and an independent float64 reference of the AMF, its
//! loss and its gradients (written from the definition in README.md, not from the library).
#![allow(dead_code)]

use fastvmt_kernels::{AmfSpec, KeyWindow, PairSet, PairWeights, WindowCentre};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn rand_vec(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut r = StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-amp..amp)).collect()
}

pub fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut num = 0f64;
    let mut den = 0f64;
    for (x, y) in a.iter().zip(b) {
        assert!(x.is_finite(), "non-finite output {x}");
        num += (*x as f64 - y) * (*x as f64 - y);
        den += y * y;
    }
    (num / den.max(1e-300)).sqrt()
}

pub fn rel_err32(a: &[f32], b: &[f32]) -> f64 {
    let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    rel_err(a, &b64)
}

pub fn spec(
    h: usize,
    f: usize,
    gh: usize,
    gw: usize,
    d: usize,
    pairs: PairSet,
    window: KeyWindow,
) -> AmfSpec {
    AmfSpec {
        heads: h,
        frames: f,
        grid_h: gh,
        grid_w: gw,
        head_dim: d,
        tau: 2.0,
        pairs,
        window,
    }
}

pub fn local(radius: usize) -> KeyWindow {
    KeyWindow::Local {
        radius,
        centre: WindowCentre::Query,
    }
}

pub fn coarse(radius: usize, th: usize, tw: usize) -> KeyWindow {
    KeyWindow::Local {
        radius,
        centre: WindowCentre::CoarseTiles {
            tile_h: th,
            tile_w: tw,
        },
    }
}

/// The f64 reference.
pub struct Ref<'a> {
    pub s: &'a AmfSpec,
    pub q: Vec<f64>,
    pub k: Vec<f64>,
}

impl<'a> Ref<'a> {
    pub fn new(s: &'a AmfSpec, q: &[f32], k: &[f32]) -> Self {
        Ref {
            s,
            q: q.iter().map(|&v| v as f64).collect(),
            k: k.iter().map(|&v| v as f64).collect(),
        }
    }

    pub fn pairs(&self) -> Vec<(usize, usize)> {
        let f = self.s.frames;
        let mut v = Vec::new();
        match &self.s.pairs {
            PairSet::AllOrdered => {
                for i in 0..f {
                    for j in 0..f {
                        if i != j {
                            v.push((i, j));
                        }
                    }
                }
            }
            PairSet::Forward { span } => {
                for i in 0..f {
                    for j in i + 1..f {
                        if j - i < *span {
                            v.push((i, j));
                        }
                    }
                }
            }
            PairSet::Explicit(l) => v = l.clone(),
        }
        v
    }

    fn idx(&self, h: usize, f: usize, t: usize) -> usize {
        ((h * self.s.frames + f) * self.s.grid_h * self.s.grid_w + t) * self.s.head_dim
    }

    /// Head-averaged logit.
    pub fn logit(&self, q: &[f64], k: &[f64], i: usize, j: usize, p: usize, key: usize) -> f64 {
        let s = self.s;
        let mut acc = 0.0;
        for h in 0..s.heads {
            let a = self.idx(h, i, p);
            let b = self.idx(h, j, key);
            for c in 0..s.head_dim {
                acc += q[a + c] * k[b + c];
            }
        }
        s.tau as f64 * acc / (s.head_dim as f64).sqrt() / s.heads as f64
    }

    /// Soft-argmax (y, x) over an explicit key list.
    fn soft(
        &self,
        q: &[f64],
        k: &[f64],
        i: usize,
        j: usize,
        p: usize,
        keys: &[usize],
    ) -> (f64, f64, Vec<f64>) {
        let w = self.s.grid_w;
        let l: Vec<f64> = keys
            .iter()
            .map(|&key| self.logit(q, k, i, j, p, key))
            .collect();
        let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = l.iter().map(|v| (v - m).exp()).collect();
        let z: f64 = e.iter().sum();
        let a: Vec<f64> = e.iter().map(|v| v / z).collect();
        let ey = keys
            .iter()
            .zip(&a)
            .map(|(&key, a)| a * (key / w) as f64)
            .sum();
        let ex = keys
            .iter()
            .zip(&a)
            .map(|(&key, a)| a * (key % w) as f64)
            .sum();
        (ey, ex, a)
    }

    /// Allowed keys per (pair, query), computed from the definition.
    pub fn windows(&self) -> Vec<Vec<usize>> {
        let s = self.s;
        let (h, w) = (s.grid_h, s.grid_w);
        let all: Vec<usize> = (0..h * w).collect();
        let mut out = Vec::new();
        for (i, j) in self.pairs() {
            for p in 0..h * w {
                let keys = match s.window {
                    KeyWindow::Full => all.clone(),
                    KeyWindow::Local { radius, centre } => {
                        let (cy, cx) = match centre {
                            WindowCentre::Query => ((p / w) as i64, (p % w) as i64),
                            WindowCentre::CoarseTiles { tile_h, tile_w } => {
                                let (th, tw) = (tile_h.min(h), tile_w.min(w));
                                let (ty, tx) = ((p / w) / th, (p % w) / tw);
                                let rows = th.min(h - ty * th);
                                let cols = tw.min(w - tx * tw);
                                let c = (ty * th + (rows - 1) / 2) * w + tx * tw + (cols - 1) / 2;
                                let (ey, ex, _) = self.soft(&self.q, &self.k, i, j, c, &all);
                                let r = |v: f64, n: usize| {
                                    ((v + 0.5).floor() as i64).clamp(0, n as i64 - 1)
                                };
                                (r(ey, h), r(ex, w))
                            }
                        };
                        let side = 2 * radius + 1;
                        let (wh, ww) = (side.min(h), side.min(w));
                        let r0 = (cy - radius as i64).clamp(0, (h - wh) as i64) as usize;
                        let c0 = (cx - radius as i64).clamp(0, (w - ww) as i64) as usize;
                        let mut v = Vec::new();
                        for y in r0..r0 + wh {
                            for x in c0..c0 + ww {
                                v.push(y * w + x);
                            }
                        }
                        v
                    }
                };
                out.push(keys);
            }
        }
        out
    }

    /// `[P, S, 2]`; `argmax` picks the first maximal logit in raster order.
    pub fn amf_with(&self, q: &[f64], k: &[f64], wins: &[Vec<usize>], argmax: bool) -> Vec<f64> {
        let (w, sn) = (self.s.grid_w, self.s.grid_h * self.s.grid_w);
        let mut out = Vec::new();
        for (pi, (i, j)) in self.pairs().into_iter().enumerate() {
            for p in 0..sn {
                let keys = &wins[pi * sn + p];
                let (y, x) = if argmax {
                    let mut best = (f64::NEG_INFINITY, 0);
                    for &key in keys {
                        let l = self.logit(q, k, i, j, p, key);
                        if l > best.0 {
                            best = (l, key);
                        }
                    }
                    ((best.1 / w) as f64, (best.1 % w) as f64)
                } else {
                    let (ey, ex, _) = self.soft(q, k, i, j, p, keys);
                    (ey, ex)
                };
                out.push(y - (p / w) as f64);
                out.push(x - (p % w) as f64);
            }
        }
        out
    }

    pub fn weights_mask(&self, pw: PairWeights, thr: Option<f32>, reference: &[f32]) -> Vec<f64> {
        let pairs = self.pairs();
        let sn = self.s.grid_h * self.s.grid_w;
        let offs: Vec<usize> = pairs.iter().map(|&(i, j)| i.abs_diff(j)).collect();
        let (lo, hi) = (*offs.iter().min().unwrap(), *offs.iter().max().unwrap());
        let mut c = Vec::new();
        for (pi, &o) in offs.iter().enumerate() {
            let wgt = match pw {
                PairWeights::Uniform => 1.0,
                PairWeights::LinearDecay { first, last } => {
                    if hi == lo {
                        first as f64
                    } else {
                        first as f64
                            + (last as f64 - first as f64) * (o - lo) as f64 / (hi - lo) as f64
                    }
                }
            };
            for p in 0..sn {
                let r = &reference[(pi * sn + p) * 2..][..2];
                let mag = ((r[0] as f64).powi(2) + (r[1] as f64).powi(2)).sqrt();
                let keep = thr.is_none_or(|t| mag > t as f64);
                c.push(if keep { wgt } else { 0.0 });
            }
        }
        c
    }

    pub fn loss_with(
        &self,
        q: &[f64],
        k: &[f64],
        wins: &[Vec<usize>],
        c: &[f64],
        reference: &[f32],
    ) -> f64 {
        let d = self.amf_with(q, k, wins, false);
        let z: f64 = c.iter().sum();
        if z == 0.0 {
            return 0.0;
        }
        let mut l = 0.0;
        for (r, &cw) in c.iter().enumerate() {
            let ey = d[2 * r] - reference[2 * r] as f64;
            let ex = d[2 * r + 1] - reference[2 * r + 1] as f64;
            l += cw * (ey * ey + ex * ex);
        }
        l / (2.0 * z)
    }

    /// Analytic gradients of `loss_with`.
    pub fn grad_with(
        &self,
        wins: &[Vec<usize>],
        c: &[f64],
        reference: &[f32],
    ) -> (Vec<f64>, Vec<f64>) {
        let s = self.s;
        let (w, sn) = (s.grid_w, s.grid_h * s.grid_w);
        let mut dq = vec![0.0; self.q.len()];
        let mut dk = vec![0.0; self.k.len()];
        let z: f64 = c.iter().sum();
        if z == 0.0 {
            return (dq, dk);
        }
        let scale = s.tau as f64 / (s.head_dim as f64).sqrt() / s.heads as f64;
        for (pi, (i, j)) in self.pairs().into_iter().enumerate() {
            for p in 0..sn {
                let row = pi * sn + p;
                let keys = &wins[row];
                let (ey, ex, a) = self.soft(&self.q, &self.k, i, j, p, keys);
                let gy = c[row] / z * (ey - (p / w) as f64 - reference[2 * row] as f64);
                let gx = c[row] / z * (ex - (p % w) as f64 - reference[2 * row + 1] as f64);
                for (n, &key) in keys.iter().enumerate() {
                    let sc = scale
                        * a[n]
                        * (gy * ((key / w) as f64 - ey) + gx * ((key % w) as f64 - ex));
                    for h in 0..s.heads {
                        let qa = self.idx(h, i, p);
                        let kb = self.idx(h, j, key);
                        for cc in 0..s.head_dim {
                            dq[qa + cc] += sc * self.k[kb + cc];
                            dk[kb + cc] += sc * self.q[qa + cc];
                        }
                    }
                }
            }
        }
        (dq, dk)
    }
}

/// The shapes/settings every parity test walks: odd sizes, borders, both centres, dense and
/// local, windows larger than the frame, explicit pairs with a self pair and reversed pairs.
pub fn cases() -> Vec<AmfSpec> {
    vec![
        spec(2, 3, 5, 7, 8, PairSet::AllOrdered, KeyWindow::Full),
        spec(1, 2, 4, 4, 3, PairSet::AllOrdered, local(1)),
        spec(3, 4, 6, 5, 16, PairSet::Forward { span: 4 }, local(2)),
        spec(2, 5, 9, 11, 4, PairSet::Forward { span: 3 }, local(2)),
        spec(2, 4, 7, 9, 5, PairSet::AllOrdered, coarse(2, 3, 4)),
        spec(1, 3, 8, 6, 7, PairSet::Forward { span: 4 }, coarse(1, 2, 2)),
        spec(2, 3, 5, 7, 6, PairSet::AllOrdered, local(10)), // window larger than the frame
        spec(2, 3, 5, 9, 6, PairSet::AllOrdered, local(3)),  // 7 rows > 5: full height, 7 cols
        spec(
            1,
            3,
            6,
            6,
            9,
            PairSet::Explicit(vec![(2, 0), (1, 1), (0, 2), (2, 0)]),
            coarse(1, 4, 4),
        ),
        spec(1, 2, 1, 9, 4, PairSet::AllOrdered, local(2)), // single row
    ]
}

pub fn window_name(s: &AmfSpec) -> String {
    format!(
        "{:?} {:?} {}x{} H{} d{}",
        s.pairs, s.window, s.grid_h, s.grid_w, s.heads, s.head_dim
    )
}
