//! RoPE tables, computed outside the graphs (so frame count and size stay dynamic).
//!
//! Convention (the bundle manifest's `rope` object): tables `[N, head_dim/2]`, token
//! `n = (f*h + i)*w + j`; columns `[0, dt/2)` rotate by the frame index, then `dh/2` columns by
//! the row, then `dw/2` by the column; column `k` of an axis of dim `d` has frequency
//! `theta^(-2k/d)`. Angles in f64, cos/sin stored as f32.

/// cos and sin tables, each `frames*h*w x (dt+dh+dw)/2`, row-major.
pub fn tables(
    frames: usize,
    h: usize,
    w: usize,
    axes_dim: [usize; 3],
    theta: f64,
) -> (Vec<f32>, Vec<f32>) {
    let freqs: Vec<Vec<f64>> = axes_dim
        .iter()
        .map(|&d| {
            (0..d / 2)
                .map(|k| theta.powf(-((2 * k) as f64) / d as f64))
                .collect()
        })
        .collect();
    let cols: usize = freqs.iter().map(Vec::len).sum();
    let n = frames * h * w;
    let mut cos = Vec::with_capacity(n * cols);
    let mut sin = Vec::with_capacity(n * cols);
    for f in 0..frames {
        for i in 0..h {
            for j in 0..w {
                for (axis, pos) in [f, i, j].into_iter().enumerate() {
                    for &freq in &freqs[axis] {
                        let angle = pos as f64 * freq;
                        cos.push(angle.cos() as f32);
                        sin.push(angle.sin() as f32);
                    }
                }
            }
        }
    }
    (cos, sin)
}
