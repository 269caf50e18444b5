"""numpy-only helpers shared by the torch model, the samplers and the checker (no torch import)."""
import numpy as np


def rope_axes_dim(head_dim: int):
    """Wan's split of head_dim between (frames, rows, cols): rows = cols = 2*(d//6), frames = rest."""
    hw = 2 * (head_dim // 6)
    return (head_dim - 2 * hw, hw, hw)


def rope_tables_np(frames: int, h: int, w: int, axes_dim, theta: float = 10000.0):
    """cos, sin float32 [frames*h*w, head_dim/2].

    Token n = (f*h + i)*w + j. Columns: first dt/2 columns for the frame axis, then dh/2 for
    rows, then dw/2 for columns. Column c of axis a (dim d_a, index k within the axis):
    angle = pos_a * theta ** (-(2k)/d_a). Computed in float64, cast to float32.
    Pairs are interleaved: (x[2c], x[2c+1]) rotates by angle c.
    """
    dt, dh, dw = axes_dim
    def freqs(d):
        return 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    ft, fh, fw = freqs(dt), freqs(dh), freqs(dw)
    f_idx, i_idx, j_idx = np.meshgrid(np.arange(frames), np.arange(h), np.arange(w), indexing="ij")
    f_idx, i_idx, j_idx = f_idx.reshape(-1), i_idx.reshape(-1), j_idx.reshape(-1)
    ang = np.concatenate([
        f_idx[:, None] * ft[None, :],
        i_idx[:, None] * fh[None, :],
        j_idx[:, None] * fw[None, :],
    ], axis=1)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


