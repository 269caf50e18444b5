// Attention motion flow (AMF) kernels. Compiled at run time with NVRTC (no headers needed).
// Definition: see kernels/README.md. Layout: Q, K are [H, F, S, d] (T = f32 | f16 | bf16),
// gradients f32 in the same layout. Per call and pair chunk:
//   amf_windows          window start (r0, c0) per (pair, query row)
//   amf_logits_<T>       tiled Q.K^T over the union box of a query tile's windows; writes each
//                        query's window row of logits ([pairs, rows, wh*ww], f32)
//   amf_rows             per row (one warp): softmax stats, read-out, loss term, and in grad mode
//                        the score gradient s = scale * a * (g . (pos - E)) written in place
//   amf_dq_<T>           dQ[i] = sum_{pairs (i,j)} S . K_j      (tile of queries x 128 features)
//   amf_dk_<T>           dK[j] = sum_{pairs (i,j)} S^T . Q_i    (tile of keys x 128 features)
// The forward never stores anything of size S x S; the backward keeps the windowed score
// matrix (P x S x wh*ww f32) because the head-averaged logit couples all H*d features.

typedef unsigned short u16;

struct LdF32 {
    typedef float T;
    static __device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
};
struct LdF16 {
    typedef u16 T;
    static __device__ __forceinline__ float ld(const u16* p, long long i) {
        float f;
        u16 v = p[i];
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
        return f;
    }
};
struct LdBF16 {
    typedef u16 T;
    static __device__ __forceinline__ float ld(const u16* p, long long i) {
        return __uint_as_float(((unsigned)p[i]) << 16);
    }
};

__device__ __forceinline__ u16 f32_to_16(float v, int bf16) {
    u16 r;
    if (bf16) asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(v));
    else asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(v));
    return r;
}

#define TQ 32     // query slots per block (logits, dQ) / keys per block (dK)
#define NK 64     // keys per chunk (logits)
#define DK 32     // features per chunk (logits)
#define NB 32     // keys (dQ) / queries (dK) per chunk
#define DS 128    // features per block (dQ, dK)

extern "C" __global__ void amf_fill(float* p, long long n, float v) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long step = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += step) p[i] = v;
}

// f32 -> f16/bf16 (round to nearest even), for Q/K that arrive in f32 on the device (ONNX
// Runtime's outputs) when the tensor-core kernels should read them.
extern "C" __global__ void amf_cast16(const float* __restrict__ src, u16* __restrict__ dst, long long n,
                                      int bf16) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long step = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += step) dst[i] = f32_to_16(src[i], bf16);
}

// Lowest flat index of a NaN or infinity in v (first stays at its initial ~0 when none).
extern "C" __global__ void amf_first_nonfinite(const float* __restrict__ v, long long n,
                                               unsigned long long* first) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long step = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += step)
        if ((__float_as_uint(v[i]) & 0x7f800000u) == 0x7f800000u) atomicMin(first, (unsigned long long)i);
}

__device__ __forceinline__ int clampi(int x, int lo, int hi) { return x < lo ? lo : (x > hi ? hi : x); }

// mode 0: full window (start 0,0); 1: centred on the query; 2: centred on the rounded coarse
// soft-argmax of the query's tile (centres: [npairs, ntiles, 2] absolute positions).
extern "C" __global__ void amf_windows(int mode, int npairs, int h, int w, int wh, int ww, int radius,
                                       int th, int tw, int ntx, const float* centres, int2* win) {
    long long n = (long long)npairs * h * w;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n) return;
    int S = h * w;
    int pair = (int)(idx / S), t = (int)(idx % S);
    int py = t / w, px = t % w;
    int2 st = make_int2(0, 0);
    if (mode != 0) {
        int cy = py, cx = px;
        if (mode == 2) {
            int ntiles = ((h + th - 1) / th) * ntx;
            int tile = (py / th) * ntx + px / tw;
            const float* e = centres + ((long long)pair * ntiles + tile) * 2;
            cy = clampi((int)floorf(e[0] + 0.5f), 0, h - 1);
            cx = clampi((int)floorf(e[1] + 0.5f), 0, w - 1);
        }
        st.x = clampi(cy - radius, 0, h - wh);
        st.y = clampi(cx - radius, 0, w - ww);
    }
    win[idx] = st;
}

// Union box of the windows of this block's query slots.
__device__ __forceinline__ void union_box(const int* s_r0, const int* s_c0, const int* s_tok, int n,
                                          int wh, int ww, int* box) {
    int y0 = 1 << 30, y1 = -1, x0 = 1 << 30, x1 = -1;
    for (int a = 0; a < n; a++) {
        if (s_tok[a] < 0) continue;
        y0 = min(y0, s_r0[a]); y1 = max(y1, s_r0[a] + wh);
        x0 = min(x0, s_c0[a]); x1 = max(x1, s_c0[a] + ww);
    }
    if (y1 < 0) { y0 = 0; y1 = 0; x0 = 0; x1 = 0; }
    box[0] = y0; box[1] = y1 - y0; box[2] = x0; box[3] = x1 - x0;
}

// grid (ceil(nslots/TQ), npairs), block 128. Slot -> (query token, row). W = wh*ww.
template <typename L>
__device__ void logits_impl(const typename L::T* __restrict__ q, const typename L::T* __restrict__ k,
                            const int2* __restrict__ pairs, int H, int F, int S, int d, int w,
                            const int* __restrict__ slot_tok, const int* __restrict__ slot_row,
                            int nslots, int nrows, const int2* __restrict__ win, int wh, int ww,
                            float scale, float* __restrict__ logits) {
    __shared__ __align__(16) float Qs[DK][TQ + 4];
    __shared__ __align__(16) float Ks[DK][NK + 4];
    __shared__ int s_tok[TQ], s_row[TQ], s_r0[TQ], s_c0[TQ], box[4];
    const int pair = blockIdx.y;
    const int fi = pairs[pair].x, fj = pairs[pair].y;
    const int tid = threadIdx.x;
    const long long W = (long long)wh * ww;
    if (tid < TQ) {
        int sl = blockIdx.x * TQ + tid;
        int tok = -1, row = 0, r0 = 0, c0 = 0;
        if (sl < nslots) {
            tok = slot_tok[sl];
            row = slot_row[sl];
            int2 st = win[(long long)pair * nrows + row];
            r0 = st.x; c0 = st.y;
        }
        s_tok[tid] = tok; s_row[tid] = row; s_r0[tid] = r0; s_c0[tid] = c0;
    }
    __syncthreads();
    if (tid == 0) union_box(s_r0, s_c0, s_tok, TQ, wh, ww, box);
    __syncthreads();
    const int by0 = box[0], bh = box[1], bx0 = box[2], bw = box[3];
    const int nkeys = bh * bw;
    const int tq = tid >> 4, tk = tid & 15;
    for (int kc = 0; kc < nkeys; kc += NK) {
        float acc[4][4];
#pragma unroll
        for (int a = 0; a < 4; a++)
#pragma unroll
            for (int b = 0; b < 4; b++) acc[a][b] = 0.f;
        for (int hh = 0; hh < H; hh++) {
            const long long qbase = ((long long)hh * F + fi) * S;
            const long long kbase = ((long long)hh * F + fj) * S;
            for (int cb = 0; cb < d; cb += DK) {
                for (int e = tid; e < TQ * DK; e += blockDim.x) {
                    int c = e % DK, sq = e / DK;
                    int tok = s_tok[sq];
                    float v = 0.f;
                    if (tok >= 0 && cb + c < d) v = L::ld(q, (qbase + tok) * d + cb + c);
                    Qs[c][sq] = v;
                }
                for (int e = tid; e < NK * DK; e += blockDim.x) {
                    int c = e % DK, kk = e / DK;
                    int key = kc + kk;
                    float v = 0.f;
                    if (key < nkeys && cb + c < d) {
                        int kt = (by0 + key / bw) * w + bx0 + key % bw;
                        v = L::ld(k, (kbase + kt) * d + cb + c);
                    }
                    Ks[c][kk] = v;
                }
                __syncthreads();
                const int cn = min(DK, d - cb);
#pragma unroll 4
                for (int c = 0; c < cn; c++) {
                    float4 av = *reinterpret_cast<const float4*>(&Qs[c][tq * 4]);
                    float4 bv = *reinterpret_cast<const float4*>(&Ks[c][tk * 4]);
                    float aa[4] = {av.x, av.y, av.z, av.w};
                    float bb[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
                    for (int a = 0; a < 4; a++)
#pragma unroll
                        for (int b = 0; b < 4; b++) acc[a][b] = fmaf(aa[a], bb[b], acc[a][b]);
                }
                __syncthreads();
            }
        }
#pragma unroll
        for (int a = 0; a < 4; a++) {
            int sq = tq * 4 + a;
            if (s_tok[sq] < 0) continue;
            int r0 = s_r0[sq], c0 = s_c0[sq];
            float* out = logits + ((long long)pair * nrows + s_row[sq]) * W;
#pragma unroll
            for (int b = 0; b < 4; b++) {
                int key = kc + tk * 4 + b;
                if (key >= nkeys) continue;
                int ky = by0 + key / bw, kx = bx0 + key % bw;
                if (ky >= r0 && ky < r0 + wh && kx >= c0 && kx < c0 + ww)
                    out[(ky - r0) * ww + (kx - c0)] = acc[a][b] * scale;
            }
        }
    }
}

#define LOGITS_ENTRY(SUF, L)                                                                       \
    extern "C" __global__ void __launch_bounds__(128) amf_logits_##SUF(                            \
        const L::T* q, const L::T* k, const int2* pairs, int H, int F, int S, int d, int w,        \
        const int* slot_tok, const int* slot_row, int nslots, int nrows, const int2* win, int wh,  \
        int ww, float scale, float* logits) {                                                      \
        logits_impl<L>(q, k, pairs, H, F, S, d, w, slot_tok, slot_row, nslots, nrows, win, wh, ww, \
                       scale, logits);                                                             \
    }
LOGITS_ENTRY(f32, LdF32)
LOGITS_ENTRY(f16, LdF16)
LOGITS_ENTRY(bf16, LdBF16)

