#!/usr/bin/env python3
"""Eager PyTorch reference for the Wan end-to-end benchmark (issue #7).

Runs `none`, `ditflow` and `fastvmt` sampling on a random-initialised diffusers
WanTransformer3DModel (Wan2.1-T2V-1.3B dimensions by default) with the schedule and pass counts
of our sampler (plugin/src/sampler/{mod,guidance,schedule,adamw}.rs) and the AMF definition of
kernels/src/lib.rs, in bf16 with every attention as F.scaled_dot_product_attention; no
torch.compile, no CUDA graphs. Its timings are the PyTorch side of the comparison.

    python3 bench/wan/torch_reference.py --modes none,ditflow,fastvmt --layers 30 --frames 21 \
        --height 60 --width 104 --text-len 512 --steps 10 --guided-fraction 0.2 --inner-steps 10 \
        --reuse-interval 3 --dtype bf16 --device cuda --out results.json
    # CPU test of the route on diffusers' tiny config, and the AMF against a naive loop:
    python3 bench/wan/torch_reference.py --tiny --device cpu --dtype fp32 --steps 5 --out /tmp/tr.json
    python3 bench/wan/torch_reference.py --self-check

What one run does (as plugin/src/sampler/mod.rs, denoise = 1): start from seeded noise; the
first round(fraction * steps) steps are guided; each guided step runs one reference-AMF pass
(the reference noised to reference_noise * t with fixed noise, empty prompt, argmax read-out,
no gradient) and `inner_steps` AdamW steps on the latent (a fresh optimiser per guided step, lr
decaying linearly over the guided steps to lr * lr_end_ratio); a real gradient is a forward
through blocks 0..motion_block to Q/K, the AMF loss and the VJP to the latent (`ditflow`: every
inner step; `fastvmt`: inner steps j % reuse_interval == 0, the cached gradient otherwise);
then one Euler step with classifier-free guidance batched as one B=2 denoiser pass.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "onnx"))
from fastvmt_onnx.export_wan import WanGraph, tiny_wan, to_dtype, wan13_dims  # noqa: E402
from fastvmt_onnx.model import set_attention_impl  # noqa: E402
from fastvmt_onnx.model_np import rope_axes_dim, rope_tables_np  # noqa: E402

MODES = ("none", "ditflow", "fastvmt")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# DiTFlow's moving-entries mask, fixed for `ditflow` (guidance.rs: Guide::new).
DITFLOW_MOVING_THRESHOLD = 0.5
# FastVMT's pair weights by temporal offset (guidance.rs: LinearDecay { first: 1.0, last: 0.8 }).
FASTVMT_PAIR_WEIGHTS = (1.0, 0.8)


# ----------------------------------------------------------------------------------------------
# Schedule (schedule.rs) and guided-step count (mod.rs), in f32 like the Rust code
# ----------------------------------------------------------------------------------------------
def sigmas(steps, shift):
    s = np.float32(1.0) - np.arange(steps + 1, dtype=np.float32) / np.float32(steps)
    shift = np.float32(shift)
    return (shift * s / (np.float32(1.0) + (shift - np.float32(1.0)) * s)).astype(np.float32)


def guided_step_count(fraction, steps):
    # Rust's f32::round rounds halves away from zero; Python's round() would not.
    return min(int(math.floor(float(np.float32(fraction) * np.float32(steps)) + 0.5)), steps)


# ----------------------------------------------------------------------------------------------
# AMF (kernels/src/lib.rs, spec.rs)
# ----------------------------------------------------------------------------------------------
class Amf:
    """AMF of one motion block's Q/K, its argmax reference and the soft-argmax loss.

    Pairs are grouped by signed frame offset o = j - i: the pairs (i, i+o), i in [i0, i1), are
    two contiguous frame slices of the packed Q and K, so a group is one bmm with no copies.
    Q and K are packed to [F, S, heads*head_dim], so one dot product is the sum over heads; the
    bmm's alpha applies tau / (sqrt(d) * heads). matmul "tf32" (default): fp32 operands on TF32
    tensor cores; Q/K from a bf16 model are bf16 values, which TF32 holds exactly, so the
    forward logits equal fp32 ones, as our kernels' (bf16 Q/K, f32 accumulation); "fp32": no
    TF32; "model": the GEMMs in the model dtype, logits upcast before the softmax. Softmax,
    read-out and loss are fp32. The local key window is done as a straightforward
    PyTorch port would: the full S x S logits of each pair are computed and everything outside
    the window is masked with -inf (mask built once), not gathered.
    """

    def __init__(self, frames, grid_h, grid_w, heads, head_dim, tau, span=None, radius=None,
                 pair_weights=None, moving_threshold=None, chunk_bytes=1 << 30, device="cpu",
                 matmul="fp32", model_dtype=torch.float32):
        """span None: all ordered pairs i != j (DiTFlow); else forward pairs 1 <= j-i < span.
        radius None: all keys; else the (2r+1)^2 window centred on the query, shifted inside the
        frame. pair_weights None: uniform; (first, last): linear in |j-i| over the pair set."""
        self.F, self.h, self.w = frames, grid_h, grid_w
        S = grid_h * grid_w
        self.S = S
        self.scale = tau / (math.sqrt(head_dim) * heads)
        self.moving_threshold = moving_threshold
        self.tf32 = matmul == "tf32"
        self.mm_dtype = model_dtype if matmul == "model" else torch.float32
        self.zero = torch.zeros((), dtype=self.mm_dtype, device=device)
        offsets = [o for o in range(-(frames - 1), frames) if o != 0] if span is None else list(range(1, span))
        offsets = [o for o in offsets if frames - abs(o) > 0]
        if not offsets:
            raise ValueError(f"no frame pairs for {frames} frames (span {span})")
        # Memory bound: the autograd graph of one chunk keeps its [pairs, S, S] softmax.
        max_pairs = max(1, chunk_bytes // (S * S * 4))
        self.segments = []
        for o in offsets:
            lo, hi = max(0, -o), min(frames, frames - o)
            for a in range(lo, hi, max_pairs):
                self.segments.append((o, a, min(hi, a + max_pairs)))
        self.chunks, cur, n = [], [], 0
        for si, (_, a, b) in enumerate(self.segments):
            if cur and n + (b - a) > max_pairs:
                self.chunks.append(cur)
                cur, n = [], 0
            cur.append(si)
            n += b - a
        self.chunks.append(cur)
        self.pairs = [(i, i + o) for (o, a, b) in self.segments for i in range(a, b)]
        lo_off, hi_off = min(abs(o) for o in offsets), max(abs(o) for o in offsets)

        def weight(o):
            if pair_weights is None:
                return 1.0
            first, last = pair_weights
            if hi_off == lo_off:
                return first
            return first + (last - first) * (abs(o) - lo_off) / (hi_off - lo_off)
        self.seg_weight = [weight(o) for (o, _, _) in self.segments]
        rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
        cols = torch.arange(grid_w, device=device).repeat(grid_h)
        self.pos = torch.stack([rows, cols], 1).float()  # [S, 2] (row, col) of each token
        self.outside = None
        self.radius = radius
        if radius is not None:
            side = 2 * radius + 1
            wh, ww = min(side, grid_h), min(side, grid_w)
            if not (side >= grid_h and side >= grid_w):  # a window covering the frame is Full
                r0 = (rows - radius).clamp(0, grid_h - wh)
                c0 = (cols - radius).clamp(0, grid_w - ww)
                inside = ((rows[None, :] >= r0[:, None]) & (rows[None, :] < r0[:, None] + wh)
                          & (cols[None, :] >= c0[:, None]) & (cols[None, :] < c0[:, None] + ww))
                self.outside = ~inside  # [S query, S key]

    def pack(self, q):
        """[1, heads, F*S, d] -> [F, S, heads*d] in the matmul dtype."""
        _, H, _, d = q.shape
        return q[0].transpose(0, 1).reshape(self.F, self.S, H * d).to(self.mm_dtype)

    @contextlib.contextmanager
    def precision(self):
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    def logits(self, qc, kc, seg):
        o, a, b = seg
        lg = torch.baddbmm(self.zero, qc[a:b], kc[a + o:b + o].transpose(1, 2), beta=0.0,
                           alpha=self.scale).float()  # [n, S, S]
        if self.outside is not None:
            lg = lg.masked_fill(self.outside, float("-inf"))
        return lg

    def soft_disp(self, qc, kc, seg):
        p = torch.softmax(self.logits(qc, kc, seg), dim=-1)
        return p @ self.pos - self.pos  # expected key position minus query position

    def argmax_disp(self, qc, kc, seg):
        # torch.argmax returns the first maximum: raster order, as the kernels' tie rule.
        return self.pos[self.logits(qc, kc, seg).argmax(-1)] - self.pos

    @torch.no_grad()
    def reference(self, q, k):
        """Argmax AMF per segment ([n, S, 2] each) and the loss coefficients
        w_pair * mask / sum(w * mask) per segment ([n, S] each), as spec.rs's loss_plan."""
        qc, kc = self.pack(q), self.pack(k)
        with self.precision():
            refs = [self.argmax_disp(qc, kc, seg) for seg in self.segments]
        coefs = []
        for wgt, r in zip(self.seg_weight, refs):
            keep = torch.ones_like(r[..., 0]) if self.moving_threshold is None else \
                (r.norm(dim=-1) > self.moving_threshold).float()
            coefs.append(keep * wgt)
        total = sum(c.sum() for c in coefs)
        coefs = [c / total.clamp_min(1e-30) for c in coefs]  # all zero stays zero (loss 0)
        return refs, coefs

    def loss_and_grad(self, q, k, refs, coefs, wrt):
        """L = sum w m |disp - ref|^2 / (2 sum w m) and dL/d(wrt) through the model graph.

        Chunked over offset groups with a backward per chunk into leaves holding the packed Q/K,
        then one backward through the model. The dense AMF at 21 frames x 1560 tokens is 420
        pairs of 1560 x 1560 logits (3.8 GiB fp32). On an H100 (30 blocks, motion block 14,
        bf16) all pairs at once peaked at 35.6 GiB and 1 GiB chunks (4) at 33.2 GiB, in the
        same time (ditflow 34.1 s both): it fits at once at this shape, but chunking costs
        nothing measurable and keeps the AMF's share bounded for longer videos (it grows with
        frames^2), so it stays on by default (--amf-chunk-mib).
        """
        qg, kg = self.pack(q), self.pack(k)
        ql, kl = qg.detach().requires_grad_(True), kg.detach().requires_grad_(True)
        total = torch.zeros((), device=ql.device)
        with self.precision():
            for chunk in self.chunks:
                loss = torch.zeros((), device=ql.device)
                for si in chunk:
                    d = self.soft_disp(ql, kl, self.segments[si])
                    loss = loss + (coefs[si] * (d - refs[si]).square().sum(-1)).sum()
                loss = 0.5 * loss
                loss.backward()
                total += loss.detach()
        wrts = wrt if isinstance(wrt, tuple) else (wrt,)
        grads = torch.autograd.grad((qg, kg), wrts, (ql.grad, kl.grad))
        return total, grads if isinstance(wrt, tuple) else grads[0]