// One warp per row (pair, row). mode 0: soft-argmax disp; 1: argmax disp; 2: absolute expected
// position; 3: soft disp + loss term + score gradient (coef = w*m/sum(w*m)), in place (f32), or
// when s16 is not null into s16 as f16/bf16 times gscale (tensor-core backward); a row with
// coef 0 gets loss 0 and a zero score gradient without reading its logits (and no read-out).
// Rows of out/ref/coef/loss_rows are global: (p0 + pair) * nrows + row.
extern "C" __global__ void amf_rows(float* __restrict__ logits, int npairs, int nrows, int wh, int ww,
                                    int w, const int2* __restrict__ win, const int* __restrict__ row_tok,
                                    int mode, int p0, const float* __restrict__ ref,
                                    const float* __restrict__ coef, float scale, float* __restrict__ out,
                                    float* __restrict__ loss_rows, u16* __restrict__ s16, float gscale,
                                    int bf16) {
    const int lane = threadIdx.x & 31;
    const long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= (long long)npairs * nrows) return;
    const int pair = (int)(r / nrows), rr = (int)(r % nrows);
    const int W = wh * ww;
    float* row = logits + r * W;
    if (mode == 3 && coef[(long long)(p0 + pair) * nrows + rr] == 0.0f) {
        // Outside the loss: no loss term and a zero score gradient; its logits may not have
        // been computed (amf_logits3 leaves such rows out), and its read-out is not needed.
        if (lane == 0) loss_rows[(long long)(p0 + pair) * nrows + rr] = 0.0f;
        for (int n = lane; n < W; n += 32) {
            if (s16) s16[r * W + n] = 0;
            else row[n] = 0.0f;
        }
        return;
    }
    const int2 st = win[r];
    const int tok = row_tok[rr];
    const float py = (float)(tok / w), px = (float)(tok % w);
    float m = __int_as_float(0xff800000);  // -inf
    int arg = 0x7fffffff;
    for (int n = lane; n < W; n += 32) {
        float v = row[n];
        if (v > m) { m = v; arg = n; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        int a2 = __shfl_xor_sync(0xffffffffu, arg, o);
        if (m2 > m || (m2 == m && a2 < arg)) { m = m2; arg = a2; }
    }
    // Window position (y, x) of element n = lane + 32 i, advanced without division.
    const int y_l = lane / ww, x_l = lane - (lane / ww) * ww;
    const int dy32 = 32 / ww, dx32 = 32 - (32 / ww) * ww;
    float s0 = 0.f, sy = 0.f, sx = 0.f;
    {
        int y = y_l, x = x_l;
        for (int n = lane; n < W; n += 32) {
            float e = expf(row[n] - m);
            s0 += e;
            sy += e * (float)(st.x + y);
            sx += e * (float)(st.y + x);
            x += dx32; y += dy32;
            if (x >= ww) { x -= ww; y++; }
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        s0 += __shfl_xor_sync(0xffffffffu, s0, o);
        sy += __shfl_xor_sync(0xffffffffu, sy, o);
        sx += __shfl_xor_sync(0xffffffffu, sx, o);
    }
    const float ey = sy / s0, ex = sx / s0;
    const long long g = (long long)(p0 + pair) * nrows + rr;
    float oy, ox;
    if (mode == 1) {
        oy = (float)(st.x + arg / ww) - py;
        ox = (float)(st.y + arg % ww) - px;
    } else if (mode == 2) {
        oy = ey; ox = ex;
    } else {
        oy = ey - py; ox = ex - px;
    }
    if (lane == 0) { out[g * 2] = oy; out[g * 2 + 1] = ox; }
    if (mode != 3) return;
    const float c = coef[g];
    const float dy = oy - ref[g * 2], dx = ox - ref[g * 2 + 1];
    const float gy = c * dy, gx = c * dx;
    if (lane == 0) loss_rows[g] = 0.5f * c * (dy * dy + dx * dx);
    const float inv = scale / s0;
    int y = y_l, x = x_l;
    for (int n = lane; n < W; n += 32) {
        float a = expf(row[n] - m) * inv;
        const float v = a * (gy * ((float)(st.x + y) - ey) + gx * ((float)(st.y + x) - ex));
        if (s16) s16[r * W + n] = f32_to_16(v * gscale, bf16);
        else row[n] = v;
        x += dx32; y += dy32;
        if (x >= ww) { x -= ww; y++; }
    }
}

// dQ[i, slots, feature slice] (+)= sum over pairs (i, j) of S[pair, q, window] . K_j.
// grid (ceil(S/TQ), ceil(H*d/DS), F), block 256. pair_off/pair_idx: CSR of chunk pairs by i.
template <typename L>
__device__ void dq_impl(const float* __restrict__ scores, const typename L::T* __restrict__ k,
                        const int2* __restrict__ pairs, const int* __restrict__ pair_off,
                        const int* __restrict__ pair_idx, int H, int F, int S, int d, int w,
                        const int* __restrict__ slot_tok, const int2* __restrict__ win, int wh, int ww,
                        int accumulate, float* __restrict__ dq) {
    __shared__ __align__(16) float Ss[NB][TQ + 4];
    __shared__ __align__(16) float Ks[NB][DS + 4];
    __shared__ int s_tok[TQ], s_r0[TQ], s_c0[TQ], box[4];
    const int fi = blockIdx.z;
    const int tid = threadIdx.x;
    const int D = H * d;
    const int f0 = blockIdx.y * DS;
    const long long W = (long long)wh * ww;
    if (tid < TQ) {
        int sl = blockIdx.x * TQ + tid;
        s_tok[tid] = sl < S ? slot_tok[sl] : -1;
    }
    __syncthreads();
    const int tq = tid >> 5, tf = tid & 31;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) acc[a][b] = 0.f;
    for (int pp = pair_off[fi]; pp < pair_off[fi + 1]; pp++) {
        const int pair = pair_idx[pp];
        const int fj = pairs[pair].y;
        __syncthreads();
        if (tid < TQ) {
            int tok = s_tok[tid];
            int2 st = tok >= 0 ? win[(long long)pair * S + tok] : make_int2(0, 0);
            s_r0[tid] = st.x; s_c0[tid] = st.y;
        }
        __syncthreads();
        if (tid == 0) union_box(s_r0, s_c0, s_tok, TQ, wh, ww, box);
        __syncthreads();
        const int by0 = box[0], bx0 = box[2], bw = box[3];
        const int nkeys = box[1] * bw;
        for (int kc = 0; kc < nkeys; kc += NB) {
            for (int e = tid; e < NB * TQ; e += blockDim.x) {
                int sq = e % TQ, kk = e / TQ;
                int key = kc + kk, tok = s_tok[sq];
                float v = 0.f;
                if (key < nkeys && tok >= 0) {
                    int ky = by0 + key / bw, kx = bx0 + key % bw;
                    int r0 = s_r0[sq], c0 = s_c0[sq];
                    if (ky >= r0 && ky < r0 + wh && kx >= c0 && kx < c0 + ww)
                        v = scores[((long long)pair * S + tok) * W + (ky - r0) * ww + (kx - c0)];
                }
                Ss[kk][sq] = v;
            }
            for (int e = tid; e < NB * DS; e += blockDim.x) {
                int f = e % DS, kk = e / DS;
                int key = kc + kk, fe = f0 + f;
                float v = 0.f;
                if (key < nkeys && fe < D) {
                    int kt = (by0 + key / bw) * w + bx0 + key % bw;
                    int hh = fe / d, c = fe % d;
                    v = L::ld(k, (((long long)hh * F + fj) * S + kt) * d + c);
                }
                Ks[kk][f] = v;
            }
            __syncthreads();
#pragma unroll 4
            for (int kk = 0; kk < NB; kk++) {
                float4 av = *reinterpret_cast<const float4*>(&Ss[kk][tq * 4]);
                float4 bv = *reinterpret_cast<const float4*>(&Ks[kk][tf * 4]);
                float aa[4] = {av.x, av.y, av.z, av.w};
                float bb[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
                for (int a = 0; a < 4; a++)
#pragma unroll
                    for (int b = 0; b < 4; b++) acc[a][b] = fmaf(aa[a], bb[b], acc[a][b]);
            }
            __syncthreads();
        }
    }
#pragma unroll
    for (int a = 0; a < 4; a++) {
        int tok = s_tok[tq * 4 + a];
        if (tok < 0) continue;
#pragma unroll
        for (int b = 0; b < 4; b++) {
            int fe = f0 + tf * 4 + b;
            if (fe >= D) continue;
            int hh = fe / d, c = fe % d;
            long long o = (((long long)hh * F + fi) * S + tok) * d + c;
            dq[o] = accumulate ? dq[o] + acc[a][b] : acc[a][b];
        }
    }
}

// dK[j, key tile, feature slice] (+)= sum over pairs (i, j) of S^T . Q_i over the queries whose
// windows meet the key tile. grid (ceil(S/TQ), ceil(H*d/DS), F), block 256.
template <typename L>
__device__ void dk_impl(const float* __restrict__ scores, const typename L::T* __restrict__ q,
                        const int2* __restrict__ pairs, const int* __restrict__ pair_off,
                        const int* __restrict__ pair_idx, int H, int F, int S, int d, int w,
                        const int* __restrict__ slot_tok, const int2* __restrict__ win, int wh, int ww,
                        int accumulate, float* __restrict__ dk) {
    __shared__ __align__(16) float Ss[NB][TQ + 4];
    __shared__ __align__(16) float Qs[NB][DS + 4];
    __shared__ int s_tok[TQ], qbox[4], kbox[4];
    const int fj = blockIdx.z;
    const int tid = threadIdx.x;
    const int D = H * d;
    const int f0 = blockIdx.y * DS;
    const long long W = (long long)wh * ww;
    if (tid < TQ) {
        int sl = blockIdx.x * TQ + tid;
        s_tok[tid] = sl < S ? slot_tok[sl] : -1;
    }
    __syncthreads();
    if (tid == 0) {
        int y0 = 1 << 30, y1 = -1, x0 = 1 << 30, x1 = -1;
        for (int a = 0; a < TQ; a++) {
            int t = s_tok[a];
            if (t < 0) continue;
            y0 = min(y0, t / w); y1 = max(y1, t / w);
            x0 = min(x0, t % w); x1 = max(x1, t % w);
        }
        kbox[0] = y0; kbox[1] = y1; kbox[2] = x0; kbox[3] = x1;
    }
    const int tk = tid >> 5, tf = tid & 31;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) acc[a][b] = 0.f;
    for (int pp = pair_off[fj]; pp < pair_off[fj + 1]; pp++) {
        const int pair = pair_idx[pp];
        const int fi = pairs[pair].x;
        __syncthreads();
        if (tid == 0) { qbox[0] = 1 << 30; qbox[1] = -1; qbox[2] = 1 << 30; qbox[3] = -1; }
        __syncthreads();
        // Bounding box of the queries whose window meets the key tile.
        {
            int y0 = 1 << 30, y1 = -1, x0 = 1 << 30, x1 = -1;
            for (int t = tid; t < S; t += blockDim.x) {
                int2 st = win[(long long)pair * S + t];
                if (st.x <= kbox[1] && st.x + wh > kbox[0] && st.y <= kbox[3] && st.y + ww > kbox[2]) {
                    int ty = t / w, tx = t % w;
                    y0 = min(y0, ty); y1 = max(y1, ty); x0 = min(x0, tx); x1 = max(x1, tx);
                }
            }
            if (y1 >= 0) {
                atomicMin(&qbox[0], y0); atomicMax(&qbox[1], y1);
                atomicMin(&qbox[2], x0); atomicMax(&qbox[3], x1);
            }
        }
        __syncthreads();
        if (qbox[1] < 0) continue;
        const int qy0 = qbox[0], qx0 = qbox[2], qw = qbox[3] - qbox[2] + 1;
        const int nq = (qbox[1] - qbox[0] + 1) * qw;
        for (int qc = 0; qc < nq; qc += NB) {
            for (int e = tid; e < NB * TQ; e += blockDim.x) {
                int sk = e % TQ, qq = e / TQ;
                int cand = qc + qq, key = s_tok[sk];
                float v = 0.f;
                if (cand < nq && key >= 0) {
                    int qt = (qy0 + cand / qw) * w + qx0 + cand % qw;
                    int2 st = win[(long long)pair * S + qt];
                    int ky = key / w, kx = key % w;
                    if (ky >= st.x && ky < st.x + wh && kx >= st.y && kx < st.y + ww)
                        v = scores[((long long)pair * S + qt) * W + (ky - st.x) * ww + (kx - st.y)];
                }
                Ss[qq][sk] = v;
            }
            for (int e = tid; e < NB * DS; e += blockDim.x) {
                int f = e % DS, qq = e / DS;
                int cand = qc + qq, fe = f0 + f;
                float v = 0.f;
                if (cand < nq && fe < D) {
                    int qt = (qy0 + cand / qw) * w + qx0 + cand % qw;
                    int hh = fe / d, c = fe % d;
                    v = L::ld(q, (((long long)hh * F + fi) * S + qt) * d + c);
                }
                Qs[qq][f] = v;
            }
            __syncthreads();
#pragma unroll 4
            for (int qq = 0; qq < NB; qq++) {
                float4 av = *reinterpret_cast<const float4*>(&Ss[qq][tk * 4]);
                float4 bv = *reinterpret_cast<const float4*>(&Qs[qq][tf * 4]);
                float aa[4] = {av.x, av.y, av.z, av.w};
                float bb[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
                for (int a = 0; a < 4; a++)
#pragma unroll
                    for (int b = 0; b < 4; b++) acc[a][b] = fmaf(aa[a], bb[b], acc[a][b]);
            }
            __syncthreads();
        }
    }
#pragma unroll
    for (int a = 0; a < 4; a++) {
        int key = s_tok[tk * 4 + a];
        if (key < 0) continue;
#pragma unroll
        for (int b = 0; b < 4; b++) {
            int fe = f0 + tf * 4 + b;
            if (fe >= D) continue;
            int hh = fe / d, c = fe % d;
            long long o = (((long long)hh * F + fj) * S + key) * d + c;
            dk[o] = accumulate ? dk[o] + acc[a][b] : acc[a][b];
        }
    }
}

#define GRAD_ENTRY(SUF, L)                                                                         \
    extern "C" __global__ void __launch_bounds__(256) amf_dq_##SUF(                                \
        const float* scores, const L::T* k, const int2* pairs, const int* pair_off,                \
        const int* pair_idx, int H, int F, int S, int d, int w, const int* slot_tok,               \
        const int2* win, int wh, int ww, int accumulate, float* dq) {                              \
        dq_impl<L>(scores, k, pairs, pair_off, pair_idx, H, F, S, d, w, slot_tok, win, wh, ww,     \
                   accumulate, dq);                                                                \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) amf_dk_##SUF(                                \
        const float* scores, const L::T* q, const int2* pairs, const int* pair_off,                \
        const int* pair_idx, int H, int F, int S, int d, int w, const int* slot_tok,               \
        const int2* win, int wh, int ww, int accumulate, float* dk) {                              \
        dk_impl<L>(scores, q, pairs, pair_off, pair_idx, H, F, S, d, w, slot_tok, win, wh, ww,     \
                   accumulate, dk);                                                                \
    }
GRAD_ENTRY(f32, LdF32)
GRAD_ENTRY(f16, LdF16)
GRAD_ENTRY(bf16, LdBF16)

// ---------------------------------------------------------------------------------------------
// Tensor-core variants for f16/bf16 inputs with head_dim % 64 == 0 (mma.sync m16n8k16, f32
// accumulation). The backward's score matrix is stored in the input's 16-bit type, multiplied
// by `gscale` (a power of two chosen on the host so f16 scores stay in range); the gradient
// kernels divide it out.

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

template <bool BF16>
__device__ __forceinline__ void mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    if (BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

__device__ __forceinline__ void ldsm_x2_trans(unsigned& r0, unsigned& r1, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];"
                 : "=r"(r0), "=r"(r1)
                 : "r"(smem_u32(p)));
}


#define TC_NK 128  // keys per chunk (logits)
#define TC_DC 64   // features per stage (logits)
#define TC_LD (TC_DC + 8)

// Logits on tensor cores: grid (ceil(nslots/32), npairs), block 128 (4 warps x 32 keys).
template <bool BF16, int NKT>
__device__ void logits_tc_impl(const u16* __restrict__ q, const u16* __restrict__ k,
                               const int2* __restrict__ pairs, int H, int F, int S, int d, int w,
                               const int* __restrict__ slot_tok, const int* __restrict__ slot_row,
                               int nslots, int nrows, const int2* __restrict__ win, int wh, int ww,
                               float scale, float* __restrict__ logits) {
    __shared__ __align__(16) u16 Qs[TQ][TC_LD];
    __shared__ __align__(16) u16 Ks[NKT][TC_LD];
    __shared__ int s_tok[TQ], s_row[TQ], s_r0[TQ], s_c0[TQ], box[4];
    __shared__ int k_tok[NKT];
    const int pair = blockIdx.y;
    const int fi = pairs[pair].x, fj = pairs[pair].y;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const long long W = (long long)wh * ww;
    if (tid < TQ) {
        int sl = blockIdx.x * TQ + tid;
        int tok = -1, row = 0, r0 = 0, c0 = 0;
        if (sl < nslots) {
            tok = slot_tok[sl];
            row = slot_row[sl];
            int2 st = win[(long long)pair * nrows + row];
            r0 = st.x; c0 = st.y;
        }
        s_tok[tid] = tok; s_row[tid] = row; s_r0[tid] = r0; s_c0[tid] = c0;
    }
    __syncthreads();
    if (tid == 0) union_box(s_r0, s_c0, s_tok, TQ, wh, ww, box);
    __syncthreads();
    const int by0 = box[0], bh = box[1], bx0 = box[2], bw = box[3];
    const int nkeys = bh * bw;
    const int nst = H * (d / TC_DC);  // stages (head, 64-feature chunk) per key chunk
    for (int kc = 0; kc < nkeys; kc += NKT) {
        __syncthreads();
        {
            int key = kc + tid;  // blockDim == NKT
            k_tok[tid] = key < nkeys ? (by0 + key / bw) * w + bx0 + key % bw : -1;
        }
        __syncthreads();
        float acc[2][4][4];
#pragma unroll
        for (int a = 0; a < 2; a++)
#pragma unroll
            for (int b = 0; b < 4; b++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[a][b][e] = 0.f;
        // Registers hold the next stage's tiles while the current one is multiplied.
        constexpr int QR = TQ * 8 / NKT;  // uint4 of the Q tile per thread
        uint4 qreg[QR], kreg[8];
        auto load_stage = [&](int st) {
            const int hh = st / (d / TC_DC), cb = (st % (d / TC_DC)) * TC_DC;
            const long long qbase = ((long long)hh * F + fi) * S;
            const long long kbase = ((long long)hh * F + fj) * S;
#pragma unroll
            for (int i = 0; i < QR; i++) {
                int u = tid + i * NKT, r = u >> 3, c8 = (u & 7) * 8;
                int tok = s_tok[r];
                qreg[i] = tok >= 0 ? *reinterpret_cast<const uint4*>(q + (qbase + tok) * d + cb + c8)
                                   : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int u = tid + i * NKT, r = u >> 3, c8 = (u & 7) * 8;
                int kt = k_tok[r];
                kreg[i] = kt >= 0 ? *reinterpret_cast<const uint4*>(k + (kbase + kt) * d + cb + c8)
                                  : make_uint4(0, 0, 0, 0);
            }
        };
        load_stage(0);
        for (int st = 0; st < nst; st++) {
            __syncthreads();
#pragma unroll
            for (int i = 0; i < QR; i++) {
                int u = tid + i * NKT;
                *reinterpret_cast<uint4*>(&Qs[u >> 3][(u & 7) * 8]) = qreg[i];
            }
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int u = tid + i * NKT;
                *reinterpret_cast<uint4*>(&Ks[u >> 3][(u & 7) * 8]) = kreg[i];
            }
            __syncthreads();
            if (st + 1 < nst) load_stage(st + 1);
#pragma unroll
            for (int ks = 0; ks < TC_DC / 16; ks++) {
                unsigned a[2][4];
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    a[mt][0] = *reinterpret_cast<const unsigned*>(&Qs[mt * 16 + g][ks * 16 + 2 * t4]);
                    a[mt][1] = *reinterpret_cast<const unsigned*>(&Qs[mt * 16 + g + 8][ks * 16 + 2 * t4]);
                    a[mt][2] = *reinterpret_cast<const unsigned*>(&Qs[mt * 16 + g][ks * 16 + 2 * t4 + 8]);
                    a[mt][3] = *reinterpret_cast<const unsigned*>(&Qs[mt * 16 + g + 8][ks * 16 + 2 * t4 + 8]);
                }
#pragma unroll
                for (int nt = 0; nt < 4; nt++) {
                    const int kr = warp * 32 + nt * 8 + g;
                    unsigned b0 = *reinterpret_cast<const unsigned*>(&Ks[kr][ks * 16 + 2 * t4]);
                    unsigned b1 = *reinterpret_cast<const unsigned*>(&Ks[kr][ks * 16 + 2 * t4 + 8]);
                    mma16816<BF16>(acc[0][nt], a[0], b0, b1);
                    mma16816<BF16>(acc[1][nt], a[1], b0, b1);
                }
            }
        }
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int sq = mt * 16 + g + (e >= 2 ? 8 : 0);
                if (s_tok[sq] < 0) continue;
                const int r0 = s_r0[sq], c0 = s_c0[sq];
                float* out = logits + ((long long)pair * nrows + s_row[sq]) * W;
#pragma unroll
                for (int nt = 0; nt < 4; nt++) {
                    const int key = kc + warp * 32 + nt * 8 + 2 * t4 + (e & 1);
                    if (key >= nkeys) continue;
                    const int ky = by0 + key / bw, kx = bx0 + key % bw;
                    if (ky >= r0 && ky < r0 + wh && kx >= c0 && kx < c0 + ww)
                        out[(ky - r0) * ww + (kx - c0)] = acc[mt][nt][e] * scale;
                }
            }
    }
}

#define LOGITS_TC_ENTRY(NAME, BF, NKT)                                                             \
    extern "C" __global__ void __launch_bounds__(NKT) NAME(                                        \
        const u16* q, const u16* k, const int2* pairs, int H, int F, int S, int d, int w,          \
        const int* slot_tok, const int* slot_row, int nslots, int nrows, const int2* win, int wh,  \
        int ww, float scale, float* logits) {                                                      \
        logits_tc_impl<BF, NKT>(q, k, pairs, H, F, S, d, w, slot_tok, slot_row, nslots, nrows, win, \
                                wh, ww, scale, logits);                                            \
    }
// 128 keys per chunk (4 warps) and 256 keys per chunk (8 warps: half the Q reloads).
LOGITS_TC_ENTRY(amf_logits_tc_f16, false, 128)
LOGITS_TC_ENTRY(amf_logits_tc_bf16, true, 128)
LOGITS_TC_ENTRY(amf_logits_tcw_f16, false, 256)
LOGITS_TC_ENTRY(amf_logits_tcw_bf16, true, 256)

#define GB_K 64          // keys (dQ) / queries (dK) per chunk
#define GB_N 256         // features per block
#define TC_SA (GB_K + 8)  // A tile row stride (u16)
#define TC_SB (GB_N + 8)  // B tile row stride (u16)

// acc[8][4] += A[32 x 64] . B[64 x 256] for this warp's 16 x 64 output tile.
template <bool BF16>
__device__ __forceinline__ void tile_mma(const u16 (*A)[TC_SA], const u16 (*B)[TC_SB], float (*acc)[4],
                                         int warp, int lane) {
    const int g = lane >> 2, t4 = lane & 3;
    const int m0 = (warp & 1) * 16, n0 = (warp >> 1) * 64;
#pragma unroll
    for (int ks = 0; ks < GB_K / 16; ks++) {
        unsigned a[4];
        a[0] = *reinterpret_cast<const unsigned*>(&A[m0 + g][ks * 16 + 2 * t4]);
        a[1] = *reinterpret_cast<const unsigned*>(&A[m0 + g + 8][ks * 16 + 2 * t4]);
        a[2] = *reinterpret_cast<const unsigned*>(&A[m0 + g][ks * 16 + 2 * t4 + 8]);
        a[3] = *reinterpret_cast<const unsigned*>(&A[m0 + g + 8][ks * 16 + 2 * t4 + 8]);
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            unsigned b0, b1;
            ldsm_x2_trans(b0, b1, &B[ks * 16 + (lane & 15)][n0 + nt * 8]);
            mma16816<BF16>(acc[nt], a, b0, b1);
        }
    }
}

// Store this warp's 16 x 64 tile: row r of the block -> token tok[r]; feature f0 + col.
__device__ __forceinline__ void tile_store(float (*acc)[4], const int* tok, int warp, int lane, int f0,
                                           int D, int d, int F, int S, int frame, float inv,
                                           int accumulate, float* __restrict__ out) {
    const int g = lane >> 2, t4 = lane & 3;
    const int m0 = (warp & 1) * 16, n0 = (warp >> 1) * 64;
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
            const int r = m0 + g + (e >= 2 ? 8 : 0);
            const int tk = tok[r];
            const int fe = f0 + n0 + nt * 8 + 2 * t4;  // even; fe + 1 is in the same head
            if (tk < 0 || fe >= D) continue;
            const int hh = fe / d, c = fe % d;
            float2* o = reinterpret_cast<float2*>(out + (((long long)hh * F + frame) * S + tk) * d + c);
            float2 v = make_float2(acc[nt][e] * inv, acc[nt][e + 1] * inv);
            if (accumulate) {
                float2 old = *o;
                v.x += old.x;
                v.y += old.y;
            }
            *o = v;
        }
}

#define ZERO_ACC(acc)                          \
    _Pragma("unroll") for (int a_ = 0; a_ < 8; a_++) \
        _Pragma("unroll") for (int b_ = 0; b_ < 4; b_++) acc[a_][b_] = 0.f;

// dQ on tensor cores. grid (ceil(S/32), ceil(H*d/256), F), block 256 (8 warps of 16 x 64).
// Chunks of 64 keys; the next chunk's loads are issued before the current chunk's mma.
template <bool BF16>
__device__ void dq_tc_impl(const u16* __restrict__ scores, const u16* __restrict__ k,
                           const int2* __restrict__ pairs, const int* __restrict__ pair_off,
                           const int* __restrict__ pair_idx, int H, int F, int S, int d, int w,
                           const int* __restrict__ slot_tok, const int2* __restrict__ win, int wh,
                           int ww, float inv, int accumulate, float* __restrict__ dq) {
    __shared__ __align__(16) u16 As[TQ][TC_SA];
    __shared__ __align__(16) u16 Bs[GB_K][TC_SB];
    __shared__ int s_tok[TQ], s_r0[TQ], s_c0[TQ], box[4];
    const int fi = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int D = H * d;
    const int f0 = blockIdx.y * GB_N;
    const long long W = (long long)wh * ww;
    if (tid < TQ) {
        int sl = blockIdx.x * TQ + tid;
        s_tok[tid] = sl < S ? slot_tok[sl] : -1;
    }
    __syncthreads();
    float acc[8][4];
    ZERO_ACC(acc)
    for (int pp = pair_off[fi]; pp < pair_off[fi + 1]; pp++) {
        const int pair = pair_idx[pp];
        const int fj = pairs[pair].y;
        __syncthreads();
        if (tid < TQ) {
            int tok = s_tok[tid];
            int2 st = tok >= 0 ? win[(long long)pair * S + tok] : make_int2(0, 0);
            s_r0[tid] = st.x; s_c0[tid] = st.y;
        }
        __syncthreads();
        if (tid == 0) union_box(s_r0, s_c0, s_tok, TQ, wh, ww, box);
        __syncthreads();
        const int by0 = box[0], bx0 = box[2], bw = box[3];
        const int nkeys = box[1] * bw;
        const u16* sp = scores + (long long)pair * S * W;
        u16 areg[8];
        uint4 breg[8];
        auto load = [&](int kc) {
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int e = tid + i * 256, kk = e % GB_K, sq = e / GB_K;
                int key = kc + kk, tok = s_tok[sq];
                u16 v = 0;
                if (key < nkeys && tok >= 0) {
                    int ky = by0 + key / bw, kx = bx0 + key % bw;
                    int r0 = s_r0[sq], c0 = s_c0[sq];
                    if (ky >= r0 && ky < r0 + wh && kx >= c0 && kx < c0 + ww)
                        v = sp[(long long)tok * W + (ky - r0) * ww + (kx - c0)];
                }
                areg[i] = v;
            }
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int u = tid + i * 256, r = u / (GB_N / 8), c8 = (u % (GB_N / 8)) * 8;
                int key = kc + r, fe = f0 + c8;
                uint4 v = make_uint4(0, 0, 0, 0);
                if (key < nkeys && fe < D) {
                    int kt = (by0 + key / bw) * w + bx0 + key % bw;
                    int hh = fe / d, c = fe % d;
                    v = *reinterpret_cast<const uint4*>(k + (((long long)hh * F + fj) * S + kt) * d + c);
                }
                breg[i] = v;
            }
        };
        if (nkeys > 0) load(0);
        for (int kc = 0; kc < nkeys; kc += GB_K) {
            __syncthreads();
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int e = tid + i * 256;
                As[e / GB_K][e % GB_K] = areg[i];
                int u = tid + i * 256;
                *reinterpret_cast<uint4*>(&Bs[u / (GB_N / 8)][(u % (GB_N / 8)) * 8]) = breg[i];
            }
            __syncthreads();
            if (kc + GB_K < nkeys) load(kc + GB_K);
            tile_mma<BF16>(As, Bs, acc, warp, lane);
        }
    }
    tile_store(acc, s_tok, warp, lane, f0, D, d, F, S, fi, inv, accumulate, dq);
}

// dK on tensor cores. grid (ceil(S/32), ceil(H*d/256), F), block 256. Chunks of 64 candidate
// queries (the bounding box of the queries whose windows meet the key tile).
template <bool BF16>
__device__ void dk_tc_impl(const u16* __restrict__ scores, const u16* __restrict__ q,
                           const int2* __restrict__ pairs, const int* __restrict__ pair_off,
                           const int* __restrict__ pair_idx, int H, int F, int S, int d, int w,
                           const int* __restrict__ slot_tok, const int2* __restrict__ win, int wh,
                           int ww, float inv, int accumulate, float* __restrict__ dk) {
    __shared__ __align__(16) u16 As[TQ][TC_SA];
    __shared__ __align__(16) u16 Bs[GB_K][TC_SB];
    __shared__ int s_tok[TQ], qbox[4], kbox[4];
    const int fj = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int D = H * d;
    const int f0 = blockIdx.y * GB_N;
    const long long W = (long long)wh * ww;
    if (tid < TQ) {
        int sl = blockIdx.x * TQ + tid;
        s_tok[tid] = sl < S ? slot_tok[sl] : -1;
    }
    __syncthreads();
    if (tid == 0) {
        int y0 = 1 << 30, y1 = -1, x0 = 1 << 30, x1 = -1;
        for (int a = 0; a < TQ; a++) {
            int t = s_tok[a];
            if (t < 0) continue;
            y0 = min(y0, t / w); y1 = max(y1, t / w);
            x0 = min(x0, t % w); x1 = max(x1, t % w);
        }
        kbox[0] = y0; kbox[1] = y1; kbox[2] = x0; kbox[3] = x1;
    }
    float acc[8][4];
    ZERO_ACC(acc)
    for (int pp = pair_off[fj]; pp < pair_off[fj + 1]; pp++) {
        const int pair = pair_idx[pp];
        const int fi = pairs[pair].x;
        __syncthreads();
        if (tid == 0) { qbox[0] = 1 << 30; qbox[1] = -1; qbox[2] = 1 << 30; qbox[3] = -1; }
        __syncthreads();
        {
            int y0 = 1 << 30, y1 = -1, x0 = 1 << 30, x1 = -1;
            for (int t = tid; t < S; t += blockDim.x) {
                int2 st = win[(long long)pair * S + t];
                if (st.x <= kbox[1] && st.x + wh > kbox[0] && st.y <= kbox[3] && st.y + ww > kbox[2]) {
                    int ty = t / w, tx = t % w;
                    y0 = min(y0, ty); y1 = max(y1, ty); x0 = min(x0, tx); x1 = max(x1, tx);
                }
            }
            if (y1 >= 0) {
                atomicMin(&qbox[0], y0); atomicMax(&qbox[1], y1);
                atomicMin(&qbox[2], x0); atomicMax(&qbox[3], x1);
            }
        }
        __syncthreads();
        if (qbox[1] < 0) continue;
        const int qy0 = qbox[0], qx0 = qbox[2], qw = qbox[3] - qbox[2] + 1;
        const int nq = (qbox[1] - qbox[0] + 1) * qw;
        const u16* sp = scores + (long long)pair * S * W;
        const int2* wp = win + (long long)pair * S;
        u16 areg[8];
        uint4 breg[8];
        auto load = [&](int qc) {
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int e = tid + i * 256, qq = e % GB_K, sk = e / GB_K;
                int cand = qc + qq, key = s_tok[sk];
                u16 v = 0;
                if (cand < nq && key >= 0) {
                    int qt = (qy0 + cand / qw) * w + qx0 + cand % qw;
                    int2 st = wp[qt];
                    int ky = key / w, kx = key % w;
                    if (ky >= st.x && ky < st.x + wh && kx >= st.y && kx < st.y + ww)
                        v = sp[(long long)qt * W + (ky - st.x) * ww + (kx - st.y)];
                }
                areg[i] = v;
            }
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int u = tid + i * 256, r = u / (GB_N / 8), c8 = (u % (GB_N / 8)) * 8;
                int cand = qc + r, fe = f0 + c8;
                uint4 v = make_uint4(0, 0, 0, 0);
                if (cand < nq && fe < D) {
                    int qt = (qy0 + cand / qw) * w + qx0 + cand % qw;
                    int hh = fe / d, c = fe % d;
                    v = *reinterpret_cast<const uint4*>(q + (((long long)hh * F + fi) * S + qt) * d + c);
                }
                breg[i] = v;
            }
        };
        load(0);
        for (int qc = 0; qc < nq; qc += GB_K) {
            __syncthreads();
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int e = tid + i * 256;
                As[e / GB_K][e % GB_K] = areg[i];
                int u = tid + i * 256;
                *reinterpret_cast<uint4*>(&Bs[u / (GB_N / 8)][(u % (GB_N / 8)) * 8]) = breg[i];
            }
            __syncthreads();
            if (qc + GB_K < nq) load(qc + GB_K);
            tile_mma<BF16>(As, Bs, acc, warp, lane);
        }
    }
    tile_store(acc, s_tok, warp, lane, f0, D, d, F, S, fj, inv, accumulate, dk);
}

#define GRAD_TC_ENTRY(SUF, BF)                                                                     \
    extern "C" __global__ void __launch_bounds__(256) amf_dq_tc_##SUF(                             \
        const u16* scores, const u16* k, const int2* pairs, const int* pair_off,                   \
        const int* pair_idx, int H, int F, int S, int d, int w, const int* slot_tok,               \
        const int2* win, int wh, int ww, float inv, int accumulate, float* dq) {                   \
        dq_tc_impl<BF>(scores, k, pairs, pair_off, pair_idx, H, F, S, d, w, slot_tok, win, wh, ww, \
                       inv, accumulate, dq);                                                       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) amf_dk_tc_##SUF(                             \
        const u16* scores, const u16* q, const int2* pairs, const int* pair_off,                   \
        const int* pair_idx, int H, int F, int S, int d, int w, const int* slot_tok,               \
        const int2* win, int wh, int ww, float inv, int accumulate, float* dk) {                   \
        dk_tc_impl<BF>(scores, q, pairs, pair_off, pair_idx, H, F, S, d, w, slot_tok, win, wh, ww, \
                       inv, accumulate, dk);                                                       \
    }
GRAD_TC_ENTRY(f16, false)
GRAD_TC_ENTRY(bf16, true)

// =============================================================================================
// Version 2 of the tensor-core path (f16/bf16 inputs, head_dim % 64 == 0), the default:
//   amf_logits3_<T>   logits of a group of up to 3 pairs that share their key frame: 96 rows
//                     (3 pairs x 32 query slots) against the union box of their windows, so
//                     every K row brought on chip serves 96 queries; cp.async 3-stage pipeline
//                     over (key chunk of 128) x (head, 64 features); ldmatrix + mma.sync.
//   amf_grad_boxes    per (pair, 8x8 tile): the partner box of the gradient kernels, computed
//                     once per call instead of once per block.
//   amf_dq2_<T>/amf_dk2_<T>  dQ / dK of an 8x8 tile of own tokens x 128 features: A = the 16-bit
//                     score gradient gathered from [P, S, W] (no division in the inner loop),
//                     B = partner rows by cp.async (zero-filled outside), double-buffered;
//                     8 warps of 32 x 32; each output written by one block, no atomics.
//   amf_sum           deterministic one-block sum of the per-row loss terms (read back: 4 bytes).

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(smem)), "l"(gmem),
                 "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async16_u32(unsigned smem, const void* gmem, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem), "l"(gmem), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void ldsm_x4_u32(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldsm_x4(unsigned* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(unsigned* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

#define L3_PG 3               // pairs per group
#define L3_M (L3_PG * TQ)     // rows per block (96)
#define L3_N 128              // keys per chunk
#define L3_DC 64              // features per stage
#define L3_LD (L3_DC + 8)     // smem row stride (u16)
#define L3_ST 3               // pipeline stages
#define L3_STAGE ((L3_M + L3_N) * L3_LD)  // u16 per stage
// Dynamic shared memory of amf_logits3_*: L3_ST * L3_STAGE * 2 bytes = 96768.