# ----------------------------------------------------------------------------------------------
# The sampler
# ----------------------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    def __init__(self, a):
        self.a = a
        self.device = torch.device(a.device)
        self.dtype = DTYPES[a.dtype]
        with torch.device(self.device):  # random init straight on the device (fast for 1.3B)
            wan = tiny_wan() if a.tiny else wan13_dims(a.layers)
        # The model dtype, with diffusers' fp32 modules kept in fp32, exactly as export_wan.py
        # casts the bundle's weights.
        wan = to_dtype(wan, self.dtype)
        cfg = wan.config
        self.layers = cfg.num_layers
        self.motion_block = a.motion_block if a.motion_block >= 0 else min(14, self.layers - 1)
        graph = WanGraph(wan, "denoiser", self.motion_block).to(self.device).eval()
        graph.requires_grad_(False)
        self.graph = graph
        self.heads, self.head_dim = cfg.num_attention_heads, cfg.attention_head_dim
        self.channels, self.text_dim = cfg.in_channels, cfg.text_dim
        pt, ph, pw = cfg.patch_size
        if a.frames % pt or a.height % ph or a.width % pw:
            raise SystemExit(f"latent {a.frames}x{a.height}x{a.width} does not divide into patches {cfg.patch_size}")
        self.grid = (a.frames // pt, a.height // ph, a.width // pw)
        self.shape = (1, self.channels, a.frames, a.height, a.width)
        cos, sin = rope_tables_np(*self.grid, rope_axes_dim(self.head_dim), 10000.0)
        # fp32 tables, as the bundles' graphs take them (WanGraph rotates in fp32 and casts back).
        self.rope_dtype = torch.float32 if self.rope_casts_back() else self.dtype
        self.cos = torch.from_numpy(cos).to(self.device, self.rope_dtype)
        self.sin = torch.from_numpy(sin).to(self.device, self.rope_dtype)
        g = torch.Generator(self.device).manual_seed(a.seed + 1)
        self.reference = 0.5 * torch.randn(self.shape, generator=g, device=self.device)
        text = torch.randn(2, a.text_len, self.text_dim, generator=g, device=self.device).to(self.dtype)
        self.pos_text, self.neg_text = text[0:1], text[1:2]
        self.cfg_text = text  # [positive; negative], as mod.rs's cfg_text
        # The reference AMF uses the empty prompt; the negative embedding stands in for it.
        self.empty_text = self.neg_text
        self.amf = {}
        F_, h, w = self.grid
        common = dict(frames=F_, grid_h=h, grid_w=w, heads=self.heads, head_dim=self.head_dim,
                      tau=a.tau, chunk_bytes=int(a.amf_chunk_mib * 2 ** 20), device=self.device,
                      matmul=a.amf_matmul, model_dtype=self.dtype)
        if "ditflow" in a.modes:
            self.amf["ditflow"] = Amf(moving_threshold=DITFLOW_MOVING_THRESHOLD, **common)
        if "fastvmt" in a.modes:
            local = a.amf_mode == "local"
            self.amf["fastvmt"] = Amf(
                span=(a.temporal_window or None) if local else None,
                radius=a.spatial_radius if local else None,
                pair_weights=FASTVMT_PAIR_WEIGHTS,
                moving_threshold=a.motion_mask if a.motion_mask > 0 else None, **common)

    @torch.no_grad()
    def rope_casts_back(self):
        """Whether WanGraph's RoPE returns Q/K in the model dtype when given fp32 tables (an older
        export_wan.py let them promote to fp32, which SDPA refuses beside a bf16 V: then the
        tables go in the model dtype)."""
        blk = self.graph.wan.blocks[0]
        h = torch.zeros(1, 1, self.heads * self.head_dim, device=self.device, dtype=self.dtype)
        mods = (blk.scale_shift_table + torch.zeros(1, 6, h.shape[-1], device=self.device)).chunk(6, dim=1)
        tab = torch.zeros(1, self.head_dim // 2, device=self.device)
        q, _, _ = self.graph.self_qk(blk, h, mods, tab, tab)
        return q.dtype == self.dtype

    def tvec(self, t, n=1):
        return torch.full((n,), float(t), device=self.device, dtype=torch.float32)

    @torch.no_grad()
    def velocity(self, x, t):
        a = self.a
        if abs(a.cfg - 1.0) > 1e-6:
            xx = x.to(self.dtype).expand(2, -1, -1, -1, -1)
            v = self.graph.forward_all(xx, self.tvec(t, 2), self.cfg_text, self.cos, self.sin).float()
            vc, vu = v[0:1], v[1:2]
            return vu + a.cfg * (vc - vu)
        return self.graph.forward_all(x.to(self.dtype), self.tvec(t), self.pos_text, self.cos, self.sin).float()

    def real_gradient(self, amf, x, t, refs, coefs, st):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            q, k = self.graph.qk(xg.to(self.dtype), self.tvec(t), self.pos_text, self.cos, self.sin)
            st["real_forward"] += 1
            loss, dx = amf.loss_and_grad(q, k, refs, coefs, xg)
        st["real_backward"] += 1
        return loss, dx

    def optimise(self, mode, x, step, guided, t, ref_noise, inner, st):
        """guidance.rs Guide::optimise on x (fp32, in place). False when guidance stopped."""
        a, amf = self.a, self.amf[mode]
        decay = step / (guided - 1) if guided > 1 else 0.0
        lr = a.lr * (1.0 - (1.0 - a.lr_end_ratio) * decay)
        rt = min(max(a.reference_noise * t, 0.0), 1.0)
        with torch.no_grad():
            x_ref = (1.0 - rt) * self.reference + rt * ref_noise
            q, k = self.graph.qk(x_ref.to(self.dtype), self.tvec(rt), self.empty_text, self.cos, self.sin)
            st["real_forward"] += 1
            refs, coefs = amf.reference(q, k)
            del q, k
        snapshot = x.clone()
        opt = torch.optim.AdamW([x], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=a.weight_decay)
        base = max(1, a.reuse_interval)
        cached = None
        for j in range(inner):
            if cached is None or mode == "ditflow" or j % base == 0:
                loss, dx = self.real_gradient(amf, x, t, refs, coefs, st)
                loss = loss.item()
                if not math.isfinite(loss) or not bool(torch.isfinite(dx).all()):
                    st["nonfinite"] = f"loss or gradient at guided step {step}, inner step {j}"
                    x.copy_(snapshot)
                    return False
                st["first_loss"] = loss if st["first_loss"] is None else st["first_loss"]
                st["final_loss"] = loss
                cached = dx
            else:
                st["cached_steps"] += 1
            x.grad = cached
            opt.step()
            if not bool(torch.isfinite(x).all()):
                st["nonfinite"] = f"latent at guided step {step}, inner step {j}"
                x.copy_(snapshot)
                return False
        x.grad = None
        return True

    def sample(self, mode, steps, inner, guided=None):
        """mod.rs sample() with denoise = 1. guided: override of the guided-step count (warm-up)."""
        a, dev = self.a, self.device
        st = dict(denoiser_passes=0, real_forward=0, real_backward=0, cached_steps=0, guided_steps=0,
                  inner_steps=inner, nonfinite=None, first_loss=None, final_loss=None,
                  guidance_s=0.0, denoise_s=0.0)
        sync(dev)
        t_start = time.perf_counter()
        g = torch.Generator(dev).manual_seed(a.seed)
        x = torch.randn(self.shape, generator=g, device=dev)
        # Fixed noise for the reference AMF, drawn once so every guided step sees the same one.
        ref_noise = torch.randn(self.shape, generator=g, device=dev)
        sig = sigmas(steps, a.shift)
        if guided is None:
            guided = guided_step_count(a.guided_fraction, steps) if mode != "none" else 0
        st["guided_steps"] = guided
        stopped = False
        for i in range(steps):
            t, t_next = float(sig[i]), float(sig[i + 1])
            if i < guided and not stopped:
                t0 = time.perf_counter()
                stopped = not self.optimise(mode, x, i, guided, t, ref_noise, inner, st)
                sync(dev)
                st["guidance_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            v = self.velocity(x, t)
            st["denoiser_passes"] += 1
            with torch.no_grad():
                x.add_(v, alpha=float(np.float32(t_next) - np.float32(t)))
            del v
            sync(dev)
            st["denoise_s"] += time.perf_counter() - t0
        sync(dev)
        st["wall_s"] = time.perf_counter() - t_start
        st["latent_finite"] = bool(torch.isfinite(x).all())
        return st


# ----------------------------------------------------------------------------------------------
# AMF self-check against a naive per-query loop written from the definition (float64)
# ----------------------------------------------------------------------------------------------
def naive_amf(q, k, h, w, tau, pairs, radius):
    """q, k [H, F, S, d]. Returns {pair: (soft [S,2] tensor, argmax [S,2] list)}."""
    H, _, S, d = q.shape
    out = {}
    for (i, j) in pairs:
        soft, arg = [], []
        for p in range(S):
            py, px = divmod(p, w)
            if radius is None:
                r0, c0, wh, ww = 0, 0, h, w
            else:
                wh, ww = min(2 * radius + 1, h), min(2 * radius + 1, w)
                r0 = min(max(py - radius, 0), h - wh)
                c0 = min(max(px - radius, 0), w - ww)
            keys = [(y, xx) for y in range(r0, r0 + wh) for xx in range(c0, c0 + ww)]
            lg = torch.stack([sum(torch.dot(q[hh, i, p], k[hh, j, y * w + xx]) for hh in range(H))
                              * (tau / math.sqrt(d) / H) for (y, xx) in keys])
            a = torch.softmax(lg, 0)
            ey = sum(a[n] * keys[n][0] for n in range(len(keys)))
            ex = sum(a[n] * keys[n][1] for n in range(len(keys)))
            soft.append(torch.stack([ey - py, ex - px]))
            best = max(range(len(keys)), key=lambda n: (float(lg[n].detach()), -n))  # first max in raster order
            arg.append((keys[best][0] - py, keys[best][1] - px))
        out[(i, j)] = (torch.stack(soft), arg)
    return out


def naive_loss(soft, ref, pairs, pair_weights, threshold):
    offs = [abs(j - i) for (i, j) in pairs]
    lo, hi = min(offs), max(offs)
    num, den = 0.0, 0.0
    for (i, j) in pairs:
        if pair_weights is None:
            wp = 1.0
        else:
            wp = pair_weights[0] if hi == lo else \
                pair_weights[0] + (pair_weights[1] - pair_weights[0]) * (abs(j - i) - lo) / (hi - lo)
        for p, r in enumerate(ref[(i, j)]):
            if threshold is not None and math.hypot(*r) <= threshold:
                continue
            err = soft[(i, j)][p] - torch.tensor(r, dtype=soft[(i, j)].dtype)
            num = num + wp * (err ** 2).sum()
            den += wp
    return num / (2 * den) if den > 0 else torch.zeros((), dtype=torch.float64)


def self_check():
    """The vectorised AMF (fp32, chunked) vs the naive float64 loop: soft-argmax, argmax,
    loss and dL/dQ, dL/dK; plus a hand-made shift where the answer is known."""
    torch.manual_seed(0)
    worst = {}

    def note(name, v):
        worst[name] = max(worst.get(name, 0.0), v)

    def rel(a, b):
        return float((a - b).norm() / b.norm().clamp_min(1e-30))

    cases = [  # frames, h, w, span, radius, pair weights, threshold
        (2, 3, 4, None, None, None, 0.5),                  # ditflow
        (2, 3, 4, 4, 1, FASTVMT_PAIR_WEIGHTS, 0.5),        # fastvmt local, one pair
        (3, 3, 4, None, None, None, 0.5),                  # ditflow, 6 pairs
        (3, 3, 4, 3, 1, FASTVMT_PAIR_WEIGHTS, None),       # forward pairs, weights 1, 0.8, no mask
        (3, 3, 4, None, 1, FASTVMT_PAIR_WEIGHTS, 0.5),     # all pairs with a key window
        (3, 4, 5, 3, 1, FASTVMT_PAIR_WEIGHTS, 0.5),
    ]
    H, d, tau = 2, 8, 2.0
    for (F_, h, w, span, radius, pw, th) in cases:
        S = h * w
        q, k, qr, kr = (torch.randn(H, F_, S, d, dtype=torch.float64) * 2 for _ in range(4))
        for chunk_bytes in (1, 1 << 30):  # one pair per chunk, and everything in one chunk
            amf = Amf(F_, h, w, H, d, tau, span=span, radius=radius, pair_weights=pw,
                      moving_threshold=th, chunk_bytes=chunk_bytes)
            pairs = amf.pairs
            nv = naive_amf(q, k, h, w, tau, pairs, radius)
            nref = naive_amf(qr, kr, h, w, tau, pairs, radius)
            q32, k32 = (t.float().reshape(1, H, F_ * S, d) for t in (q, k))
            qc, kc = amf.pack(q32), amf.pack(k32)
            vsoft = torch.cat([amf.soft_disp(qc, kc, s) for s in amf.segments]).double()
            nsoft = torch.stack([nv[p][0] for p in pairs]).detach()
            note("soft-argmax max abs err", float((vsoft - nsoft).abs().max()))
            refs, coefs = amf.reference(*(t.float().reshape(1, H, F_ * S, d) for t in (qr, kr)))
            vref = torch.cat(refs).tolist()
            nlist = [list(map(list, nref[p][1])) for p in pairs]
            nflat = [r for rows in nlist for r in rows]
            vflat = [r for seg in vref for r in seg]
            note("argmax mismatches", float(sum(a != b for a, b in zip(vflat, nflat))))
            ref_map = {p: nref[p][1] for p in pairs}
            qn, kn = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
            nsoft_g = naive_amf(qn, kn, h, w, tau, pairs, radius)
            nl = naive_loss({p: nsoft_g[p][0] for p in pairs}, ref_map, pairs, pw, th)
            ndq, ndk = torch.autograd.grad(nl, (qn, kn))
            qv = q32.clone().requires_grad_(True)
            kv = k32.clone().requires_grad_(True)
            # wrt = (Q, K): the VJP "through the model" is the identity here.
            loss, (vdq, vdk) = amf.loss_and_grad(qv, kv, refs, coefs, (qv, kv))
            nl = float(nl.detach())
            note("loss rel err", abs(float(loss) - nl) / max(abs(nl), 1e-30))
            note("dQ rel err", rel(vdq.double().reshape(H, F_, S, d), ndq))
            note("dK rel err", rel(vdk.double().reshape(H, F_, S, d), ndk))

    # Hand-made: frame 1 is frame 0 moved right by one column (one-hot features, sharp softmax).
    # Interior queries read (0, +1); the last column has no match, so all its logits tie:
    # soft-argmax = window centroid - query, argmax = the window's first key in raster order.
    h, w = 3, 4
    S = h * w
    q = torch.zeros(1, 2, S, S)
    k = torch.zeros(1, 2, S, S)
    for p in range(S):
        q[0, 0, p, p] = 1.0
        y, x = divmod(p, w)
        if x + 1 < w:
            k[0, 1, y * w + x + 1, p] = 1.0
    tau = 60.0 * math.sqrt(S)
    for radius in (None, 1):
        amf = Amf(2, h, w, 1, S, tau, span=2, radius=radius)
        qc, kc = amf.pack(q.reshape(1, 1, 2 * S, S)), amf.pack(k.reshape(1, 1, 2 * S, S))
        soft, arg = amf.soft_disp(qc, kc, amf.segments[0])[0], amf.argmax_disp(qc, kc, amf.segments[0])[0]
        for p in range(S):
            y, x = divmod(p, w)
            if x + 1 < w:
                es, ea = (0.0, 1.0), (0.0, 1.0)
            elif radius is None:  # all 12 keys: centroid (1, 1.5), first key (0, 0)
                es, ea = (1.0 - y, 1.5 - x), (0.0 - y, 0.0 - x)
            else:  # window rows 0..2, cols 1..3 (shifted inside the frame): centroid (1, 2), first (0, 1)
                es, ea = (1.0 - y, 2.0 - x), (0.0 - y, 1.0 - x)
            note("hand case soft err", float((soft[p] - torch.tensor(es)).abs().max()))
            note("hand case argmax err", float((arg[p] - torch.tensor(ea)).abs().max()))
    limits = {"soft-argmax max abs err": 1e-4, "argmax mismatches": 0, "loss rel err": 1e-4,
              "dQ rel err": 1e-4, "dK rel err": 1e-4, "hand case soft err": 1e-4, "hand case argmax err": 0}
    ok = True
    for name, v in worst.items():
        good = v <= limits[name]
        ok &= good
        print(f"self-check {name:26s} {v:.3g} (limit {limits[name]:g}) {'ok' if good else 'FAIL'}")
    print("self-check", "passed" if ok else "FAILED")
    return ok


# ----------------------------------------------------------------------------------------------
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # None defaults are explained in the help text
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter)
    ap.add_argument("--modes", default="none,ditflow,fastvmt", help="comma list of none, ditflow, fastvmt")
    ap.add_argument("--tiny", action="store_true",
                    help="diffusers' tiny random Wan config (export_wan.tiny_wan), small shapes")
    ap.add_argument("--layers", type=int, default=30, help="blocks of the 1.3B-dims model (ignored with --tiny)")
    ap.add_argument("--motion-block", type=int, default=-1,
                    help="block whose Q/K give the AMF; -1: 14 (FastVMT's for Wan2.1-1.3B), at most the last block")
    ap.add_argument("--frames", type=int, default=None, help="latent frames (default 21; tiny 4)")
    ap.add_argument("--height", type=int, default=None, help="latent height (default 60; tiny 8)")
    ap.add_argument("--width", type=int, default=None, help="latent width (default 104; tiny 12)")
    ap.add_argument("--text-len", type=int, default=None, help="text tokens (default 512; tiny 8)")
    ap.add_argument("--steps", type=int, default=10, help="denoising steps")
    ap.add_argument("--guided-fraction", type=float, default=0.2, help="fraction of the steps (the first) guided")
    ap.add_argument("--inner-steps", type=int, default=10, help="AdamW steps on the latent per guided step")
    ap.add_argument("--reuse-interval", type=int, default=3,
                    help="fastvmt: a real gradient on inner steps j %% interval == 0")
    ap.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance scale (node default)")
    ap.add_argument("--shift", type=float, default=3.0,
                    help="sigma shift (export_wan.py's Wan bundle manifest; timing does not depend on it)")
    ap.add_argument("--lr", type=float, default=0.015, help="AdamW lr at the first guided step (manifest guidance_lr)")
    ap.add_argument("--lr-end-ratio", type=float, default=0.7, help="lr at the last guided step / lr")
    ap.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decoupled weight decay")
    ap.add_argument("--tau", type=float, default=2.0, help="AMF temperature (manifest amf_temperature)")
    ap.add_argument("--reference-noise", type=float, default=0.5, help="reference AMF read at this fraction of t")
    ap.add_argument("--motion-mask", type=float, default=0.5, help="fastvmt moving threshold in tokens; 0 = none")
    ap.add_argument("--amf-mode", choices=("local", "dense"), default="local", help="fastvmt's AMF")
    ap.add_argument("--temporal-window", type=int, default=4,
                    help="fastvmt local: pairs 1 <= j-i < window; 0 = all pairs")
    ap.add_argument("--spatial-radius", type=int, default=None,
                    help="fastvmt local key-window radius (default 10; tiny 1)")
    ap.add_argument("--amf-matmul", choices=("tf32", "fp32", "model"), default="tf32",
                    help="AMF logits GEMMs: fp32 operands on TF32 cores (exact for bf16 Q/K), plain fp32, "
                         "or the model dtype")
    ap.add_argument("--amf-chunk-mib", type=float, default=1024.0,
                    help="fp32 softmax kept per AMF chunk before its backward")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="bf16", help="model dtype")
    ap.add_argument("--device", default="cuda", help="torch device")
    ap.add_argument("--seed", type=int, default=0, help="noise seed (reference latent and text: seed + 1)")
    ap.add_argument("--warmup-inner", type=int, default=2, help="inner steps of the untimed warm-up (1 step)")
    ap.add_argument("--out", default=None, help="JSON rows")
    ap.add_argument("--self-check", action="store_true", help="check the AMF against a naive loop and exit")
    a = ap.parse_args(argv)
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for m in a.modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r} (choose from {', '.join(MODES)})")
    tiny_defaults = dict(frames=4, height=8, width=12, text_len=8, spatial_radius=1)
    full_defaults = dict(frames=21, height=60, width=104, text_len=512, spatial_radius=10)
    for key, v in (tiny_defaults if a.tiny else full_defaults).items():
        if getattr(a, key) is None:
            setattr(a, key, v)
    if a.temporal_window == 1:
        ap.error("--temporal-window 1 leaves no frame pairs: use 0 (all pairs) or at least 2")
    if a.spatial_radius < 1:
        ap.error("--spatial-radius must be at least 1")
    return a


def environment(device):
    import diffusers
    env = dict(torch=torch.__version__, diffusers=diffusers.__version__, python=platform.python_version(),
               device_name=platform.processor() or platform.machine())
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def main(argv=None):
    a = parse_args(argv)
    if a.self_check:
        sys.exit(0 if self_check() else 1)
    set_attention_impl("sdpa")
    device = torch.device(a.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    a.device = str(device)
    t0 = time.perf_counter()
    bench = Bench(a)
    env = environment(device)
    settings = dict(layers=bench.layers, motion_block=bench.motion_block, tiny=a.tiny,
                    latent=[a.frames, a.height, a.width], grid=list(bench.grid),
                    tokens=int(np.prod(bench.grid)), text_len=a.text_len, steps=a.steps,
                    guided_fraction=a.guided_fraction, inner_steps=a.inner_steps, reuse_interval=a.reuse_interval,
                    cfg=a.cfg, shift=a.shift, lr=a.lr, lr_end_ratio=a.lr_end_ratio, weight_decay=a.weight_decay,
                    tau=a.tau, reference_noise=a.reference_noise, dtype=a.dtype, seed=a.seed,
                    amf_chunk_mib=a.amf_chunk_mib, amf_matmul=a.amf_matmul, rope_tables=str(bench.rope_dtype),
                    attention="F.scaled_dot_product_attention")
    print(f"torch {env['torch']}, diffusers {env['diffusers']}, {env['device_name']}; model built in "
          f"{time.perf_counter() - t0:.1f} s")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    rows = []
    for mode in a.modes:
        amf = bench.amf.get(mode)
        row = dict(mode=mode, status="ok", **settings, **env)
        if amf is not None:
            row.update(amf_pairs=len(amf.pairs), amf_chunks=len(amf.chunks),
                       amf_window=None if amf.outside is None else amf.radius,
                       amf_moving_threshold=amf.moving_threshold,
                       amf_pair_weights="uniform" if mode == "ditflow" else list(FASTVMT_PAIR_WEIGHTS))
            if mode == "fastvmt":
                row.update(amf_mode=a.amf_mode, temporal_window=a.temporal_window, spatial_radius=a.spatial_radius)
            print(f"{mode}: AMF {len(amf.pairs)} pairs in {len(amf.chunks)} chunk(s), key window "
                  f"{'all keys' if amf.outside is None else f'radius {amf.radius} (full logits, masked)'}, "
                  f"moving threshold {amf.moving_threshold}")
        try:
            # Untimed warm-up at the same shape: initialises cuBLAS / SDPA kernels and the allocator.
            bench.sample(mode, steps=1, inner=a.warmup_inner, guided=0 if mode == "none" else 1)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            st = bench.sample(mode, steps=a.steps, inner=a.inner_steps)
            row.update(st)
            row["nonfinite"] = st["nonfinite"] is not None or not st["latent_finite"]
            row["nonfinite_detail"] = st["nonfinite"]
            row["peak_mem_gib"] = (torch.cuda.max_memory_allocated(device) / 2 ** 30
                                   if device.type == "cuda" else None)
        except torch.cuda.OutOfMemoryError as e:
            row.update(status="failed", error=f"OutOfMemoryError: {str(e).splitlines()[0]}")
            if device.type == "cuda":
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        print(f"{mode}: " + (f"{row['wall_s']:.2f} s" if row["status"] == "ok" else row["error"]))
    hdr = ("mode", "status", "wall_s", "guidance_s", "denoise_s", "denoiser_passes", "real_forward",
           "real_backward", "cached_steps", "peak_mem_gib", "nonfinite")
    print("\n" + " | ".join(hdr))
    for r in rows:
        cells = []
        for key in hdr:
            v = r.get(key)
            cells.append(f"{v:.2f}" if isinstance(v, float) else str(v))
        print(" | ".join(cells))
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