// grid (ceil(nslots / 32), ngroups, Z), block 256, dynamic smem 96768. groups: [ngroups][3] chunk
// pair indices sharing one key frame (-1 = none; the first is always valid). Block z takes the
// key chunks z, z + Z, ... of the box (Z > 1 when there are too few blocks to fill the GPU).
// FUSED (forward only, grid z = 1): no logits are stored; each chunk's in-window logits update
// per-(key warp, row) online-softmax statistics in shared memory (max, sum, sum*y, sum*x, best
// value and its window index), merged over the 4 key warps at the end; the block writes the
// read-out of its rows: omode 1 soft-argmax displacement, 2 argmax displacement, 3 absolute
// expected position; out rows are (p0 + pair) * nrows + row.
template <bool BF16, bool FUSED>
__device__ void logits3_impl(const u16* __restrict__ q, const u16* __restrict__ k,
                             const int2* __restrict__ pairs, const int* __restrict__ groups, int H,
                             int F, int S, int d, int w, const int* __restrict__ slot_tok,
                             const int* __restrict__ slot_row, int nslots, int nrows,
                             const int2* __restrict__ win, int wh, int ww, float scale,
                             float* __restrict__ logits, int omode, int p0,
                             float* __restrict__ outd, int zx, const float* __restrict__ active,
                             int has_active) {
    extern __shared__ __align__(16) u16 l3_smem[];
    __shared__ int r_tok[L3_M], r_row[L3_M], r_r0[L3_M], r_c0[L3_M], r_pair[L3_M];
    __shared__ int bx[4];
    // Online-softmax statistics per (key warp, row) (FUSED only).
    __shared__ float o_m[FUSED ? 4 : 1][L3_M], o_s[FUSED ? 4 : 1][L3_M], o_y[FUSED ? 4 : 1][L3_M],
        o_x[FUSED ? 4 : 1][L3_M], o_bv[FUSED ? 4 : 1][L3_M];
    __shared__ int o_bi[FUSED ? 4 : 1][L3_M];
    if (FUSED) {
        for (int e = threadIdx.x; e < 4 * L3_M; e += blockDim.x) {
            o_m[e / L3_M][e % L3_M] = __int_as_float(0xff800000);
            o_s[e / L3_M][e % L3_M] = 0.f;
            o_y[e / L3_M][e % L3_M] = 0.f;
            o_x[e / L3_M][e % L3_M] = 0.f;
            o_bv[e / L3_M][e % L3_M] = __int_as_float(0xff800000);
            o_bi[e / L3_M][e % L3_M] = 0x7fffffff;
        }
    }
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const long long W = (long long)wh * ww;
    const int grp = blockIdx.y;
    // Key-chunk split: over grid z (zx = 1), or folded into x with the split fastest (zx > 1:
    // the blocks of one group then run together, a smaller working set of frames in L2).
    const int stile = zx > 1 ? blockIdx.x / zx : blockIdx.x;
    const int zc = zx > 1 ? blockIdx.x % zx : blockIdx.z, zn = zx > 1 ? zx : gridDim.z;
    const int fj = pairs[groups[grp * L3_PG]].y;
    if (tid == 0) { bx[0] = 1 << 30; bx[1] = -1; bx[2] = 1 << 30; bx[3] = -1; }
    __syncthreads();
    if (tid < L3_M) {
        const int gi = tid / TQ, sl = stile * TQ + tid % TQ;
        const int pair = groups[grp * L3_PG + gi];
        int tok = -1, row = 0, r0 = 0, c0 = 0;
        if (pair >= 0 && sl < nslots) {
            tok = slot_tok[sl];
            row = slot_row[sl];
            const int2 st = win[(long long)pair * nrows + row];
            r0 = st.x; c0 = st.y;
            // A row outside the loss (weight 0) is left out: no logits, no part of the box.
            if (has_active && active[(long long)(p0 + pair) * nrows + row] == 0.0f) tok = -1;
        }
        r_tok[tid] = tok; r_row[tid] = row; r_r0[tid] = r0; r_c0[tid] = c0;
        r_pair[tid] = pair < 0 ? 0 : pair;
        if (tok >= 0) {
            atomicMin(&bx[0], r0); atomicMax(&bx[1], r0 + wh - 1);
            atomicMin(&bx[2], c0); atomicMax(&bx[3], c0 + ww - 1);
        }
    }
    __syncthreads();
    if (bx[1] < 0) return;  // no active row (block-uniform)
    const int by0 = bx[0], bx0 = bx[2], bw = bx[3] - bx[2] + 1;
    const int nkeys = (bx[1] - bx[0] + 1) * bw;
    const int dstages = d / L3_DC;
    const int nst = H * dstages;
    const int nch_all = (nkeys + L3_N - 1) / L3_N;
    const int nch = zc < nch_all ? (nch_all - zc + zn - 1) / zn : 0;  // chunks of this block
    const int total = nch * nst;
    const long long hstride = (long long)F * S * d;
    // Everything a stage needs that does not change from stage to stage is computed here: the
    // shared-memory offsets of this thread's copies and fragments, and the rows' global
    // addresses; a stage then only adds its feature offset. (This kernel was bound by
    // instruction issue: in the profile of 2026-11-27 mma was 8 % of its instructions, the rest
    // mostly index arithmetic and divisions recomputed per stage.)
    const unsigned smem0 = smem_u32(l3_smem);
    constexpr unsigned kStageBytes = L3_STAGE * 2;
    // A rows of this thread: u = tid + i * 256 -> row u >> 3, 16-byte chunk u & 7.
    unsigned a_dst[3];
    const u16* a_src[3];
    int a_bytes[3];
#pragma unroll
    for (int i = 0; i < 3; i++) {
        const int u = tid + i * 256, r = u >> 3;
        const int tok = r_tok[r];
        const bool ok = tok >= 0;
        const int fi = ok ? pairs[r_pair[r]].x : 0;
        a_dst[i] = (unsigned)(r * L3_LD + (u & 7) * 8) * 2;
        a_src[i] = q + ((long long)fi * S + (ok ? tok : 0)) * d + (u & 7) * 8;
        a_bytes[i] = ok ? 16 : 0;
    }
    unsigned b_dst[4];
    const u16* b_src[4];
    int b_bytes[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int u = tid + i * 256;
        b_dst[i] = (unsigned)((L3_M + (u >> 3)) * L3_LD + (u & 7) * 8) * 2;
    }
    auto set_chunk = [&](int c) {  // key chunk c of the box: this thread's 4 key rows
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int u = tid + i * 256, n = c * L3_N + (u >> 3);
            const bool ok = n < nkeys;
            int kt = 0;
            if (ok) {
                const int yy = n / bw;
                kt = (by0 + yy) * w + bx0 + (n - yy * bw);
            }
            b_src[i] = k + ((long long)fj * S + kt) * d + (u & 7) * 8;
            b_bytes[i] = ok ? 16 : 0;
        }
    };
    // Producer position: ring slot, stage within the chunk, feature block within the head, and
    // the offset of (head, feature block) in Q and K (in bounds for every row, so the copies
    // of rows outside the box, which read 0 bytes, can add it too).
    int p_ring = 0, p_st = 0, p_fb = 0, p_cl = 0;
    long long p_off = 0;
    if (nch > 0) set_chunk(zc);
    auto issue = [&]() {
        const unsigned base = smem0 + p_ring * kStageBytes;
#pragma unroll
        for (int i = 0; i < 3; i++) cp_async16_u32(base + a_dst[i], a_src[i] + p_off, a_bytes[i]);
#pragma unroll
        for (int i = 0; i < 4; i++) cp_async16_u32(base + b_dst[i], b_src[i] + p_off, b_bytes[i]);
        p_ring = p_ring + 1 == L3_ST ? 0 : p_ring + 1;
        p_off += L3_DC;
        if (++p_fb == dstages) { p_fb = 0; p_off += hstride - d; }
        if (++p_st == nst) {
            p_st = 0;
            p_fb = 0;
            p_off = 0;
            if (++p_cl < nch) set_chunk(zc + p_cl * zn);
        }
    };
    const int wm = warp & 1, wn = warp >> 1;  // rows wm*48 .. +48, keys wn*32 .. +32
    // ldmatrix addresses (bytes, within a stage) of this warp's A rows and B keys at ks = 0.
    unsigned a_ld[3], b_ld[2];
#pragma unroll
    for (int mt = 0; mt < 3; mt++)
        a_ld[mt] = (unsigned)((wm * 48 + mt * 16 + (lane & 15)) * L3_LD + (lane >> 4) * 8) * 2;
#pragma unroll
    for (int np = 0; np < 2; np++)
        b_ld[np] = (unsigned)((L3_M + wn * 32 + np * 16 + (lane & 7) + ((lane >> 4) << 3)) * L3_LD +
                              ((lane >> 3) & 1) * 8) * 2;
    float acc[3][4][4];
#pragma unroll
    for (int a = 0; a < 3; a++)
#pragma unroll
        for (int b = 0; b < 4; b++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[a][b][e] = 0.f;
#pragma unroll
    for (int s = 0; s < L3_ST - 1; s++) {
        if (s < total) issue();
        cp_async_commit();
    }
    // Consumer position: ring slot, stage within the chunk, first key of the chunk.
    int c_ring = 0, c_st = 0, kc = zc * L3_N;
    for (int it = 0; it < total; it++) {
        cp_async_wait<L3_ST - 2>();
        __syncthreads();
        if (it + L3_ST - 1 < total) issue();
        cp_async_commit();
        const unsigned base = smem0 + c_ring * kStageBytes;
        // Warps whose 32 keys lie past the box (last chunk) skip the product.
        if (kc + wn * 32 < nkeys) {
#pragma unroll
            for (int ks = 0; ks < L3_DC / 16; ks++) {
                unsigned a[3][4], b[2][4];
#pragma unroll
                for (int mt = 0; mt < 3; mt++) ldsm_x4_u32(a[mt], base + a_ld[mt] + ks * 32);
#pragma unroll
                for (int np = 0; np < 2; np++) ldsm_x4_u32(b[np], base + b_ld[np] + ks * 32);
#pragma unroll
                for (int mt = 0; mt < 3; mt++)
#pragma unroll
                    for (int nt = 0; nt < 4; nt++)
                        mma16816<BF16>(acc[mt][nt], a[mt], b[nt >> 1][(nt & 1) * 2], b[nt >> 1][(nt & 1) * 2 + 1]);
            }
        }
        c_ring = c_ring + 1 == L3_ST ? 0 : c_ring + 1;
        const bool chunk_done = ++c_st == nst;
        if (FUSED && chunk_done) {
            // Chunk done: fold this warp's in-window logits into its rows' statistics.
            int kyy[8], kxx[8];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int n = kc + wn * 32 + (j >> 1) * 8 + 2 * t4 + (j & 1);
                const int yy = n / bw;
                kyy[j] = n < nkeys ? by0 + yy : -(1 << 20);
                kxx[j] = bx0 + (n - yy * bw);
            }
#pragma unroll
            for (int mt = 0; mt < 3; mt++)
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    const int m = wm * 48 + mt * 16 + g + hf * 8;
                    const int r0 = r_r0[m], c0 = r_c0[m];
                    const bool act = r_tok[m] >= 0;
                    float v[8];
                    int wi[8];
                    float cm = __int_as_float(0xff800000);
                    float bv = cm;
                    int bi = 0x7fffffff;
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        const int dy = kyy[j] - r0, dx = kxx[j] - c0;
                        const bool ok = act && (unsigned)dy < (unsigned)wh && (unsigned)dx < (unsigned)ww;
                        v[j] = ok ? acc[mt][j >> 1][hf * 2 + (j & 1)] * scale : __int_as_float(0xff800000);
                        wi[j] = ok ? dy * ww + dx : 0x7fffffff;
                        acc[mt][j >> 1][hf * 2 + (j & 1)] = 0.f;
                        cm = fmaxf(cm, v[j]);
                        if (ok && (v[j] > bv || (v[j] == bv && wi[j] < bi))) { bv = v[j]; bi = wi[j]; }
                    }
                    // The 4 lanes of a quad hold the same rows.
#pragma unroll
                    for (int o = 1; o < 4; o <<= 1) {
                        cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, o));
                        const float bv2 = __shfl_xor_sync(0xffffffffu, bv, o);
                        const int bi2 = __shfl_xor_sync(0xffffffffu, bi, o);
                        if (bv2 > bv || (bv2 == bv && bi2 < bi)) { bv = bv2; bi = bi2; }
                    }
                    const float om = o_m[wn][m];
                    const float M = fmaxf(om, cm);
                    float ls = 0.f, ly = 0.f, lx = 0.f;
                    if (M != __int_as_float(0xff800000)) {
#pragma unroll
                        for (int j = 0; j < 8; j++) {
                            if (wi[j] == 0x7fffffff) continue;
                            const float e = expf(v[j] - M);
                            ls += e;
                            ly += e * (float)kyy[j];
                            lx += e * (float)kxx[j];
                        }
                    }
#pragma unroll
                    for (int o = 1; o < 4; o <<= 1) {
                        ls += __shfl_xor_sync(0xffffffffu, ls, o);
                        ly += __shfl_xor_sync(0xffffffffu, ly, o);
                        lx += __shfl_xor_sync(0xffffffffu, lx, o);
                    }
                    __syncwarp();
                    if (t4 == 0 && M != __int_as_float(0xff800000)) {
                        const float f = expf(om - M);  // 0 when om = -inf
                        o_s[wn][m] = o_s[wn][m] * f + ls;
                        o_y[wn][m] = o_y[wn][m] * f + ly;
                        o_x[wn][m] = o_x[wn][m] * f + lx;
                        o_m[wn][m] = M;
                        if (bv > o_bv[wn][m] || (bv == o_bv[wn][m] && bi < o_bi[wn][m])) {
                            o_bv[wn][m] = bv;
                            o_bi[wn][m] = bi;
                        }
                    }
                    __syncwarp();
                }
        }
        if (!FUSED && chunk_done) {
            // Chunk done: keep each row's in-window keys, scaled.
#pragma unroll
            for (int nt = 0; nt < 4; nt++)
#pragma unroll
                for (int e1 = 0; e1 < 2; e1++) {
                    const int n = kc + wn * 32 + nt * 8 + 2 * t4 + e1;
                    if (n >= nkeys) continue;
                    const int yy = n / bw;
                    const int ky = by0 + yy, kx = bx0 + (n - yy * bw);
#pragma unroll
                    for (int mt = 0; mt < 3; mt++)
#pragma unroll
                        for (int hf = 0; hf < 2; hf++) {
                            const int m = wm * 48 + mt * 16 + g + hf * 8;
                            const int dy = ky - r_r0[m], dx = kx - r_c0[m];
                            if (r_tok[m] >= 0 && (unsigned)dy < (unsigned)wh && (unsigned)dx < (unsigned)ww)
                                logits[((long long)r_pair[m] * nrows + r_row[m]) * W + dy * ww + dx] =
                                    acc[mt][nt][hf * 2 + e1] * scale;
                            acc[mt][nt][hf * 2 + e1] = 0.f;
                        }
                }
        }
        if (chunk_done) {
            c_st = 0;
            kc += zn * L3_N;
        }
    }
    if (FUSED) {
        __syncthreads();
        if (tid < L3_M && r_tok[tid] >= 0) {
            const int m = tid;
            float M = __int_as_float(0xff800000);
            for (int j = 0; j < 4; j++) M = fmaxf(M, o_m[j][m]);
            float s0 = 0.f, sy = 0.f, sx = 0.f, bv = __int_as_float(0xff800000);
            int bi = 0x7fffffff;
            for (int j = 0; j < 4; j++) {
                if (o_m[j][m] != __int_as_float(0xff800000)) {
                    const float f = expf(o_m[j][m] - M);
                    s0 += o_s[j][m] * f;
                    sy += o_y[j][m] * f;
                    sx += o_x[j][m] * f;
                }
                if (o_bv[j][m] > bv || (o_bv[j][m] == bv && o_bi[j][m] < bi)) { bv = o_bv[j][m]; bi = o_bi[j][m]; }
            }
            const int tok = r_tok[m];
            const float py = (float)(tok / w), px = (float)(tok % w);
            const float ey = sy / s0, ex = sx / s0;
            float oy, ox;
            if (omode == 2) {
                oy = (float)(r_r0[m] + bi / ww) - py;
                ox = (float)(r_c0[m] + bi % ww) - px;
            } else if (omode == 3) {
                oy = ey; ox = ex;
            } else {
                oy = ey - py; ox = ex - px;
            }
            float* o = outd + ((long long)(p0 + r_pair[m]) * nrows + r_row[m]) * 2;
            o[0] = oy;
            o[1] = ox;
        }
    }
}

#define LOGITS3_ENTRY(NAME, BF, FU)                                                                \
    extern "C" __global__ void __launch_bounds__(256, 2) NAME(                                     \
        const u16* q, const u16* k, const int2* pairs, const int* groups, int H, int F, int S,     \
        int d, int w, const int* slot_tok, const int* slot_row, int nslots, int nrows,             \
        const int2* win, int wh, int ww, float scale, float* logits, int omode, int p0,            \
        float* outd, int zx, const float* active, int has_active) {                                \
        logits3_impl<BF, FU>(q, k, pairs, groups, H, F, S, d, w, slot_tok, slot_row, nslots,       \
                             nrows, win, wh, ww, scale, logits, omode, p0, outd, zx, active,       \
                             has_active);                                                          \
    }
LOGITS3_ENTRY(amf_logits3_f16, false, false)
LOGITS3_ENTRY(amf_logits3_bf16, true, false)
// Fused forward (online softmax, no logits stored).
LOGITS3_ENTRY(amf_logits3f_f16, false, true)
LOGITS3_ENTRY(amf_logits3f_bf16, true, true)

#define G_T 8               // own tile side (G_T x G_T slots)
#define G_M (G_T * G_T)     // 64
#define G_K 32              // partners per chunk
#define G_SA (G_K + 8)

// mode 0 (dQ): union of the windows of the tile's queries; mode 1 (dK): bounding box of the
// queries whose windows meet the tile's keys. boxes[pair * ntiles + tile] = (y0, x0, rows, cols),
// rows = 0 when empty. grid (ntiles, npairs), block 256; tiles G_T x G_T, ntx = ceil(w / G_T).
extern "C" __global__ void amf_grad_boxes(int mode, int h, int w, int wh, int ww, int ntx,
                                          const int2* __restrict__ win, int4* __restrict__ boxes) {
    __shared__ int red[4];
    const int tile = blockIdx.x, pair = blockIdx.y;
    const int S = h * w;
    const int ty0 = (tile / ntx) * G_T, tx0 = (tile % ntx) * G_T;
    const int ty1 = min(ty0 + G_T, h) - 1, tx1 = min(tx0 + G_T, w) - 1;
    if (threadIdx.x == 0) { red[0] = 1 << 30; red[1] = -1; red[2] = 1 << 30; red[3] = -1; }
    __syncthreads();
    int y0 = 1 << 30, y1 = -1, x0 = 1 << 30, x1 = -1;
    const int2* wp = win + (long long)pair * S;
    if (mode == 0) {
        for (int a = threadIdx.x; a < G_M; a += blockDim.x) {
            const int y = ty0 + a / G_T, x = tx0 + a % G_T;
            if (y > ty1 || x > tx1) continue;
            const int2 st = wp[y * w + x];
            y0 = min(y0, st.x); y1 = max(y1, st.x + wh - 1);
            x0 = min(x0, st.y); x1 = max(x1, st.y + ww - 1);
        }
    } else {
        for (int t = threadIdx.x; t < S; t += blockDim.x) {
            const int2 st = wp[t];
            if (st.x <= ty1 && st.x + wh > ty0 && st.y <= tx1 && st.y + ww > tx0) {
                const int y = t / w, x = t % w;
                y0 = min(y0, y); y1 = max(y1, y);
                x0 = min(x0, x); x1 = max(x1, x);
            }
        }
    }
    if (y1 >= 0) {
        atomicMin(&red[0], y0); atomicMax(&red[1], y1);
        atomicMin(&red[2], x0); atomicMax(&red[3], x1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int4 b = make_int4(0, 0, 0, 0);
        if (red[1] >= 0) b = make_int4(red[0], red[2], red[1] - red[0] + 1, red[3] - red[2] + 1);
        boxes[(long long)pair * gridDim.x + tile] = b;
    }
}

// Shared by the version-2 and version-3 gradient kernels and their packing.

// Eight consecutive partner keys n0 .. n0 + 7 of a box (row-major, bx = (y0, x0, rows, cols))
// for the own query whose score row is `row` and window starts at (r0, c0): the score
// gradient where a key lies in the window, else 0 (also past the box's npart keys and for an
// own slot outside the frame, ok = false).
__device__ __forceinline__ uint4 pack_q8(const u16* __restrict__ row, bool ok, int r0, int c0, int n0,
                                         int4 bx, int npart, int wh, int ww) {
    const int yy = n0 / bx.w;
    int ky = bx.x + yy, kx = bx.y + (n0 - yy * bx.w);
    u16 v[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int dy = ky - r0, dx = kx - c0;
        u16 val = 0;
        if (ok && n0 + i < npart && (unsigned)dy < (unsigned)wh && (unsigned)dx < (unsigned)ww)
            val = row[dy * ww + dx];
        v[i] = val;
        if (++kx == bx.y + bx.w) { kx = bx.y; ky++; }
    }
    return make_uint4((unsigned)v[0] | ((unsigned)v[1] << 16), (unsigned)v[2] | ((unsigned)v[3] << 16),
                      (unsigned)v[4] | ((unsigned)v[5] << 16), (unsigned)v[6] | ((unsigned)v[7] << 16));
}

// Partner query n of a dK box: its score row and window start (r0, c0); false past npart.
__device__ __forceinline__ bool pack_partner(const u16* __restrict__ sp, const int2* __restrict__ wp,
                                             long long W, int n, int4 bx, int npart, int w,
                                             const u16*& row, int& r0, int& c0) {
    row = sp;
    r0 = 0;
    c0 = 0;
    if (n >= npart) return false;
    const int yy = n / bx.w;
    const int qt = (bx.x + yy) * w + bx.y + (n - yy * bx.w);
    const int2 st = wp[qt];
    r0 = st.x;
    c0 = st.y;
    row = sp + (long long)qt * W;
    return true;
}

// Score gradient of own key (ky, kx) in the window of a partner query (row, r0, c0).
__device__ __forceinline__ u16 pack_k1(const u16* __restrict__ row, bool ok, int r0, int c0, int ky,
                                       int kx, int wh, int ww) {
    const int dy = ky - r0, dx = kx - c0;
    return ok && (unsigned)dy < (unsigned)wh && (unsigned)dx < (unsigned)ww ? row[dy * ww + dx] : 0;
}

// A warp's accumulators (MT x NTN tiles of 16 x 8, rows m0 + .. of the block's token table,
// features fe0 + ..) times inv into out[H, F, S, d] of frame `own`, added to what is there
// when `accumulate`.
template <int NTN, int MT>
__device__ __forceinline__ void grad_store(float* __restrict__ out, const int* s_tok, int m0, int fe0,
                                           const float (&acc)[MT][NTN][4], int lane, int D, int d,
                                           int F, int S, int own, float inv, int accumulate) {
    const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NTN; nt++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                const int m = m0 + mt * 16 + g + hf * 8;
                const int tok = s_tok[m];
                const int fe = fe0 + nt * 8 + 2 * t4;  // even; fe + 1 is in the same head
                if (tok < 0 || fe >= D) continue;
                const int hh = fe / d, c = fe - (fe / d) * d;
                float2* o = reinterpret_cast<float2*>(out + (((long long)hh * F + own) * S + tok) * d + c);
                float2 v = make_float2(acc[mt][nt][hf * 2] * inv, acc[mt][nt][hf * 2 + 1] * inv);
                if (accumulate) {
                    const float2 old = *o;
                    v.x += old.x;
                    v.y += old.y;
                }
                *o = v;
            }
}

// dQ (TRANS = false): out = dQ, own = queries of frame i (blockIdx.z), partners = keys of frame j,
// x = K. dK (TRANS = true): out = dK, own = keys of frame j, partners = candidate queries of
// frame i, x = Q. NT threads (256 or 512) cover NT / 2 features (8 warps of 32 x 32 outputs
// per 128 features). grid (ntiles, ceil(H*d / (NT/2)), F).
// PACKED: the A tiles were laid out by amf_pack_dq / amf_pack_dk ([pair][tile][64][box_stride],
// zero-padded to whole chunks): A comes by cp.async like B (no gather in this kernel).
template <bool BF16, bool TRANS, int NT, bool PACKED>
__device__ void grad2_impl(const u16* __restrict__ scores, const u16* __restrict__ x,
                           const int2* __restrict__ pairs, const int* __restrict__ pair_off,
                           const int* __restrict__ pair_idx, const int4* __restrict__ boxes, int H,
                           int F, int S, int d, int w, int ntx, const int2* __restrict__ win, int wh,
                           int ww, float inv, int accumulate, float* __restrict__ out,
                           const u16* __restrict__ packed, int box_stride) {
    constexpr int GN = NT / 2;        // features per block
    constexpr int CPR = GN / 8;       // 16-byte chunks per B row
    constexpr int TPR = CPR / 2;      // threads per B row (two chunks each)
    // Pipeline depth: packed A (both operands by cp.async): 3 stages (41 KB static with 128
    // features; 66 KB of dynamic shared memory with 256); gathered A (staged through
    // registers): 2 stages, static.
    constexpr int ST = PACKED ? 3 : 2;
    constexpr bool DYN = PACKED && NT == 512;
    __shared__ __align__(16) u16 As_s[DYN ? 1 : ST][G_M][G_SA];
    __shared__ __align__(16) u16 Bs_s[DYN ? 1 : ST][G_K][GN + 8];
    extern __shared__ __align__(16) u16 g2_smem[];
    u16 (*As)[G_M][G_SA] = DYN ? reinterpret_cast<u16 (*)[G_M][G_SA]>(g2_smem) : As_s;
    u16 (*Bs)[G_K][GN + 8] =
        DYN ? reinterpret_cast<u16 (*)[G_K][GN + 8]>(g2_smem + ST * G_M * G_SA) : Bs_s;
    __shared__ int s_tok[G_M], s_a[G_M], s_b[G_M];
    const int tile = blockIdx.x, own = blockIdx.z;
    const int ntiles = gridDim.x;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h = S / w;
    const int D = H * d;
    const int f0 = blockIdx.y * GN;
    const long long W = (long long)wh * ww;
    const bool gatherer = tid < 256;  // threads that gather the A tile (8 values each)
    if (tid < G_M) {
        const int y = (tile / ntx) * G_T + tid / G_T, xx = (tile % ntx) * G_T + tid % G_T;
        const bool ok = y < h && xx < w;
        s_tok[tid] = ok ? y * w + xx : -1;
        s_a[tid] = y;   // dK: the key's position; dQ: replaced by the window start per pair
        s_b[tid] = xx;
    }
    __syncthreads();
    // B rows of this thread: row tid / TPR, 16-byte chunks (tid % TPR) * 2 + {0, 1}.
    const int br = tid / TPR, bc = (tid % TPR) * 2;
    long long boff[2];
    bool bok[2];
#pragma unroll
    for (int cc = 0; cc < 2; cc++) {
        const int fe = f0 + (bc + cc) * 8;
        bok[cc] = fe < D;
        const int hh = fe / d, c = fe - (fe / d) * d;
        boff[cc] = (long long)hh * F * S * d + c;
    }
    const int wm = warp & 1, wn = warp >> 1;  // rows wm*32 .. +32, features wn*32 .. +32
    float acc[2][4][4];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int b = 0; b < 4; b++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[a][b][e] = 0.f;
    for (int pp = pair_off[own]; pp < pair_off[own + 1]; pp++) {
        const int pair = pair_idx[pp];
        const int pf = TRANS ? pairs[pair].x : pairs[pair].y;  // partner frame
        const int4 bx = boxes[(long long)pair * ntiles + tile];
        const int npart = bx.z * bx.w;
        if (npart == 0) continue;
        __syncthreads();
        if (!TRANS && !PACKED && tid < G_M) {
            const int tok = s_tok[tid];
            const int2 st = tok >= 0 ? win[(long long)pair * S + tok] : make_int2(0, 0);
            s_a[tid] = st.x;
            s_b[tid] = st.y;
        }
        __syncthreads();
        const u16* sp = scores + (long long)pair * S * W;
        const int2* wp = win + (long long)pair * S;
        const long long xbase = (long long)pf * S * d;
        unsigned areg[4];
        auto load = [&](int c, int stage) {
            const int p0 = c * G_K;
            {
                const int n = p0 + br;
                const bool ok = n < npart;
                int tok = 0;
                if (ok) {
                    const int yy = n / bx.w;
                    tok = (bx.x + yy) * w + bx.y + (n - yy * bx.w);
                }
#pragma unroll
                for (int cc = 0; cc < 2; cc++) {
                    const bool o = ok && bok[cc];
                    cp_async16(&Bs[stage][br][(bc + cc) * 8],
                               o ? x + boff[cc] + xbase + (long long)tok * d : x, o ? 16 : 0);
                }
            }
            if (PACKED) {
                if (gatherer) {
                    const u16* src = packed +
                                     (((long long)pair * ntiles + tile) * G_M + (tid >> 2)) * box_stride +
                                     p0 + (tid & 3) * 8;
                    cp_async16(&As[stage][tid >> 2][(tid & 3) * 8], src, 16);
                }
                cp_async_commit();
                return;
            }
            cp_async_commit();
            if (!gatherer) return;
            if (!TRANS) {
                // Own query m, 8 consecutive partner keys of the box.
                const int m = tid >> 2, n0 = p0 + (tid & 3) * 8;
                const int tok = s_tok[m];
                const u16* row = sp + (long long)(tok < 0 ? 0 : tok) * W;
                const uint4 pk = pack_q8(row, tok >= 0, s_a[m], s_b[m], n0, bx, npart, wh, ww);
                areg[0] = pk.x;
                areg[1] = pk.y;
                areg[2] = pk.z;
                areg[3] = pk.w;
            } else {
                // Partner query n, 8 own keys of one tile row.
                const int n = p0 + (tid & 31), mg = tid >> 5;
                const u16* row;
                int r0, c0;
                const bool ok = pack_partner(sp, wp, W, n, bx, npart, w, row, r0, c0);
                u16 v[8];
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    const int m = mg * 8 + i;
                    v[i] = pack_k1(row, ok && s_tok[m] >= 0, r0, c0, s_a[m], s_b[m], wh, ww);
                }
#pragma unroll
                for (int i = 0; i < 4; i++) areg[i] = (unsigned)v[2 * i] | ((unsigned)v[2 * i + 1] << 16);
            }
        };
        auto store_a = [&](int stage) {
            if (PACKED || !gatherer) return;
            if (!TRANS) {
                *reinterpret_cast<uint4*>(&As[stage][tid >> 2][(tid & 3) * 8]) =
                    make_uint4(areg[0], areg[1], areg[2], areg[3]);
            } else {
#pragma unroll
                for (int i = 0; i < 8; i++)
                    As[stage][(tid >> 5) * 8 + i][tid & 31] = (u16)(areg[i >> 1] >> ((i & 1) * 16));
            }
        };
        const int nch = (npart + G_K - 1) / G_K;
        auto mma_chunk = [&](int st) {
#pragma unroll
            for (int ks = 0; ks < G_K / 16; ks++) {
                unsigned a[2][4], b[2][4];
#pragma unroll
                for (int mt = 0; mt < 2; mt++)
                    ldsm_x4(a[mt], &As[st][wm * 32 + mt * 16 + (lane & 15)][ks * 16 + (lane >> 4) * 8]);
#pragma unroll
                for (int np = 0; np < 2; np++)
                    ldsm_x4_trans(b[np], &Bs[st][ks * 16 + (lane & 15)][wn * 32 + np * 16 + (lane >> 4) * 8]);
#pragma unroll
                for (int mt = 0; mt < 2; mt++)
#pragma unroll
                    for (int nt = 0; nt < 4; nt++)
                        mma16816<BF16>(acc[mt][nt], a[mt], b[nt >> 1][(nt & 1) * 2], b[nt >> 1][(nt & 1) * 2 + 1]);
            }
        };
        if constexpr (PACKED) {
            // Multistage: chunk c lives in stage c % ST; loads run ST - 1 chunks ahead. The
            // barrier at the top of the pair loop keeps the previous pair's readers safe.
#pragma unroll
            for (int s0 = 0; s0 < ST - 1; s0++) {
                if (s0 < nch) load(s0, s0);
                else cp_async_commit();
            }
            for (int c = 0; c < nch; c++) {
                cp_async_wait<ST - 2>();
                __syncthreads();
                if (c + ST - 1 < nch) load(c + ST - 1, (c + ST - 1) % ST);
                else cp_async_commit();
                mma_chunk(c % ST);
            }
            continue;
        }
        load(0, 0);
        store_a(0);
        cp_async_wait<0>();
        __syncthreads();
        for (int c = 0; c < nch; c++) {
            const int st = c & 1;
            if (c + 1 < nch) load(c + 1, st ^ 1);
            mma_chunk(st);
            if (c + 1 < nch) store_a(st ^ 1);
            cp_async_wait<0>();
            __syncthreads();
        }
    }
    grad_store<4>(out, s_tok, wm * 32, f0 + wn * 32, acc, lane, D, d, F, S, own, inv, accumulate);
}

#define GRAD2_ENTRY(NAME, SUF, BF, NT, MINB, PK)                                                   \
    extern "C" __global__ void __launch_bounds__(NT, MINB) amf_dq##NAME##_##SUF(                   \
        const u16* scores, const u16* k, const int2* pairs, const int* pair_off,                   \
        const int* pair_idx, const int4* boxes, int H, int F, int S, int d, int w, int ntx,        \
        const int2* win, int wh, int ww, float inv, int accumulate, float* dq, const u16* packed,  \
        int box_stride) {                                                                          \
        grad2_impl<BF, false, NT, PK>(scores, k, pairs, pair_off, pair_idx, boxes, H, F, S, d, w,  \
                                      ntx, win, wh, ww, inv, accumulate, dq, packed, box_stride);  \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(NT, MINB) amf_dk##NAME##_##SUF(                   \
        const u16* scores, const u16* q, const int2* pairs, const int* pair_off,                   \
        const int* pair_idx, const int4* boxes, int H, int F, int S, int d, int w, int ntx,        \
        const int2* win, int wh, int ww, float inv, int accumulate, float* dk, const u16* packed,  \
        int box_stride) {                                                                          \
        grad2_impl<BF, true, NT, PK>(scores, q, pairs, pair_off, pair_idx, boxes, H, F, S, d, w,   \
                                     ntx, win, wh, ww, inv, accumulate, dk, packed, box_stride);   \
    }
// 128 features x 256 threads (two blocks per SM) and 256 features x 512 threads (half the
// gathers of the score matrix per FLOP); "p": A pre-packed per tile (amf_pack_*). amf_*2pw_*
// take 3 * (64 * 40 + 32 * 264) * 2 = 66048 bytes of dynamic shared memory.
GRAD2_ENTRY(2, f16, false, 256, 2, false)
GRAD2_ENTRY(2, bf16, true, 256, 2, false)
GRAD2_ENTRY(2w, f16, false, 512, 1, false)
GRAD2_ENTRY(2w, bf16, true, 512, 1, false)
GRAD2_ENTRY(2p, f16, false, 256, 2, true)
GRAD2_ENTRY(2p, bf16, true, 256, 2, true)
GRAD2_ENTRY(2pw, f16, false, 512, 1, true)
GRAD2_ENTRY(2pw, bf16, true, 512, 1, true)

// Pack the score gradient per (pair, 8x8 own tile) for the "p" gradient kernels: out[pair][tile]
// [64 slots][box_stride], columns 0 .. roundup(box, 32) written (zeros outside the windows, the
// box and the frame). TRANS = false: rows = queries of the tile, columns = the keys of its box
// (dQ); TRANS = true: rows = keys of the tile, columns = the candidate queries of its box (dK).
// grid (ntiles, npairs), block 256.
template <bool TRANS>
__device__ void pack_impl(const u16* __restrict__ scores, const int4* __restrict__ boxes, int S, int w,
                          int ntx, const int2* __restrict__ win, int wh, int ww, int box_stride,
                          u16* __restrict__ out) {
    __shared__ int s_tok[G_M], s_a[G_M], s_b[G_M];
    const int tile = blockIdx.x, pair = blockIdx.y, ntiles = gridDim.x;
    const int tid = threadIdx.x;
    const int h = S / w;
    const long long W = (long long)wh * ww;
    if (tid < G_M) {
        const int y = (tile / ntx) * G_T + tid / G_T, xx = (tile % ntx) * G_T + tid % G_T;
        const bool ok = y < h && xx < w;
        const int tok = ok ? y * w + xx : -1;
        s_tok[tid] = tok;
        if (!TRANS) {
            const int2 st = ok ? win[(long long)pair * S + tok] : make_int2(0, 0);
            s_a[tid] = st.x; s_b[tid] = st.y;
        } else {
            s_a[tid] = y; s_b[tid] = xx;
        }
    }
    __syncthreads();
    const int4 bx = boxes[(long long)pair * ntiles + tile];
    const int npart = bx.z * bx.w;
    const int ncols = (npart + G_K - 1) / G_K * G_K;
    const u16* sp = scores + (long long)pair * S * W;
    const int2* wp = win + (long long)pair * S;
    u16* base = out + ((long long)pair * ntiles + tile) * G_M * box_stride;
    for (int p0 = 0; p0 < ncols; p0 += G_K) {
        if (!TRANS) {
            const int m = tid >> 2, n0 = p0 + (tid & 3) * 8;
            const int tok = s_tok[m];
            const u16* row = sp + (long long)(tok < 0 ? 0 : tok) * W;
            *reinterpret_cast<uint4*>(base + (long long)m * box_stride + n0) =
                pack_q8(row, tok >= 0, s_a[m], s_b[m], n0, bx, npart, wh, ww);
        } else {
            const int n = p0 + (tid & 31), mg = tid >> 5;
            const u16* row;
            int r0, c0;
            const bool ok = pack_partner(sp, wp, W, n, bx, npart, w, row, r0, c0);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const int m = mg * 8 + i;
                base[(long long)m * box_stride + n] =
                    pack_k1(row, ok && s_tok[m] >= 0, r0, c0, s_a[m], s_b[m], wh, ww);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) amf_pack_dq(const u16* scores, const int4* boxes, int S,
                                                              int w, int ntx, const int2* win, int wh,
                                                              int ww, int box_stride, u16* out) {
    pack_impl<false>(scores, boxes, S, w, ntx, win, wh, ww, box_stride, out);
}
extern "C" __global__ void __launch_bounds__(256) amf_pack_dk(const u16* scores, const int4* boxes, int S,
                                                              int w, int ntx, const int2* win, int wh,
                                                              int ww, int box_stride, u16* out) {
    pack_impl<true>(scores, boxes, S, w, ntx, win, wh, ww, box_stride, out);
}

// =============================================================================================
// Version 3 of the tensor-core gradient kernels (the default): own tiles of TY x 8 tokens
// (TY = 16 or 32) made of groups of 32 own tokens (4 tile rows x 8), and per group the range of
// partner indices (row-major in the tile's partner box) its windows can touch. A taller tile
// shares each partner row brought from L2 among more own tokens (the box grows by TY + 2r rows
// for TY rows), and every group skips the chunks of 32 partners outside its range, so the
// products a block executes do not grow with the tile (query-centred r = 10: 24 of the box's
// 36 rows per group at TY = 16, against 28 of 28 for an 8x8 tile).
#define G3_W 8      // tile width (tokens)
#define G3_GR 32    // own tokens per group (4 tile rows x 8)
#define G3_MAXG 8   // groups per tile (TY <= 32)

// Per (pair, TY x 8 tile) pt: boxes[pt] = (y0, x0, rows, cols) of the partners any own token
// can touch (rows = 0: none), ranges[pt * 8 + g] = [lo, hi) partner indices of group g ((0, 0):
// none). mode 0 (dQ): own = queries, partners = the keys of their windows; mode 1 (dK): own =
// keys, partners = the queries whose windows contain them. Queries whose loss weight
// coef[(p0 + pair) * S + t] is 0 (outside the motion mask, or a zero pair weight) have an
// all-zero score gradient and are left out of both. grid (ntiles, npairs), block 256.
extern "C" __global__ void amf_grad_ranges(int mode, int h, int w, int wh, int ww, int ntx, int ty,
                                           const int2* __restrict__ win,
                                           const float* __restrict__ coef, int p0,
                                           int4* __restrict__ boxes, int2* __restrict__ ranges) {
    __shared__ int red[G3_MAXG][4];
    const int tile = blockIdx.x, pair = blockIdx.y;
    const int S = h * w;
    const int ngr = ty / 4;
    const int ty0 = (tile / ntx) * ty, tx0 = (tile % ntx) * G3_W;
    const int tx1 = min(tx0 + G3_W, w) - 1;
    if (threadIdx.x < G3_MAXG) {
        red[threadIdx.x][0] = 1 << 30; red[threadIdx.x][1] = -1;
        red[threadIdx.x][2] = 1 << 30; red[threadIdx.x][3] = -1;
    }
    __syncthreads();
    const int2* wp = win + (long long)pair * S;
    const float* cp = coef + (long long)(p0 + pair) * S;
    if (mode == 0) {
        for (int a = threadIdx.x; a < ty * G3_W; a += blockDim.x) {
            const int y = ty0 + a / G3_W, x = tx0 + a % G3_W;
            if (y >= h || x >= w || cp[y * w + x] == 0.0f) continue;
            const int2 st = wp[y * w + x];
            const int g = a / G3_GR;
            atomicMin(&red[g][0], st.x); atomicMax(&red[g][1], st.x + wh - 1);
            atomicMin(&red[g][2], st.y); atomicMax(&red[g][3], st.y + ww - 1);
        }
    } else {
        for (int t = threadIdx.x; t < S; t += blockDim.x) {
            const int2 st = wp[t];
            if (st.y > tx1 || st.y + ww <= tx0 || cp[t] == 0.0f) continue;
            const int y = t / w, x = t - (t / w) * w;
            for (int g = 0; g < ngr; g++) {
                const int gy0 = ty0 + 4 * g, gy1 = min(gy0 + 4, h) - 1;
                if (gy0 >= h) break;
                if (st.x <= gy1 && st.x + wh > gy0) {
                    atomicMin(&red[g][0], y); atomicMax(&red[g][1], y);
                    atomicMin(&red[g][2], x); atomicMax(&red[g][3], x);
                }
            }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int y0 = 1 << 30, y1 = -1, x0 = 1 << 30, x1 = -1;
        for (int g = 0; g < ngr; g++) {
            if (red[g][1] < 0) continue;
            y0 = min(y0, red[g][0]); y1 = max(y1, red[g][1]);
            x0 = min(x0, red[g][2]); x1 = max(x1, red[g][3]);
        }
        int4 b = make_int4(0, 0, 0, 0);
        if (y1 >= 0) b = make_int4(y0, x0, y1 - y0 + 1, x1 - x0 + 1);
        const long long pt = (long long)pair * gridDim.x + tile;
        boxes[pt] = b;
        for (int g = 0; g < G3_MAXG; g++) {
            int2 r = make_int2(0, 0);
            if (g < ngr && red[g][1] >= 0) {
                r.x = (red[g][0] - y0) * b.w + (red[g][2] - x0);
                r.y = (red[g][1] - y0) * b.w + (red[g][3] - x0) + 1;
            }
            ranges[pt * G3_MAXG + g] = r;
        }
    }
}

// Chunk range [c0, c1) of chunks of G_K partners that meet a partner range (c1 = 0: none).
__device__ __forceinline__ int2 g3_chunks(int2 r) {
    return r.y > r.x ? make_int2(r.x / G_K, (r.y + G_K - 1) / G_K) : make_int2(0, 0);
}

// Pack the score gradient for the version-3 kernels chunk by chunk: out[pt][chunk][M = ty * 8
// own rows][32 partners] (box_stride / 32 chunks; a chunk's tile is M x 64 contiguous bytes, so
// the gradient kernels' copies of it read whole cache lines), per group only the chunks of its
// range (the gradient kernels read nothing else), zeros outside the windows, the box and the
// frame. grid (ntiles, npairs), block 256.
template <bool TRANS>
__device__ void pack3_impl(const u16* __restrict__ scores, const int4* __restrict__ boxes,
                           const int2* __restrict__ ranges, int S, int w, int ntx, int ty,
                           const int2* __restrict__ win, int wh, int ww, int box_stride,
                           u16* __restrict__ out) {
    __shared__ int s_tok[G3_MAXG * G3_GR], s_a[G3_MAXG * G3_GR], s_b[G3_MAXG * G3_GR];
    __shared__ int2 s_ch[G3_MAXG];
    const int tile = blockIdx.x, pair = blockIdx.y, ntiles = gridDim.x;
    const int tid = threadIdx.x, nt = blockDim.x;
    const int h = S / w;
    const int M = ty * G3_W;
    const long long W = (long long)wh * ww;
    const long long pt = (long long)pair * ntiles + tile;
    for (int a = tid; a < M; a += nt) {
        const int y = (tile / ntx) * ty + a / G3_W, xx = (tile % ntx) * G3_W + a % G3_W;
        const bool ok = y < h && xx < w;
        const int tok = ok ? y * w + xx : -1;
        s_tok[a] = tok;
        if (!TRANS) {
            const int2 st = ok ? win[(long long)pair * S + tok] : make_int2(0, 0);
            s_a[a] = st.x; s_b[a] = st.y;
        } else {
            s_a[a] = y; s_b[a] = xx;
        }
    }
    if (tid < G3_MAXG) s_ch[tid] = g3_chunks(ranges[pt * G3_MAXG + tid]);
    __syncthreads();
    const int4 bx = boxes[pt];
    const int npart = bx.z * bx.w;
    const int nch = (npart + G_K - 1) / G_K;
    const u16* sp = scores + (long long)pair * S * W;
    const int2* wp = win + (long long)pair * S;
    u16* base = out + pt * M * box_stride;
    for (int c = 0; c < nch; c++) {
        const int p0 = c * G_K;
        if (!TRANS) {
            // Item (own query m, 8 consecutive partner keys).
            for (int it = tid; it < M * 4; it += nt) {
                const int m = it >> 2, n0 = p0 + (it & 3) * 8;
                const int2 ch = s_ch[m / G3_GR];
                if (c < ch.x || c >= ch.y) continue;
                const int tok = s_tok[m];
                const u16* row = sp + (long long)(tok < 0 ? 0 : tok) * W;
                *reinterpret_cast<uint4*>(base + ((long long)c * M + m) * G_K + (it & 3) * 8) =
                    pack_q8(row, tok >= 0, s_a[m], s_b[m], n0, bx, npart, wh, ww);
            }
        } else {
            // Thread: partner query n = p0 + lane, own keys m = warp, warp + nwarps, ...
            // (H100: 0.31 ms at FastVMT's shape; a warp per group with the partner broadcast
            // and 16-byte stores measured 0.42 ms.)
            const int n = p0 + (tid & 31);
            const u16* row;
            int r0, c0;
            const bool ok = pack_partner(sp, wp, W, n, bx, npart, w, row, r0, c0);
            for (int m = tid >> 5; m < M; m += nt >> 5) {
                const int2 ch = s_ch[m / G3_GR];
                if (c < ch.x || c >= ch.y) continue;
                base[((long long)c * M + m) * G_K + (tid & 31)] =
                    pack_k1(row, ok && s_tok[m] >= 0, r0, c0, s_a[m], s_b[m], wh, ww);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) amf_pack3_dq(const u16* scores, const int4* boxes,
                                                               const int2* ranges, int S, int w, int ntx,
                                                               int ty, const int2* win, int wh, int ww,
                                                               int box_stride, u16* out) {
    pack3_impl<false>(scores, boxes, ranges, S, w, ntx, ty, win, wh, ww, box_stride, out);
}
extern "C" __global__ void __launch_bounds__(256) amf_pack3_dk(const u16* scores, const int4* boxes,
                                                               const int2* ranges, int S, int w, int ntx,
                                                               int ty, const int2* win, int wh, int ww,
                                                               int box_stride, u16* out) {
    pack3_impl<true>(scores, boxes, ranges, S, w, ntx, ty, win, wh, ww, box_stride, out);
}

// dQ (TRANS = false: own = queries of frame i = blockIdx.z, partners = keys of frame j, x = K)
// or dK (TRANS = true: own = keys of frame j, partners = queries of frame i, x = Q) of a TY x 8
// tile x GN features (128 or 256). (TY / 4) x (GN / 64) warps: warp = (group g: own rows
// 32g .. 32g + 31) x (64 features). A (packed scores) and B (partner rows) by cp.async, 3 stages
// over the chunks of 32 partners the block's groups need; a group's warps skip the chunks
// outside its range. grid (ntiles, ceil(H*d / GN), F), dynamic shared memory
// G3_ST * (TY * 8 * 40 + 32 * (GN + 8)) * 2 bytes (G3_ST pipeline stages).
template <bool BF16, bool TRANS, int TY, int GN, int G3_ST>
__device__ void grad3_impl(const int2* __restrict__ pairs, const int* __restrict__ pair_off,
                           const int* __restrict__ pair_idx, const int4* __restrict__ boxes,
                           const int2* __restrict__ ranges, const u16* __restrict__ x, int H, int F,
                           int S, int d, int w, int ntx, float inv, int accumulate,
                           float* __restrict__ out, const u16* __restrict__ packed, int box_stride) {
    constexpr int M = TY * G3_W;     // own tokens per tile
    constexpr int NG = TY / 4;       // groups of 32
    constexpr int WPG = GN / 64;     // warps per group
    constexpr int NT = NG * WPG * 32;
    constexpr int SB = GN + 8;
    constexpr int BCP = G_K * (GN / 8) / NT;  // 16-byte copies of B per thread and chunk
    constexpr int TPR = (GN / 8) / BCP;       // threads per B row
    constexpr int ACP = 4 * M / NT;           // 16-byte copies of A per thread and chunk
    extern __shared__ __align__(16) u16 g3_smem[];
    u16 (*As)[M][G_SA] = reinterpret_cast<u16 (*)[M][G_SA]>(g3_smem);
    u16 (*Bs)[G_K][SB] = reinterpret_cast<u16 (*)[G_K][SB]>(g3_smem + G3_ST * M * G_SA);
    __shared__ int s_tok[M];
    __shared__ int2 s_ch[NG];
    const int tile = blockIdx.x, own = blockIdx.z, ntiles = gridDim.x;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h = S / w;
    const int D = H * d;
    const int f0 = blockIdx.y * GN;
    for (int a = tid; a < M; a += NT) {
        const int y = (tile / ntx) * TY + a / G3_W, xx = (tile % ntx) * G3_W + a % G3_W;
        s_tok[a] = (y < h && xx < w) ? y * w + xx : -1;
    }
    // Visible to the store at the end even when no pair of this frame reaches a barrier.
    __syncthreads();
    const int br = tid / TPR, bc = (tid % TPR) * BCP;
    long long boff[BCP];
    bool bok[BCP];
#pragma unroll
    for (int cc = 0; cc < BCP; cc++) {
        const int fe = f0 + (bc + cc) * 8;
        bok[cc] = fe < D;
        const int hh = fe / d, c = fe - (fe / d) * d;
        boff[cc] = (long long)hh * F * S * d + c;
    }
    const int wg = warp / WPG, wn = warp % WPG;
    float acc[2][8][4];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int b = 0; b < 8; b++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[a][b][e] = 0.f;
    for (int pp = pair_off[own]; pp < pair_off[own + 1]; pp++) {
        const int pair = pair_idx[pp];
        const int pf = TRANS ? pairs[pair].x : pairs[pair].y;  // partner frame
        const long long pt = (long long)pair * ntiles + tile;
        const int4 bx = boxes[pt];
        const int npart = bx.z * bx.w;
        if (npart == 0) continue;
        __syncthreads();  // the previous pair's readers are done with the stages and s_ch
        if (tid < NG) s_ch[tid] = g3_chunks(ranges[pt * G3_MAXG + tid]);
        __syncthreads();
        int cmin = 1 << 30, cmax = 0;
#pragma unroll
        for (int q = 0; q < NG; q++) {
            const int2 ch = s_ch[q];
            if (ch.y > ch.x) { cmin = min(cmin, ch.x); cmax = max(cmax, ch.y); }
        }
        if (cmax <= cmin) continue;
        const int2 wch = s_ch[wg];
        int2 ach[ACP];
#pragma unroll
        for (int k = 0; k < ACP; k++) ach[k] = s_ch[((tid + k * NT) >> 2) / G3_GR];
        const long long xbase = (long long)pf * S * d;
        const u16* abase = packed + pt * M * box_stride;
        // This thread's B row: partner index n = c * 32 + br, kept as (row yy, column xr) of the
        // box and advanced by 32 per chunk (chunks load in increasing order).
        int yy, xr;
        {
            const int n = cmin * G_K + br;
            yy = n / bx.w;
            xr = n - yy * bx.w;
        }
        auto load = [&](int c, int stage) {
            const bool ok = c * G_K + br < npart;
            const long long tok = (long long)(bx.x + yy) * w + bx.y + xr;
#pragma unroll
            for (int cc = 0; cc < BCP; cc++) {
                const bool o = ok && bok[cc];
                cp_async16(&Bs[stage][br][(bc + cc) * 8], o ? x + boff[cc] + xbase + tok * d : x,
                           o ? 16 : 0);
            }
            xr += G_K;
            while (xr >= bx.w) { xr -= bx.w; yy++; }
#pragma unroll
            for (int k = 0; k < ACP; k++) {
                const int it = tid + k * NT, m = it >> 2, seg = it & 3;
                if (c >= ach[k].x && c < ach[k].y)
                    cp_async16(&As[stage][m][seg * 8],
                               abase + ((long long)c * M + m) * G_K + seg * 8, 16);
            }
            cp_async_commit();
        };
        auto mma_chunk = [&](int st) {
#pragma unroll
            for (int ks = 0; ks < G_K / 16; ks++) {
                unsigned a[2][4], b[4][4];
#pragma unroll
                for (int mt = 0; mt < 2; mt++)
                    ldsm_x4(a[mt], &As[st][wg * 32 + mt * 16 + (lane & 15)][ks * 16 + (lane >> 4) * 8]);
#pragma unroll
                for (int np = 0; np < 4; np++)
                    ldsm_x4_trans(b[np], &Bs[st][ks * 16 + (lane & 15)][wn * 64 + np * 16 + (lane >> 4) * 8]);
#pragma unroll
                for (int mt = 0; mt < 2; mt++)
#pragma unroll
                    for (int nt = 0; nt < 8; nt++)
                        mma16816<BF16>(acc[mt][nt], a[mt], b[nt >> 1][(nt & 1) * 2], b[nt >> 1][(nt & 1) * 2 + 1]);
            }
        };
#pragma unroll
        for (int s0 = 0; s0 < G3_ST - 1; s0++) {
            if (cmin + s0 < cmax) load(cmin + s0, s0);
            else cp_async_commit();
        }
        int st = 0;
        for (int c = cmin; c < cmax; c++) {
            cp_async_wait<G3_ST - 2>();
            __syncthreads();
            const int ld = st == 0 ? G3_ST - 1 : st - 1;  // (st + ST - 1) % ST
            if (c + G3_ST - 1 < cmax) load(c + G3_ST - 1, ld);
            else cp_async_commit();
            if (c >= wch.x && c < wch.y) mma_chunk(st);
            st = st == G3_ST - 1 ? 0 : st + 1;
        }
    }
    grad_store<8>(out, s_tok, wg * 32, f0 + wn * 64, acc, lane, D, d, F, S, own, inv, accumulate);
}

// NAME: t16 (16 x 8 tiles x 128 features, 256 threads, 4 pipeline stages: the default),
// t16s3 (3 stages), t16w (x 256 features, 512 threads, 3 stages), t32 (32 x 8 x 128, 512
// threads, 3 stages).
#define GRAD3_ENTRY(NAME, TY, GN, ST, MINB, SUF, BF)                                               \
    extern "C" __global__ void __launch_bounds__(TY * GN / 8, MINB) amf_dq3##NAME##_##SUF(         \
        const int2* pairs, const int* pair_off, const int* pair_idx, const int4* boxes,            \
        const int2* ranges, const u16* k, int H, int F, int S, int d, int w, int ntx, float inv,   \
        int accumulate, float* dq, const u16* packed, int box_stride) {                            \
        grad3_impl<BF, false, TY, GN, ST>(pairs, pair_off, pair_idx, boxes, ranges, k, H, F, S,    \
                                          d, w, ntx, inv, accumulate, dq, packed, box_stride);     \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(TY * GN / 8, MINB) amf_dk3##NAME##_##SUF(         \
        const int2* pairs, const int* pair_off, const int* pair_idx, const int4* boxes,            \
        const int2* ranges, const u16* q, int H, int F, int S, int d, int w, int ntx, float inv,   \
        int accumulate, float* dk, const u16* packed, int box_stride) {                            \
        grad3_impl<BF, true, TY, GN, ST>(pairs, pair_off, pair_idx, boxes, ranges, q, H, F, S, d,  \
                                         w, ntx, inv, accumulate, dk, packed, box_stride);         \
    }
GRAD3_ENTRY(t16, 16, 128, 4, 2, f16, false)
GRAD3_ENTRY(t16, 16, 128, 4, 2, bf16, true)
GRAD3_ENTRY(t16s3, 16, 128, 3, 2, f16, false)
GRAD3_ENTRY(t16s3, 16, 128, 3, 2, bf16, true)
GRAD3_ENTRY(t16w, 16, 256, 3, 1, f16, false)
GRAD3_ENTRY(t16w, 16, 256, 3, 1, bf16, true)
GRAD3_ENTRY(t32, 32, 128, 3, 1, f16, false)
GRAD3_ENTRY(t32, 32, 128, 3, 1, bf16, true)

// =============================================================================================
// Version 3 on Hopper's warpgroup MMA (sm_90a: compiled only where the module is built for
// compute_90a; elsewhere the entries are empty and never selected). The same tiles, ranges,
// packed score gradient and cp.async pipeline as grad3_impl, but each half of the 16 x 8 tile
// (64 own rows = two groups of 32) is one warpgroup whose wgmma.m64n{GN}k16 reads A (packed
// score rows) and B (partner rows) straight from shared memory: one instruction per 16
// partners instead of 2 x GN/8 mma.sync, 2 ldmatrix and GN/16 ldmatrix.trans per warp (run 14:
// the mma.sync kernels are issue-bound at 0.84 eligible warps per scheduler). Shared memory
// layouts (stage bases aligned to 1024 bytes):
//   B, N-major with the 128-byte swizzle: atoms of 8 partners x 64 features (1 KB; partner row
//      r at r * 128, its 16-byte feature chunk j at (j ^ r) * 16), the atom of partners 8kb ..
//      and features 64nb .. at nb * 4096 + kb * 1024: the descriptor's leading byte offset
//      (next 64 features) 4096, stride byte offset (next 8 partners) 1024. A warp's cp.async
//      covers 4 partner rows x 128 contiguous bytes: whole cache lines, and 512 bytes of
//      shared memory without bank conflicts. (Without swizzle, 8 x 8 core matrices, a copy
//      could have either whole lines or conflict-free stores but not both: H100, 2x the L2
//      requests, 1.35 against 0.84 ms for mma.sync.)
//   A, K-major with the 64-byte swizzle, 32 partners (64 bytes) per row: atoms of 8 rows x 64
//      bytes, row m at m * 64, its partners 8s .. at (s ^ ((m / 2) % 4)) * 16; stride byte
//      offset (next 8 rows) 512. A warp's copy: 8 rows x 64 bytes, contiguous in the packed
//      buffer (chunk-major) and in one 512-byte atom.
// H100, FastVMT's shape (run 16): dQ 0.77, dK 0.68 ms beside each other against 1.07 / 1.02
// for mma.sync; A without swizzle (core matrices) 1.08 / 0.97; 256 features per block (one
// block per SM, 212 registers) 0.88 / 0.82.
// Rows of a group whose range misses a chunk its warpgroup multiplies are zero-filled. One
// wgmma group stays in flight while the next chunk's barrier and copies are issued, so copies
// run ST - 2 chunks ahead. grid (ntiles, ceil(H*d / GN), F), 256 threads, dynamic shared memory
// ST * (128 + GN) * 32 * 2 + 1024 bytes.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define AMF_WGMMA 1
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }
// cp.async wrote through the generic proxy; wgmma reads through the async proxy.
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
// Matrix descriptor: start address, leading and stride byte offsets, swizzle mode (0: none,
// 1: 128 bytes, 2: 64 bytes).
__device__ __forceinline__ unsigned long long wg_desc(unsigned addr, unsigned lbo, unsigned sbo,
                                                      unsigned long long mode) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(sbo >> 4) << 32) | (mode << 62);
}
// wgmma.mma_async with both operands in shared memory (descriptors da, db), f32 accumulators
// d[0 .. N/2) (the warpgroup's 64 x N tile), D (+)= A . B; accumulate = 0 overwrites D. TB:
// imm-trans-b (1: B is N-major). The operand lists are spelled out once for N = 96 and 128.
#define WG_D48 \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
#define WG_D64 WG_D48, \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define WG_R48 \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"
#define WG_R64 WG_R48 ", %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define WGMMA_SS(N, TY, TB, REGS, OUTS, DA, DB, SC)                                               \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" SC ", 0;\n"                                   \
                 "wgmma.mma_async.sync.aligned.m64n" N "k16.f32." TY "." TY " {" REGS "}, %" DA  \
                 ", %" DB ", p, 1, 1, 0, " TB ";\n}\n"                                               \
                 : OUTS                                                                         \
                 : "l"(da), "l"(db), "r"(accumulate))
// D (64 x 128) += A (64 x 16, K-major) . B (16 x 128, N-major).
template <bool BF16>
__device__ __forceinline__ void wgmma_n128t(float* d, unsigned long long da, unsigned long long db,
                                            int accumulate) {
    if (BF16) WGMMA_SS("128", "bf16", "1", WG_R64, WG_D64, "64", "65", "66");
    else WGMMA_SS("128", "f16", "1", WG_R64, WG_D64, "64", "65", "66");
}
// D (64 x 96) (+)= A (64 x 16, K-major) . B (16 x 96, K-major).
template <bool BF16>
__device__ __forceinline__ void wgmma_n96(float* d, unsigned long long da, unsigned long long db,
                                          int accumulate) {
    if (BF16) WGMMA_SS("96", "bf16", "0", WG_R48, WG_D48, "48", "49", "50");
    else WGMMA_SS("96", "f16", "0", WG_R48, WG_D48, "48", "49", "50");
}
#endif

template <bool BF16, bool TRANS, int ST>
__device__ void grad3wg_impl(const int2* __restrict__ pairs, const int* __restrict__ pair_off,
                             const int* __restrict__ pair_idx, const int4* __restrict__ boxes,
                             const int2* __restrict__ ranges, const u16* __restrict__ x, int H, int F,
                             int S, int d, int w, int ntx, float inv, int accumulate,
                             float* __restrict__ out, const u16* __restrict__ packed, int box_stride) {
#ifdef AMF_WGMMA
    static_assert(ST >= 3, "one wgmma group in flight needs ST - 2 >= 1 chunks of copies ahead");
    constexpr int GN = 128;             // features per block: wgmma.m64n128k16
    constexpr int TY = 16;
    constexpr int M = TY * G3_W;        // 128 own tokens
    constexpr int NG = TY / 4;          // 4 groups of 32
    constexpr int NT = 256;             // 2 warpgroups of 64 own rows
    constexpr int NTN = GN / 8;         // n8 tiles per warpgroup
    constexpr int AST = M * G_K * 2;    // bytes per A stage
    constexpr int BST = G_K * GN * 2;   // bytes per B stage
    constexpr int BCP = BST / 16 / NT;  // 16-byte pieces of B per thread and chunk
    constexpr int ACP = AST / 16 / NT;  // 16-byte pieces of A per thread and chunk
    extern __shared__ __align__(128) u16 wg_smem[];
    __shared__ int s_tok[M];
    __shared__ int2 s_ch[NG];
    const int tile = blockIdx.x, own = blockIdx.z, ntiles = gridDim.x;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h = S / w;
    const int D = H * d;
    const int f0 = blockIdx.y * GN;
    const unsigned as0 = (smem_u32(wg_smem) + 1023u) & ~1023u, bs0 = as0 + ST * AST;
    for (int a = tid; a < M; a += NT) {
        const int y = (tile / ntx) * TY + a / G3_W, xx = (tile % ntx) * G3_W + a % G3_W;
        s_tok[a] = (y < h && xx < w) ? y * w + xx : -1;
    }
    // Visible to the store at the end even when no pair of this frame reaches a barrier.
    __syncthreads();
    // This thread's B pieces: partner br of each chunk, feature chunks c_j = 8 j + lane % 8
    // (8 features each; a warp: 4 partners x 128 bytes).
    const int br = warp * 4 + (lane >> 3);
    long long boff[BCP];
    bool bok[BCP];
    unsigned bdst[BCP];
#pragma unroll
    for (int j = 0; j < BCP; j++) {
        const int c = 8 * j + (lane & 7);
        const int fe = f0 + c * 8;
        bok[j] = fe < D;
        const int hh = fe / d, cc = fe - (fe / d) * d;
        boff[j] = (long long)hh * F * S * d + cc;
        bdst[j] = (unsigned)(j * 4096 + (br >> 3) * 1024 + (br & 7) * 128 + (((c & 7) ^ (br & 7)) * 16));
    }
    // This thread's A pieces: own row m = it / 4, partners 8 * (it % 4) .. of the chunk.
    unsigned adst[ACP];
#pragma unroll
    for (int k = 0; k < ACP; k++) {
        const int it = tid + k * NT, m = it >> 2, s = it & 3;
        adst[k] = (unsigned)(m * 64 + ((s ^ ((m >> 1) & 3)) * 16));
    }
    const int wgi = warp >> 2;  // warpgroup: own rows 64 wgi ..
    float acc[1][NTN][4];
#pragma unroll
    for (int b = 0; b < NTN; b++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[0][b][e] = 0.f;
    for (int pp = pair_off[own]; pp < pair_off[own + 1]; pp++) {
        const int pair = pair_idx[pp];
        const int pf = TRANS ? pairs[pair].x : pairs[pair].y;  // partner frame
        const long long pt = (long long)pair * ntiles + tile;
        const int4 bx = boxes[pt];
        const int npart = bx.z * bx.w;
        if (npart == 0) continue;
        __syncthreads();  // the previous pair's readers are done with the stages and s_ch
        if (tid < NG) s_ch[tid] = g3_chunks(ranges[pt * G3_MAXG + tid]);
        __syncthreads();
        int cmin = 1 << 30, cmax = 0;
#pragma unroll
        for (int q = 0; q < NG; q++) {
            const int2 ch = s_ch[q];
            if (ch.y > ch.x) { cmin = min(cmin, ch.x); cmax = max(cmax, ch.y); }
        }
        if (cmax <= cmin) continue;
        // The chunks each warpgroup multiplies: the union of its two groups' ranges.
        auto wg_union = [&](int g) {
            const int2 c0 = s_ch[2 * g], c1 = s_ch[2 * g + 1];
            if (c0.y <= c0.x) return c1;
            if (c1.y <= c1.x) return c0;
            return make_int2(min(c0.x, c1.x), max(c0.y, c1.y));
        };
        const int2 gch = wg_union(wgi);
        int2 ach[ACP], agch[ACP];
#pragma unroll
        for (int k = 0; k < ACP; k++) {
            const int m = (tid + k * NT) >> 2;
            ach[k] = s_ch[m / G3_GR];
            agch[k] = wg_union(m / 64);
        }
        const long long xbase = (long long)pf * S * d;
        const u16* abase = packed + pt * M * box_stride;
        // This thread's B row: partner index n = c * 32 + br, kept as (row yy, column xr) of the
        // box and advanced by 32 per chunk (chunks load in increasing order).
        int yy, xr;
        {
            const int n = cmin * G_K + br;
            yy = n / bx.w;
            xr = n - yy * bx.w;
        }
        auto load = [&](int c, int stage) {
            const bool ok = c * G_K + br < npart;
            const long long tok = (long long)(bx.x + yy) * w + bx.y + xr;
            const unsigned sb = bs0 + (unsigned)(stage * BST);
#pragma unroll
            for (int j = 0; j < BCP; j++) {
                const bool o = ok && bok[j];
                cp_async16_u32(sb + bdst[j], o ? x + boff[j] + xbase + tok * d : x, o ? 16 : 0);
            }
            xr += G_K;
            while (xr >= bx.w) { xr -= bx.w; yy++; }
            const unsigned sa = as0 + (unsigned)(stage * AST);
#pragma unroll
            for (int k = 0; k < ACP; k++) {
                const int it = tid + k * NT, m = it >> 2, s = it & 3;
                // Outside the row's range but multiplied by its warpgroup: zeros.
                if (c >= agch[k].x && c < agch[k].y) {
                    const bool mine = c >= ach[k].x && c < ach[k].y;
                    cp_async16_u32(sa + adst[k], abase + ((long long)c * M + m) * G_K + s * 8,
                                   mine ? 16 : 0);
                }
            }
            cp_async_commit();
        };
#pragma unroll
        for (int s0 = 0; s0 < ST - 2; s0++) {
            if (cmin + s0 < cmax) load(cmin + s0, s0);
            else cp_async_commit();
        }
        int st = 0;
        for (int c = cmin; c < cmax; c++) {
            cp_async_wait<ST - 3>();
            fence_async_smem();
            wg_wait<1>();  // chunk c - 2's products are done with the stage loaded next
            __syncthreads();
            const int ld = st + ST - 2 >= ST ? st - 2 : st + ST - 2;  // (st + ST - 2) % ST
            if (c + ST - 2 < cmax) load(c + ST - 2, ld);
            else cp_async_commit();
            if (c >= gch.x && c < gch.y) {
                wg_fence();
                // This warpgroup's 64 rows: 8 atoms of 8 rows.
                const unsigned sa = as0 + (unsigned)(st * AST) + wgi * 4096;
                const unsigned sb = bs0 + (unsigned)(st * BST);
#pragma unroll
                for (int ks = 0; ks < 2; ks++) {
                    // Partners 16 ks ..: 32 bytes into each swizzled row.
                    const unsigned long long da = wg_desc(sa + ks * 32, 16, 512, 2);
                    const unsigned long long db = wg_desc(sb + ks * 2048, 4096, 1024, 1);
                    wgmma_n128t<BF16>(&acc[0][0][0], da, db, 1);
                }
            }
            wg_commit();  // possibly empty: wait<1> above then always means "chunk c - 2"
            st = st == ST - 1 ? 0 : st + 1;
        }
        wg_wait<0>();
    }
    grad_store<NTN>(out, s_tok, wgi * 64 + (warp & 3) * 16, f0, acc, lane, D, d, F, S, own, inv,
                    accumulate);
#endif
}

// t16g: 16 x 8 tiles x 128 features, 4 stages, two blocks per SM.
#define GRAD3WG_ENTRY(NAME, MINB, SUF, BF)                                                         \
    extern "C" __global__ void __launch_bounds__(256, MINB) amf_dq3##NAME##_##SUF(                 \
        const int2* pairs, const int* pair_off, const int* pair_idx, const int4* boxes,            \
        const int2* ranges, const u16* k, int H, int F, int S, int d, int w, int ntx, float inv,   \
        int accumulate, float* dq, const u16* packed, int box_stride) {                            \
        grad3wg_impl<BF, false, 4>(pairs, pair_off, pair_idx, boxes, ranges, k, H, F, S, d, w,     \
                                       ntx, inv, accumulate, dq, packed, box_stride);              \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256, MINB) amf_dk3##NAME##_##SUF(                 \
        const int2* pairs, const int* pair_off, const int* pair_idx, const int4* boxes,            \
        const int2* ranges, const u16* q, int H, int F, int S, int d, int w, int ntx, float inv,   \
        int accumulate, float* dk, const u16* packed, int box_stride) {                            \
        grad3wg_impl<BF, true, 4>(pairs, pair_off, pair_idx, boxes, ranges, q, H, F, S, d, w,      \
                                      ntx, inv, accumulate, dk, packed, box_stride);               \
    }
GRAD3WG_ENTRY(t16g, 2, f16, false)
GRAD3WG_ENTRY(t16g, 2, bf16, true)

// The backward's logits (amf_logits3, not the fused forward) on wgmma (sm_90a). The block,
// grid, row tables, key box and split are those of logits3_impl; the product is transposed,
// keys x rows, so that each warpgroup's wgmma.m64n96k16 covers 64 keys of the chunk against all
// 96 rows (3 pairs x 32 query slots, not a multiple of 64). Both tiles are K-major (64 features
// = one 128-byte row per stage) with the 128-byte swizzle: row r at r * 128, its 16-byte chunk
// j at (j ^ (r % 8)) * 16; stride byte offset (next 8 rows) 1024, a k-step 32 bytes into the
// rows. A thread's copies are those of logits3_impl (a warp: 4 rows x 128 bytes, whole lines,
// conflict-free stores). Stages [K 128 x 128 B | Q 96 x 128 B], bases aligned to 1 KB.
// PD: how many stages the copies run ahead; with 3 stages, 2 (every stage waits for its
// products before the barrier) against 1 (one wgmma group in flight across the barrier):
// H100, FastVMT's shape, logits 0.54 against 0.61 ms (mma.sync: 0.89), 2x 1.21 against 1.43
// (2.03).
#define L3G_KB (L3_N * 128)             // bytes of a stage's key tile
#define L3G_STAGE (L3G_KB + L3_M * 128)  // bytes per stage (28 KB)
template <bool BF16, int PD>
__device__ void logits3wg_impl(const u16* __restrict__ q, const u16* __restrict__ k,
                               const int2* __restrict__ pairs, const int* __restrict__ groups,
                               int H, int F, int S, int d, int w, const int* __restrict__ slot_tok,
                               const int* __restrict__ slot_row, int nslots, int nrows,
                               const int2* __restrict__ win, int wh, int ww, float scale,
                               float* __restrict__ logits, int p0, int zx,
                               const float* __restrict__ active, int has_active) {
#ifdef AMF_WGMMA
    static_assert(PD >= 1 && PD < L3_ST, "copies run 1 .. ST - 1 stages ahead");
    extern __shared__ __align__(128) u16 lg_smem[];
    __shared__ int r_tok[L3_M], r_row[L3_M], r_r0[L3_M], r_c0[L3_M], r_pair[L3_M];
    __shared__ int bx[4];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long W = (long long)wh * ww;
    const int grp = blockIdx.y;
    const int stile = zx > 1 ? blockIdx.x / zx : blockIdx.x;
    const int zc = zx > 1 ? blockIdx.x % zx : blockIdx.z, zn = zx > 1 ? zx : gridDim.z;
    const int fj = pairs[groups[grp * L3_PG]].y;
    if (tid == 0) { bx[0] = 1 << 30; bx[1] = -1; bx[2] = 1 << 30; bx[3] = -1; }
    __syncthreads();
    if (tid < L3_M) {
        const int gi = tid / TQ, sl = stile * TQ + tid % TQ;
        const int pair = groups[grp * L3_PG + gi];
        int tok = -1, row = 0, r0 = 0, c0 = 0;
        if (pair >= 0 && sl < nslots) {
            tok = slot_tok[sl];
            row = slot_row[sl];
            const int2 st = win[(long long)pair * nrows + row];
            r0 = st.x; c0 = st.y;
            if (has_active && active[(long long)(p0 + pair) * nrows + row] == 0.0f) tok = -1;
        }
        r_tok[tid] = tok; r_row[tid] = row; r_r0[tid] = r0; r_c0[tid] = c0;
        r_pair[tid] = pair < 0 ? 0 : pair;
        if (tok >= 0) {
            atomicMin(&bx[0], r0); atomicMax(&bx[1], r0 + wh - 1);
            atomicMin(&bx[2], c0); atomicMax(&bx[3], c0 + ww - 1);
        }
    }
    __syncthreads();
    if (bx[1] < 0) return;  // no active row (block-uniform)
    const int by0 = bx[0], bx0 = bx[2], bw = bx[3] - bx[2] + 1;
    const int nkeys = (bx[1] - bx[0] + 1) * bw;
    const int dstages = d / L3_DC;
    const int nst = H * dstages;
    const int nch_all = (nkeys + L3_N - 1) / L3_N;
    const int nch = zc < nch_all ? (nch_all - zc + zn - 1) / zn : 0;
    const int total = nch * nst;
    const long long hstride = (long long)F * S * d;
    const unsigned smem0 = (smem_u32(lg_smem) + 1023u) & ~1023u;
    // Q rows of this thread: u = tid + i * 256 -> row u >> 3, 16-byte chunk u & 7.
    unsigned a_dst[3];
    const u16* a_src[3];
    int a_bytes[3];
#pragma unroll
    for (int i = 0; i < 3; i++) {
        const int u = tid + i * 256, r = u >> 3, c = u & 7;
        const int tok = r_tok[r];
        const bool ok = tok >= 0;
        const int fi = ok ? pairs[r_pair[r]].x : 0;
        a_dst[i] = (unsigned)(L3G_KB + r * 128 + ((c ^ (r & 7)) * 16));
        a_src[i] = q + ((long long)fi * S + (ok ? tok : 0)) * d + c * 8;
        a_bytes[i] = ok ? 16 : 0;
    }
    unsigned b_dst[4];
    const u16* b_src[4];
    int b_bytes[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int u = tid + i * 256, r = u >> 3, c = u & 7;
        b_dst[i] = (unsigned)(r * 128 + ((c ^ (r & 7)) * 16));
    }
    auto set_chunk = [&](int c) {  // key chunk c of the box: this thread's 4 key rows
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int u = tid + i * 256, n = c * L3_N + (u >> 3);
            const bool ok = n < nkeys;
            int kt = 0;
            if (ok) {
                const int yy = n / bw;
                kt = (by0 + yy) * w + bx0 + (n - yy * bw);
            }
            b_src[i] = k + ((long long)fj * S + kt) * d + (u & 7) * 8;
            b_bytes[i] = ok ? 16 : 0;
        }
    };
    int p_ring = 0, p_st = 0, p_fb = 0, p_cl = 0;
    long long p_off = 0;
    if (nch > 0) set_chunk(zc);
    auto issue = [&]() {
        const unsigned base = smem0 + p_ring * L3G_STAGE;
#pragma unroll
        for (int i = 0; i < 3; i++) cp_async16_u32(base + a_dst[i], a_src[i] + p_off, a_bytes[i]);
#pragma unroll
        for (int i = 0; i < 4; i++) cp_async16_u32(base + b_dst[i], b_src[i] + p_off, b_bytes[i]);
        p_ring = p_ring + 1 == L3_ST ? 0 : p_ring + 1;
        p_off += L3_DC;
        if (++p_fb == dstages) { p_fb = 0; p_off += hstride - d; }
        if (++p_st == nst) {
            p_st = 0;
            p_fb = 0;
            p_off = 0;
            if (++p_cl < nch) set_chunk(zc + p_cl * zn);
        }
    };
    const int wgi = warp >> 2, wi = warp & 3;  // keys 64 wgi + 16 wi + lane / 4 (+ 8)
    float acc[1][12][4];  // rows 8 j + 2 (lane % 4) (+ 1); each chunk's first k-step overwrites
#pragma unroll
    for (int j = 0; j < 12; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[0][j][e] = 0.f;
#pragma unroll
    for (int s = 0; s < PD; s++) {
        if (s < total) issue();
        cp_async_commit();
    }
    int c_ring = 0, c_st = 0, kc = zc * L3_N;
    for (int it = 0; it < total; it++) {
        cp_async_wait<PD - 1>();
        fence_async_smem();
        wg_wait<L3_ST - PD - 1>();  // the products that read the stage loaded next are done
        __syncthreads();
        if (it + PD < total) issue();
        cp_async_commit();
        const unsigned base = smem0 + c_ring * L3G_STAGE;
        // A warpgroup whose 64 keys lie past the box (last chunk) skips the product.
        if (kc + wgi * 64 < nkeys) {
            wg_fence();
#pragma unroll
            for (int ks = 0; ks < L3_DC / 16; ks++) {
                const unsigned long long da = wg_desc(base + wgi * 64 * 128 + ks * 32, 16, 1024, 1);
                const unsigned long long db = wg_desc(base + L3G_KB + ks * 32, 16, 1024, 1);
                wgmma_n96<BF16>(&acc[0][0][0], da, db, c_st > 0 || ks > 0);
            }
        }
        wg_commit();  // possibly empty: the wait above counts groups per stage
        c_ring = c_ring + 1 == L3_ST ? 0 : c_ring + 1;
        if (++c_st == nst) {
            // Chunk done: keep each row's in-window keys, scaled.
            wg_wait<0>();
            if (kc + wgi * 64 < nkeys) {
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    const int n = kc + wgi * 64 + wi * 16 + (lane >> 2) + hf * 8;
                    if (n >= nkeys) continue;
                    const int yy = n / bw;
                    const int ky = by0 + yy, kx = bx0 + (n - yy * bw);
#pragma unroll
                    for (int j = 0; j < 12; j++)
#pragma unroll
                        for (int e1 = 0; e1 < 2; e1++) {
                            const int m = j * 8 + 2 * (lane & 3) + e1;
                            const int dy = ky - r_r0[m], dx = kx - r_c0[m];
                            if (r_tok[m] >= 0 && (unsigned)dy < (unsigned)wh && (unsigned)dx < (unsigned)ww)
                                logits[((long long)r_pair[m] * nrows + r_row[m]) * W + dy * ww + dx] =
                                    acc[0][j][hf * 2 + e1] * scale;
                        }
                }
            }
            c_st = 0;
            kc += zn * L3_N;
        }
    }
    wg_wait<0>();
#endif
}

// L3G: stages of 28 KB, 1 KB to align them.
#define LOGITS3WG_ENTRY(NAME, BF, PD)                                                              \
    extern "C" __global__ void __launch_bounds__(256, 2) NAME(                                     \
        const u16* q, const u16* k, const int2* pairs, const int* groups, int H, int F, int S,     \
        int d, int w, const int* slot_tok, const int* slot_row, int nslots, int nrows,             \
        const int2* win, int wh, int ww, float scale, float* logits, int omode, int p0,            \
        float* outd, int zx, const float* active, int has_active) {                                \
        logits3wg_impl<BF, PD>(q, k, pairs, groups, H, F, S, d, w, slot_tok, slot_row, nslots,     \
                               nrows, win, wh, ww, scale, logits, p0, zx, active, has_active);     \
    }
LOGITS3WG_ENTRY(amf_logits3g_f16, false, 2)
LOGITS3WG_ENTRY(amf_logits3g_bf16, true, 2)

// Sum of n floats in one block of 1024 threads (fixed order: deterministic).
extern "C" __global__ void amf_sum(const float* __restrict__ v, long long n, float* __restrict__ out) {
    __shared__ double part[32];
    double s = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) s += (double)v[i];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (threadIdx.x == 0) out[0] = (float)s;
    }
}

// The loss plan on the device (spec.rs `loss_plan`, for a reference field that stays in device
// memory): coef[p*S+t] = pair weight where the reference moves more than `th` (or everywhere
// without a threshold), else 0; total (f64) and kept count summed with atomics. The mask test
// uses round-to-nearest intrinsics so it decides exactly as the host's f32 expression does.
extern "C" __global__ void amf_loss_coef(const float* __restrict__ ref, const float* __restrict__ pw,
                                         long long S, long long n, float th, int has_th,
                                         float* __restrict__ coef, double* total,
                                         unsigned long long* kept) {
    double t = 0.0;
    unsigned long long c = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float r0 = ref[2 * i], r1 = ref[2 * i + 1];
        const bool keep =
            !has_th || __fsqrt_rn(__fadd_rn(__fmul_rn(r0, r0), __fmul_rn(r1, r1))) > th;
        const float w = keep ? pw[i / S] : 0.0f;
        coef[i] = w;
        if (keep) {
            t += (double)w;
            c += 1;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        t += __shfl_down_sync(0xffffffffu, t, o);
        c += __shfl_down_sync(0xffffffffu, c, o);
    }
    if ((threadIdx.x & 31) == 0) {
        atomicAdd(total, t);
        atomicAdd(kept, c);
    }
}

// v *= s (the loss plan's normalisation by 1 / total).
extern "C" __global__ void amf_scale(float* __restrict__ v, long long n, float s) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        v[i] = __fmul_rn(v[i], s);
}
