// Fused attention (dense or 3D local window), forward and backward. Compiled at run time with
// NVRTC (no headers). Definition: kernels/src/attention/mod.rs. Layout: Q [BH, Nq, d],
// K [BH, Nk, d], V [BH, Nk, dv], O/dO [BH, Nq, dv], lse [BH, Nq] f32 (natural log).
//
// Tensor-core path (f16/bf16, d and dv multiples of 8, <= 128), FlashAttention-2 style:
//   attn_fwd_tc_<T>_d<DP>_w<NW>  one block of NW warps per query tile of 16*NW queries (a 3D
//       box TF x TY x TX of the token grid for Local, a raster range for Dense); iterates key
//       blocks of 64 gathered from the union box of the tile's windows (flattened in raster
//       order), then the text keys; exact per-element mask; cp.async double-buffered K/V;
//       ldmatrix + mma.sync m16n8k16 (f32 accumulation); online softmax in registers.
//   attn_fwd_ws_<T>_d<DP>    Local on sm_90 (DP 64/128): the same tiles, persistent and warp-
//       specialised (4 producer warps fill a ring of key-block stages guarded by mbarriers, 8
//       consumer warps of 16 rows skip the blocks they do not see without waiting for the others).
//   attn_dkdv_tc_<T>_d<DP>   one block of 4 warps per key tile of 64 (3D box for video keys,
//       raster for text keys / Dense); iterates query blocks of 32 from the box of queries that
//       see the tile (per-axis inverse window ranges); dK, dV in registers; dQ += dS K through
//       f32 atomics into a scratch accumulator; attn_dq_convert_<T> scales and converts it.
//   attn_delta_<T>           delta = rowsum(dO * O).
//   attn_fwd_dense_tc_<T>_d<DP>_m<MT>, attn_bwd_dense_tc_<T>_d<DP>_q<BQ>: the Dense mask with
//       d == dv == DP (64/128) without the window machinery (raster blocks, no codes); the
//       backward keeps dS^T key-major in two shared buffers (one barrier per query block).
//   Shared pieces (qk_products, online_softmax, pv_products, st_dp_products, dvdk_products,
//   dq_products, copy_row_pairs) are device functions; shared addresses are 32-bit, computed
//   once per thread. kernels/BENCHMARKS.md has the profile that motivated each.
// SIMT path (f32, and any other head size up to 256): one warp per query (forward, dQ) or per
// key (dK/dV), iterating exactly the visible set. Correctness first, not tuned.
// DP = head dims padded to 32/64/128 (features beyond d / dv are zero-filled in shared memory).

typedef unsigned short u16;
typedef unsigned int u32;

#define NEG_INF (__int_as_float(0xff800000))
#define LOG2E 1.4426950408889634f

struct LdF32 {
    typedef float T;
    static __device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
    static __device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
};
struct LdF16 {
    typedef u16 T;
    static __device__ __forceinline__ float ld(const u16* p, long long i) {
        float f;
        u16 v = p[i];
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
        return f;
    }
    static __device__ __forceinline__ void st(u16* p, long long i, float v) {
        u16 r;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(v));
        p[i] = r;
    }
};
struct LdBF16 {
    typedef u16 T;
    static __device__ __forceinline__ float ld(const u16* p, long long i) {
        return __uint_as_float(((unsigned)p[i]) << 16);
    }
    static __device__ __forceinline__ void st(u16* p, long long i, float v) {
        u16 r;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(v));
        p[i] = r;
    }
};

// Geometry of one call (passed by value; mirrors `Geo` in attention/cuda.rs).
struct Geo {
    int bh, nq, nk, d, dv;
    int local;              // 1: Local mask (then nq == video)
    int F, h, w;            // token grid (Dense: 1 x 1 x nq)
    int rt, rs;             // radii
    int fsz, ysz, xsz;      // window sizes per axis
    int video;              // F*h*w for Local, 0 for Dense
    float scale;            // logit scale
    float scale_log2;       // scale * log2(e)
};

__device__ __forceinline__ int wstart(int c, int r, int E, int sz) {
    int s = c - r;
    s = s < 0 ? 0 : s;
    return min(s, E - sz);
}
// First / last query coordinate whose window (radius r, size sz, extent E) contains kc.
__device__ __forceinline__ int qlo(int kc, int r, int E, int sz) {
    int lo = kc < sz ? 0 : kc - sz + r + 1;
    return min(lo, E - 1);
}
__device__ __forceinline__ int qhi(int kc, int r, int E, int sz) {
    return kc >= E - sz ? E - 1 : min(kc + r, E - 1);
}

// A 3D box of the token grid, flattened in raster order.
struct Box {
    int f0, y0, x0, nf, ny, nx;
    __device__ __forceinline__ int n() const { return nf * ny * nx; }
    // token and (f, y, x) of flat index i < n()
    __device__ __forceinline__ int decode(int i, const Geo& g, int& f, int& y, int& x) const {
        int nyx = ny * nx;
        int a = i / nyx;
        int rem = i - a * nyx;
        int b = rem / nx;
        f = f0 + a;
        y = y0 + b;
        x = x0 + rem - b * nx;
        return (f * g.h + y) * g.w + x;
    }
};


// ---------------------------------------------------------------------------------------------
// Small kernels.

// delta[row] = sum_f dO[row, f] * O[row, f]; one warp per row.
template <typename L>
__device__ void delta_impl(const typename L::T* __restrict__ o, const typename L::T* __restrict__ dout,
                           float* __restrict__ delta, long long rows, int dv) {
    long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    float s = 0.f;
    for (int f = lane; f < dv; f += 32) s += L::ld(o, row * dv + f) * L::ld(dout, row * dv + f);
    for (int m = 16; m; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
    if (lane == 0) delta[row] = s;
}

template <typename L>
__device__ void convert_impl(const float* __restrict__ acc, typename L::T* __restrict__ out, long long n,
                             float scale) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long step = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += step) L::st(out, i, acc[i] * scale);
}

#define SMALL_ENTRY(DT, L)                                                                                \
    extern "C" __global__ void attn_delta_##DT(const L::T* o, const L::T* dout, float* delta,            \
                                              long long rows, int dv) {                                  \
        delta_impl<L>(o, dout, delta, rows, dv);                                                         \
    }                                                                                                    \
    extern "C" __global__ void attn_dq_convert_##DT(const float* acc, L::T* out, long long n, float s) { \
        convert_impl<L>(acc, out, n, s);                                                                 \
    }
SMALL_ENTRY(f32, LdF32)
SMALL_ENTRY(f16, LdF16)
SMALL_ENTRY(bf16, LdBF16)

// ---------------------------------------------------------------------------------------------
// SIMT path. MAXF features per lane (head dims up to 32 * MAXF).
#define MAXF 8

__device__ __forceinline__ float warp_sum(float s) {
    for (int m = 16; m; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
    return s;
}

// Iterate the keys visible to query token qt: the window box (exactly) then the text keys.
// fn(key token) is called uniformly by the whole warp.
template <typename Fn>
__device__ __forceinline__ void for_visible_keys(const Geo& g, int qt, Fn fn) {
    if (!g.local) {
        for (int kt = 0; kt < g.nk; kt++) fn(kt);
        return;
    }
    int hw = g.h * g.w;
    int qf = qt / hw, qy = (qt % hw) / g.w, qx = qt % g.w;
    int fs = wstart(qf, g.rt, g.F, g.fsz), ys = wstart(qy, g.rs, g.h, g.ysz), xs = wstart(qx, g.rs, g.w, g.xsz);
    for (int f = fs; f < fs + g.fsz; f++)
        for (int y = ys; y < ys + g.ysz; y++)
            for (int x = xs; x < xs + g.xsz; x++) fn((f * g.h + y) * g.w + x);
    for (int kt = g.video; kt < g.nk; kt++) fn(kt);
}

// Iterate the queries that see key token kt.
template <typename Fn>
__device__ __forceinline__ void for_seeing_queries(const Geo& g, int kt, Fn fn) {
    if (!g.local || kt >= g.video) {
        for (int qt = 0; qt < g.nq; qt++) fn(qt);
        return;
    }
    int hw = g.h * g.w;
    int kf = kt / hw, ky = (kt % hw) / g.w, kx = kt % g.w;
    int f0 = qlo(kf, g.rt, g.F, g.fsz), f1 = qhi(kf, g.rt, g.F, g.fsz);
    int y0 = qlo(ky, g.rs, g.h, g.ysz), y1 = qhi(ky, g.rs, g.h, g.ysz);
    int x0 = qlo(kx, g.rs, g.w, g.xsz), x1 = qhi(kx, g.rs, g.w, g.xsz);
    for (int f = f0; f <= f1; f++)
        for (int y = y0; y <= y1; y++)
            for (int x = x0; x <= x1; x++) fn((f * g.h + y) * g.w + x);
}

// grid (ceil(BH*nq / 4)), block 128: one warp per (bh, query).
template <typename L>
__device__ void fwd_simt(const typename L::T* __restrict__ q, const typename L::T* __restrict__ k,
                         const typename L::T* __restrict__ v, typename L::T* __restrict__ o,
                         float* __restrict__ lse, Geo g) {
    long long row = (long long)blockIdx.x * 4 + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (row >= (long long)g.bh * g.nq) return;
    long long bh = row / g.nq;
    int qt = (int)(row % g.nq);
    float qr[MAXF], acc[MAXF];
#pragma unroll
    for (int j = 0; j < MAXF; j++) {
        int f = lane + 32 * j;
        qr[j] = f < g.d ? L::ld(q, row * g.d + f) : 0.f;
        acc[j] = 0.f;
    }
    float m = NEG_INF, l = 0.f;
    const long long kb = bh * g.nk;
    for_visible_keys(g, qt, [&](int kt) {
        float s = 0.f;
#pragma unroll
        for (int j = 0; j < MAXF; j++) {
            int f = lane + 32 * j;
            if (f < g.d) s += qr[j] * L::ld(k, (kb + kt) * g.d + f);
        }
        s = warp_sum(s) * g.scale_log2;
        float mn = fmaxf(m, s);
        float a = exp2f(m - mn), p = exp2f(s - mn);
        l = l * a + p;
#pragma unroll
        for (int j = 0; j < MAXF; j++) {
            int f = lane + 32 * j;
            acc[j] = acc[j] * a + (f < g.dv ? p * L::ld(v, (kb + kt) * g.dv + f) : 0.f);
        }
        m = mn;
    });
    float inv = 1.f / l;
#pragma unroll
    for (int j = 0; j < MAXF; j++) {
        int f = lane + 32 * j;
        if (f < g.dv) L::st(o, row * g.dv + f, acc[j] * inv);
    }
    if (lane == 0) lse[row] = (m + log2f(l)) / LOG2E;
}

// dQ: one warp per (bh, query); writes dq (T) = scale * sum_k dS K.
template <typename L>
__device__ void dq_simt(const typename L::T* __restrict__ q, const typename L::T* __restrict__ k,
                        const typename L::T* __restrict__ v, const typename L::T* __restrict__ dout,
                        const float* __restrict__ lse, const float* __restrict__ delta,
                        typename L::T* __restrict__ dq, Geo g) {
    long long row = (long long)blockIdx.x * 4 + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (row >= (long long)g.bh * g.nq) return;
    long long bh = row / g.nq;
    int qt = (int)(row % g.nq);
    float qr[MAXF], dor[MAXF], acc[MAXF];
#pragma unroll
    for (int j = 0; j < MAXF; j++) {
        int f = lane + 32 * j;
        qr[j] = f < g.d ? L::ld(q, row * g.d + f) : 0.f;
        dor[j] = f < g.dv ? L::ld(dout, row * g.dv + f) : 0.f;
        acc[j] = 0.f;
    }
    float l2 = lse[row] * LOG2E, dl = delta[row];
    const long long kb = bh * g.nk;
    for_visible_keys(g, qt, [&](int kt) {
        float s = 0.f, dp = 0.f;
#pragma unroll
        for (int j = 0; j < MAXF; j++) {
            int f = lane + 32 * j;
            if (f < g.d) s += qr[j] * L::ld(k, (kb + kt) * g.d + f);
            if (f < g.dv) dp += dor[j] * L::ld(v, (kb + kt) * g.dv + f);
        }
        s = warp_sum(s);
        dp = warp_sum(dp);
        float p = exp2f(s * g.scale_log2 - l2);
        float ds = p * (dp - dl);
#pragma unroll
        for (int j = 0; j < MAXF; j++) {
            int f = lane + 32 * j;
            if (f < g.d) acc[j] += ds * L::ld(k, (kb + kt) * g.d + f);
        }
    });
#pragma unroll
    for (int j = 0; j < MAXF; j++) {
        int f = lane + 32 * j;
        if (f < g.d) L::st(dq, row * g.d + f, acc[j] * g.scale);
    }
}

// dK, dV: one warp per (bh, key).
template <typename L>
__device__ void dkdv_simt(const typename L::T* __restrict__ q, const typename L::T* __restrict__ k,
                          const typename L::T* __restrict__ v, const typename L::T* __restrict__ dout,
                          const float* __restrict__ lse, const float* __restrict__ delta,
                          typename L::T* __restrict__ dk, typename L::T* __restrict__ dv, Geo g) {
    long long row = (long long)blockIdx.x * 4 + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (row >= (long long)g.bh * g.nk) return;
    long long bh = row / g.nk;
    int kt = (int)(row % g.nk);
    float kr[MAXF], vr[MAXF], ak[MAXF], av[MAXF];
#pragma unroll
    for (int j = 0; j < MAXF; j++) {
        int f = lane + 32 * j;
        kr[j] = f < g.d ? L::ld(k, row * g.d + f) : 0.f;
        vr[j] = f < g.dv ? L::ld(v, row * g.dv + f) : 0.f;
        ak[j] = 0.f;
        av[j] = 0.f;
    }
    const long long qb = bh * g.nq;
    for_seeing_queries(g, kt, [&](int qt) {
        long long qr = qb + qt;
        float s = 0.f, dp = 0.f;
#pragma unroll
        for (int j = 0; j < MAXF; j++) {
            int f = lane + 32 * j;
            if (f < g.d) s += kr[j] * L::ld(q, qr * g.d + f);
            if (f < g.dv) dp += vr[j] * L::ld(dout, qr * g.dv + f);
        }
        s = warp_sum(s);
        dp = warp_sum(dp);
        float p = exp2f(s * g.scale_log2 - lse[qr] * LOG2E);
        float ds = p * (dp - delta[qr]);
#pragma unroll
        for (int j = 0; j < MAXF; j++) {
            int f = lane + 32 * j;
            if (f < g.dv) av[j] += p * L::ld(dout, qr * g.dv + f);
            if (f < g.d) ak[j] += ds * L::ld(q, qr * g.d + f);
        }
    });
#pragma unroll
    for (int j = 0; j < MAXF; j++) {
        int f = lane + 32 * j;
        if (f < g.d) L::st(dk, row * g.d + f, ak[j] * g.scale);
        if (f < g.dv) L::st(dv, row * g.dv + f, av[j]);
    }
}

#define SIMT_ENTRY(DT, L)                                                                                 \
    extern "C" __global__ void __launch_bounds__(128) attn_fwd_simt_##DT(                                 \
        const L::T* q, const L::T* k, const L::T* v, L::T* o, float* lse, Geo g) {                       \
        fwd_simt<L>(q, k, v, o, lse, g);                                                                 \
    }                                                                                                    \
    extern "C" __global__ void __launch_bounds__(128) attn_dq_simt_##DT(                                  \
        const L::T* q, const L::T* k, const L::T* v, const L::T* dout, const float* lse,                 \
        const float* delta, L::T* dq, Geo g) {                                                           \
        dq_simt<L>(q, k, v, dout, lse, delta, dq, g);                                                    \
    }                                                                                                    \
    extern "C" __global__ void __launch_bounds__(128) attn_dkdv_simt_##DT(                                \
        const L::T* q, const L::T* k, const L::T* v, const L::T* dout, const float* lse,                 \
        const float* delta, L::T* dk, L::T* dv, Geo g) {                                                 \
        dkdv_simt<L>(q, k, v, dout, lse, delta, dk, dv, g);                                              \
    }
SIMT_ENTRY(f32, LdF32)
SIMT_ENTRY(f16, LdF16)
SIMT_ENTRY(bf16, LdBF16)

// ---------------------------------------------------------------------------------------------
// Tensor-core helpers (sm_80+).

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(smem)), "l"(gmem), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async16_a(unsigned saddr, const void* gmem, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(saddr), "l"(gmem), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, int bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smem_u32(smem)), "l"(gmem), "r"(bytes)
                 : "memory");
}
// dst[0] += a, dst[1] += b (8-byte aligned): one vector reduction on sm_90, two before.
__device__ __forceinline__ void red_add2(float* dst, float a, float b) {
#if __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(dst), "f"(a), "f"(b) : "memory");
#else
    atomicAdd(dst, a);
    atomicAdd(dst + 1, b);
#endif
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
// 2^x with denormal results flushed to zero: one MUFU.EX2 (exp2f adds denormal scaling around it).
__device__ __forceinline__ float ex2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
// ldmatrix from a 32-bit shared address computed once by the caller (no per-call cvta).
__device__ __forceinline__ void ldsm_x4_a(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t_a(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
template <bool BF16>
__device__ __forceinline__ void mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    if (BF16) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}
// Two f32 -> packed 16-bit pair (lo in the low half).
template <bool BF16>
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
    unsigned r;
    if (BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

#define BN 64  // keys per block (forward) / per key tile (backward)

// ---------------------------------------------------------------------------------------------
// Tensor-core building blocks shared by the forward and backward kernels (shared addresses in
// bytes; LD = row stride in u16 of the K/V/Q/dO tiles).

// C[mt][j], C[mt][j+1] += A[mt] B for the two 8-column halves of one ldmatrix.x4 B fragment, for
// every 16-row tile mt (each B fragment serves all MT row tiles).
template <bool BF16, int MT, int NC>
__device__ __forceinline__ void mma_x2(float (&c)[MT][NC][4], int j, const unsigned (&a)[MT][4], const unsigned (&b)[4]) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        mma16816<BF16>(c[mt][j], a[mt], b[0], b[1]);
        mma16816<BF16>(c[mt][j + 1], a[mt], b[2], b[3]);
    }
}

// S[mt] += Q K^T over DP features for NS/8 key columns: Q A-fragments from registers (QF ==
// DP/16, MT == 1) or from shared memory at sQa (+16 rows per mt); K as B at sKb (+16 rows per nj).
template <bool BF16, int DP, int MT, int NS, int LD, int QF>
__device__ __forceinline__ void qk_products(float (&s)[MT][NS / 8][4], const unsigned (&qf)[QF][4], unsigned sQa,
                                            unsigned sKb) {
#pragma unroll
    for (int ks = 0; ks < DP / 16; ks++) {
        unsigned a[MT][4];
        if (QF == DP / 16) {
#pragma unroll
            for (int i = 0; i < 4; i++) a[0][i] = qf[QF == DP / 16 ? ks : 0][i];
        } else {
#pragma unroll
            for (int mt = 0; mt < MT; mt++) ldsm_x4_a(a[mt], sQa + mt * 16 * LD * 2 + ks * 32);
        }
#pragma unroll
        for (int nj = 0; nj < NS / 16; nj++) {
            unsigned b[4];
            ldsm_x4_a(b, sKb + nj * 16 * LD * 2 + ks * 32);
            mma_x2<BF16, MT>(s, 2 * nj, a, b);
        }
    }
}

// Online softmax of one key block: raw logits s (unscaled; exp2 of s * sl2 - max by FMA) become
// probabilities, the running max/sum per row advance, and acc is rescaled. MASKED: rows may see
// no key yet (max -inf). LAZY: rescale only when some row's max moved (ex2(0) is exactly 1).
template <int MT, int NS, int DP, bool MASKED, bool LAZY>
__device__ __forceinline__ void online_softmax(float (&s)[MT][NS / 8][4], float (&mrow)[MT][2], float (&lrow)[MT][2],
                                               float (&acc)[MT][DP / 8][4], float sl2) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < NS / 8; nt++) {
            mx0 = fmaxf(mx0, fmaxf(s[mt][nt][0], s[mt][nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[mt][nt][2], s[mt][nt][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(mrow[mt][0], mx0 * sl2), mn1 = fmaxf(mrow[mt][1], mx1 * sl2);
        const float mu0 = MASKED && mn0 == NEG_INF ? 0.f : mn0, mu1 = MASKED && mn1 == NEG_INF ? 0.f : mn1;
        const float a0 = ex2_ftz(mrow[mt][0] - mu0), a1 = ex2_ftz(mrow[mt][1] - mu1);
        mrow[mt][0] = mn0;
        mrow[mt][1] = mn1;
        float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
        for (int nt = 0; nt < NS / 8; nt++) {
            s[mt][nt][0] = ex2_ftz(fmaf(s[mt][nt][0], sl2, -mu0));
            s[mt][nt][1] = ex2_ftz(fmaf(s[mt][nt][1], sl2, -mu0));
            s[mt][nt][2] = ex2_ftz(fmaf(s[mt][nt][2], sl2, -mu1));
            s[mt][nt][3] = ex2_ftz(fmaf(s[mt][nt][3], sl2, -mu1));
            rs0 += s[mt][nt][0] + s[mt][nt][1];
            rs1 += s[mt][nt][2] + s[mt][nt][3];
        }
        lrow[mt][0] = lrow[mt][0] * a0 + rs0;
        lrow[mt][1] = lrow[mt][1] * a1 + rs1;
        if (!LAZY || __any_sync(0xffffffffu, a0 != 1.f || a1 != 1.f)) {
#pragma unroll
            for (int i = 0; i < DP / 8; i++) {
                acc[mt][i][0] *= a0; acc[mt][i][1] *= a0;
                acc[mt][i][2] *= a1; acc[mt][i][3] *= a1;
            }
        }
    }
}

// The A fragment (16 rows x 16 columns kk*16..) of a C-fragment array (rows x NC/8 tiles): the
// register layouts match, so probabilities / dS feed the next product without shared memory.
template <bool BF16, int NC>
__device__ __forceinline__ void c_to_a(const float (&c)[NC / 8][4], int kk, unsigned (&a)[4]) {
    a[0] = pack2<BF16>(c[2 * kk][0], c[2 * kk][1]);
    a[1] = pack2<BF16>(c[2 * kk][2], c[2 * kk][3]);
    a[2] = pack2<BF16>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    a[3] = pack2<BF16>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// acc[mt] += P[mt] V for one key block: V (row-major keys x features) as B through ldmatrix.trans
// at sVb (+16 key rows per kk).
template <bool BF16, int DP, int MT, int NS, int LD>
__device__ __forceinline__ void pv_products(const float (&s)[MT][NS / 8][4], float (&acc)[MT][DP / 8][4], unsigned sVb) {
#pragma unroll
    for (int kk = 0; kk < NS / 16; kk++) {
        unsigned a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) c_to_a<BF16, NS>(s[mt], kk, a[mt]);
#pragma unroll
        for (int fj = 0; fj < DP / 16; fj++) {
            unsigned b[4];
            ldsm_x4_t_a(b, sVb + kk * 16 * LD * 2 + fj * 32);
            mma_x2<BF16, MT>(acc, 2 * fj, a, b);
        }
    }
}

// Backward, per warp of 16 keys: S^T = K Q^T and dP^T = V dO^T for NQ queries (K, V as A at
// sKa / sVa; Q, dO as B at sQb / sDb, +16 query rows per nj).
template <bool BF16, int DP, int NQ, int LD>
__device__ __forceinline__ void st_dp_products(float (&st)[NQ / 8][4], float (&dp)[NQ / 8][4], unsigned sKa, unsigned sVa,
                                               unsigned sQb, unsigned sDb) {
#pragma unroll
    for (int ks = 0; ks < DP / 16; ks++) {
        unsigned ka[4], va[4];
        ldsm_x4_a(ka, sKa + ks * 32);
        ldsm_x4_a(va, sVa + ks * 32);
#pragma unroll
        for (int nj = 0; nj < NQ / 16; nj++) {
            unsigned b[4], c[4];
            const unsigned off = nj * 16 * LD * 2 + ks * 32;
            ldsm_x4_a(b, sQb + off);
            ldsm_x4_a(c, sDb + off);
            mma16816<BF16>(st[2 * nj], ka, b[0], b[1]);
            mma16816<BF16>(st[2 * nj + 1], ka, b[2], b[3]);
            mma16816<BF16>(dp[2 * nj], va, c[0], c[1]);
            mma16816<BF16>(dp[2 * nj + 1], va, c[2], c[3]);
        }
    }
}

// dV += P^T dO and dK += dS^T Q over 16 queries (pa, sa: A fragments; dO, Q as B through
// ldmatrix.trans at sDt / sQt).
template <bool BF16, int DP, int LD>
__device__ __forceinline__ void dvdk_products(const unsigned (&pa)[4], const unsigned (&sa)[4], float (&adv)[DP / 8][4],
                                              float (&adk)[DP / 8][4], unsigned sDt, unsigned sQt) {
#pragma unroll
    for (int fj = 0; fj < DP / 16; fj++) {
        unsigned b[4], c[4];
        ldsm_x4_t_a(b, sDt + fj * 32);
        ldsm_x4_t_a(c, sQt + fj * 32);
        mma16816<BF16>(adv[2 * fj], pa, b[0], b[1]);
        mma16816<BF16>(adv[2 * fj + 1], pa, b[2], b[3]);
        mma16816<BF16>(adk[2 * fj], sa, c[0], c[1]);
        mma16816<BF16>(adk[2 * fj + 1], sa, c[2], c[3]);
    }
}

// aq = dS K over NK keys for 16 queries and HF features: dS^T (key-major, row stride LDT) and K
// (row stride LD) both through ldmatrix.trans (at sSt / sKt, +16 keys per ks).
template <bool BF16, int NK, int HF, int LD, int LDT>
__device__ __forceinline__ void dq_products(float (&aq)[HF / 8][4], unsigned sSt, unsigned sKt) {
#pragma unroll
    for (int i = 0; i < HF / 8; i++) aq[i][0] = aq[i][1] = aq[i][2] = aq[i][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < NK / 16; ks++) {
        unsigned a[4];
        ldsm_x4_t_a(a, sSt + ks * 16 * LDT * 2);
#pragma unroll
        for (int fj = 0; fj < HF / 16; fj++) {
            unsigned b[4];
            ldsm_x4_t_a(b, sKt + ks * 16 * LD * 2 + fj * 32);
            mma16816<BF16>(aq[2 * fj], a, b[0], b[1]);
            mma16816<BF16>(aq[2 * fj + 1], a, b[2], b[3]);
        }
    }
}

// Rows first..first+ROWS of two row-major [*, DP] tensors a, b (already offset to the head) into
// shared tiles da, db (row stride LD), 16-byte cp.async chunks; rows at or past n are zero-filled.
template <int ROWS, int DP, int LD, int NT>
__device__ __forceinline__ void copy_row_pairs(u16* da, u16* db, const u16* a, const u16* b, int first, int n, int tid) {
    constexpr int CH = DP / 8;
#pragma unroll
    for (int u = tid; u < ROWS * CH; u += NT) {
        const int r = u / CH, c = u % CH;
        const int tok = first + r;
        const bool ok = tok < n;
        const long long row = ok ? tok : 0;
        cp_async16(da + r * LD + c * 8, a + row * DP + c * 8, ok ? 16 : 0);
        cp_async16(db + r * LD + c * 8, b + row * DP + c * 8, ok ? 16 : 0);
    }
}

// Bits lo..hi (clipped to 0..n-1) set.
__device__ __forceinline__ unsigned range_bits(int lo, int hi, int n) {
    lo = max(lo, 0);
    hi = min(hi, n - 1);
    if (lo > hi) return 0u;
    return ((2u << hi) - 1u) & ~((1u << lo) - 1u);
}
// Separable visibility masks. A block's rows form a 3D tile (nominal dims TF x TY x TX,
// TF + TY + TX <= 32, origin o); row (a, b, c) of the tile gets the 3-bit selector
// M = 1<<a | 1<<(TF+b) | 1<<(TF+TY+c). A partner column gets the code of the tile positions
// it is visible to, per axis; the pair is visible iff (code & M) == M.

// Key union box of a Local query box: windows of its first / last coordinate per axis.
__device__ __forceinline__ Box union_box(const Geo& g, const Box& qb) {
    Box kb;
    kb.f0 = wstart(qb.f0, g.rt, g.F, g.fsz);
    kb.nf = wstart(qb.f0 + qb.nf - 1, g.rt, g.F, g.fsz) + g.fsz - kb.f0;
    kb.y0 = wstart(qb.y0, g.rs, g.h, g.ysz);
    kb.ny = wstart(qb.y0 + qb.ny - 1, g.rs, g.h, g.ysz) + g.ysz - kb.y0;
    kb.x0 = wstart(qb.x0, g.rs, g.w, g.xsz);
    kb.nx = wstart(qb.x0 + qb.nx - 1, g.rs, g.w, g.xsz) + g.xsz - kb.x0;
    return kb;
}
// A Local query tile and the keys it iterates (attn_fwd_ws): the union box of its windows (per-
// axis clamp rule on the tile's first and last coordinate), flattened in raster order into nkb
// blocks of BN, then the text keys in blocks of BN; nb blocks in all. (fwd_tc computes the same
// inline: holding this struct there cost it 176 bytes of spills.)
struct LocalTile {
    Box qb, kb;
    int nbox, nkb, nb;
};
// Tile t of the (ntf, nty, ntx) grid of TF x TY x TX tiles over the Local mask's video grid.
__device__ __forceinline__ LocalTile local_tile(const Geo& g, int t, int TF, int TY, int TX, int nty, int ntx) {
    LocalTile lt;
    const int tx = t % ntx, ty = (t / ntx) % nty, tf = t / (ntx * nty);
    Box& qb = lt.qb;
    qb.f0 = tf * TF; qb.y0 = ty * TY; qb.x0 = tx * TX;
    qb.nf = min(TF, g.F - qb.f0); qb.ny = min(TY, g.h - qb.y0); qb.nx = min(TX, g.w - qb.x0);
    lt.kb = union_box(g, qb);
    lt.nbox = lt.kb.n();
    lt.nkb = (lt.nbox + BN - 1) / BN;
    lt.nb = lt.nkb + (g.nk - g.video + BN - 1) / BN;
    return lt;
}
// Visibility code of key (f, y, x) for a query tile at qb of nominal dims TF x TY x TX: per
// axis, the bits of the tile coordinates whose window contains the key's.
__device__ __forceinline__ unsigned key_code(const Geo& g, const Box& qb, int TF, int TY, int TX, int f, int y, int x) {
    return range_bits(qlo(f, g.rt, g.F, g.fsz) - qb.f0, qhi(f, g.rt, g.F, g.fsz) - qb.f0, TF) |
           range_bits(qlo(y, g.rs, g.h, g.ysz) - qb.y0, qhi(y, g.rs, g.h, g.ysz) - qb.y0, TY) << TF |
           range_bits(qlo(x, g.rs, g.w, g.xsz) - qb.x0, qhi(x, g.rs, g.w, g.xsz) - qb.x0, TX) << (TF + TY);
}
// Key idx of block jj of a Local tile: token (-1 = none) and visibility code (all bits for text
// keys, 0 for none).
__device__ __forceinline__ void block_key(const Geo& g, const LocalTile& lt, int TF, int TY, int TX, int jj, int idx,
                                          int& tok, unsigned& code) {
    tok = -1;
    code = 0u;
    if (jj < lt.nkb) {
        const int i = jj * BN + idx;
        if (i < lt.nbox) {
            int f, y, x;
            tok = lt.kb.decode(i, g, f, y, x);
            code = key_code(g, lt.qb, TF, TY, TX, f, y, x);
        }
    } else {
        const int t = g.video + (jj - lt.nkb) * BN + idx;
        if (t < g.nk) {
            tok = t;
            code = 0xffffffffu;
        }
    }
}

// Forward epilogue: O = acc / l (rows with token >= 0 of head bh's nq rows; dv features) and
// lse = (m + log2 l) / log2 e (m in log2 units) for the thread's rows (16-row tile mt, half h2:
// row gq + 8*h2).
template <bool BF16, int DP, int MT>
__device__ __forceinline__ void store_rows(const float (&acc)[MT][DP / 8][4], const float (&mrow)[MT][2],
                                           const float (&lrow)[MT][2], const int (&tokq)[MT][2], long long bh,
                                           u16* __restrict__ o, float* __restrict__ lse, int nq, int dv, int tq) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h2 = 0; h2 < 2; h2++) {
            float l = lrow[mt][h2];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            if (tokq[mt][h2] < 0) continue;
            float inv = 1.f / l;
            long long row = bh * nq + tokq[mt][h2];
#pragma unroll
            for (int nt = 0; nt < DP / 8; nt++) {
                int f = nt * 8 + 2 * tq;
                if (f < dv) {
                    unsigned pr = pack2<BF16>(acc[mt][nt][2 * h2] * inv, acc[mt][nt][2 * h2 + 1] * inv);
                    *(unsigned*)(o + row * dv + f) = pr;
                }
            }
            if (tq == 0) lse[row] = (mrow[mt][h2] + log2f(l)) / LOG2E;
        }
}

// ---------------------------------------------------------------------------------------------
// Forward, tensor cores. grid (ntiles, BH), block 32*NW, MT 16-row tiles per warp, dynamic smem
// (16*MT*NW + 4*BN) * (DP+8) * 2 + 3*BN*8 + 64 bytes. Tile t = (tf, ty, tx) with tile dims
// (TF, TY, TX), TF*TY*TX <= 16*MT*NW; grid of tiles (ntf, nty, ntx) over (F, h, w) (Dense: 1 x 1 x nq).
template <bool BF16, int DP, int NW, int MT>
__device__ void fwd_tc(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                       u16* __restrict__ o, float* __restrict__ lse, Geo g, int TF, int TY, int TX, int nty,
                       int ntx) {
    constexpr int BM = 16 * MT * NW;
    constexpr int LD = DP + 8;
    constexpr int NT = 32 * NW;
    constexpr int CH = DP / 8;  // 16-byte chunks per row
    extern __shared__ __align__(16) unsigned char smem[];
    u16* Qs = (u16*)smem;
    u16* Ks = Qs + BM * LD;         // [2][BN][LD]
    u16* Vs = Ks + 2 * BN * LD;     // [2][BN][LD]
    int* ktok = (int*)(Vs + 2 * BN * LD);  // [3][BN]
    unsigned* kinf = (unsigned*)(ktok + 3 * BN);  // [3][BN] visibility codes
    unsigned* kor = kinf + 3 * BN;                  // [3][2] OR of the codes per half block

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int gq = lane >> 2, tq = lane & 3;
    const long long bh = blockIdx.y;
    const int gh = g.local ? g.h : 1, gw = g.local ? g.w : g.nq, gF = g.local ? g.F : 1;
    Geo gg = g;
    gg.h = gh;
    gg.w = gw;

    // Query tile box.
    int tile = blockIdx.x;
    int tx = tile % ntx, ty = (tile / ntx) % nty, tf = tile / (ntx * nty);
    Box qb;
    qb.f0 = tf * TF; qb.y0 = ty * TY; qb.x0 = tx * TX;
    qb.nf = min(TF, gF - qb.f0); qb.ny = min(TY, gh - qb.y0); qb.nx = min(TX, gw - qb.x0);
    const int nqb = qb.n();

    // Key union box: windows of the tile's first / last coordinate per axis.
    Box kb;
    int nbox, nkb, ntb;
    if (g.local) {
        kb = union_box(g, qb);
        nbox = kb.n();
        nkb = (nbox + BN - 1) / BN;
        ntb = (g.nk - g.video + BN - 1) / BN;
    } else {
        kb.f0 = 0; kb.y0 = 0; kb.x0 = 0; kb.nf = 1; kb.ny = 1; kb.nx = g.nk;
        nbox = g.nk;
        nkb = (nbox + BN - 1) / BN;
        ntb = 0;
    }
    const int nb = nkb + ntb;

    // Decode key block jj into slot: token (-1 = none) and visibility code.
    auto decode = [&](int jj, int slot) {
        if (tid < BN) {
            int tok = -1;
            unsigned code = 0u;
            if (jj < nkb) {
                int i = jj * BN + tid;
                if (i < nbox) {
                    int f, y, x;
                    tok = kb.decode(i, gg, f, y, x);
                    code = g.local ? key_code(g, qb, TF, TY, TX, f, y, x) : 0xffffffffu;
                }
            } else {
                int t = g.video + (jj - nkb) * BN + tid;
                if (t < g.nk) { tok = t; code = 0xffffffffu; }
            }
            ktok[slot * BN + tid] = tok;
            kinf[slot * BN + tid] = code;
            unsigned o = __reduce_or_sync(0xffffffffu, code);
            if ((tid & 31) == 0) kor[slot * 2 + (tid >> 5)] = o;
        }
    };
    // K/V block copy: this thread's 16-byte chunk lc of rows lr0, lr0 + RS, ...: one token lookup
    // and two copies per row, 32-bit offsets from the head's base pointers.
    // (Set up inside the lambda, once per block: kept live across the loop they spilled.)
    constexpr int RS = NT / CH;
    auto load_kv = [&](int buf, int slot) {
        const int lc = tid % CH, lr0 = tid / CH;
        const bool kcol = lc * 8 < g.d, vcol = lc * 8 < g.dv;
        const u16* kh = k + bh * (long long)g.nk * g.d + (kcol ? lc * 8 : 0);
        const u16* vh = v + bh * (long long)g.nk * g.dv + (vcol ? lc * 8 : 0);
        const unsigned sKc = smem_u32(Ks) + (lr0 * LD + lc * 8) * 2, sVc = smem_u32(Vs) + (lr0 * LD + lc * 8) * 2;
        const int* kt = ktok + slot * BN;
#pragma unroll
        for (int i = 0; i < BN / RS; i++) {
            const int tok = kt[lr0 + i * RS];
            const bool ok = tok >= 0;
            const long long t = ok ? tok : 0;
            const unsigned off = (buf * BN + i * RS) * LD * 2;
            cp_async16_a(sKc + off, kh + t * g.d, ok && kcol ? 16 : 0);
            cp_async16_a(sVc + off, vh + t * g.dv, ok && vcol ? 16 : 0);
        }
    };

    decode(0, 0);
    if (nb > 1) decode(1, 1);
    // Q tile.
    for (int u = tid; u < BM * CH; u += NT) {
        int r = u / CH, c = u % CH;
        bool ok = r < nqb && c * 8 < g.d;
        long long row = 0;
        if (ok) {
            int f, y, x;
            row = bh * g.nq + qb.decode(r, gg, f, y, x);
        }
        cp_async16(Qs + r * LD + c * 8, ok ? q + row * g.d + c * 8 : q, ok ? 16 : 0);
    }
    __syncthreads();
    load_kv(0, 0);
    cp_async_commit();

    // Per-thread rows: warp*16*MT + mt*16 + gq (+8); their selectors and tokens.
    unsigned msel[MT][2];
    int tokq[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h2 = 0; h2 < 2; h2++) {
            int r = warp * 16 * MT + mt * 16 + gq + 8 * h2;
            msel[mt][h2] = 1u;
            tokq[mt][h2] = -1;
            if (r < nqb) {
                int f, y, x;
                tokq[mt][h2] = qb.decode(r, gg, f, y, x);
                if (g.local) msel[mt][h2] = (1u << (f - qb.f0)) | (1u << (TF + y - qb.y0)) | (1u << (TF + TY + x - qb.x0));
            }
        }

    // Shared addresses (bytes) computed once per thread: see fwd_dense_tc.
    const unsigned sQ = smem_u32(Qs), sK = smem_u32(Ks), sV = smem_u32(Vs);
    const unsigned a_row = ((warp * 16 * MT + (lane & 15)) * LD + (lane >> 4) * 8) * 2;
    const unsigned b_nt = (((lane & 7) + ((lane >> 4) << 3)) * LD + ((lane >> 3) & 1) * 8) * 2;
    const unsigned b_tr = ((lane & 15) * LD + (lane >> 4) * 8) * 2;

    float acc[MT][DP / 8][4];
    float mrow[MT][2], lrow[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int i = 0; i < DP / 8; i++) acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.f;
        mrow[mt][0] = mrow[mt][1] = NEG_INF;
        lrow[mt][0] = lrow[mt][1] = 0.f;
    }
    // MT == 1: Q fragments stay in registers; MT == 2: reloaded from shared memory per k-step
    // (each K/V fragment then serves two 16-row tiles).
    unsigned qf[MT == 1 ? DP / 16 : 1][4];

    for (int j = 0; j < nb; j++) {
        const int buf = j & 1, slot = j % 3;
        if (j + 1 < nb) {
            load_kv(buf ^ 1, (j + 1) % 3);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        // Decode block j+2 now, overlapped with the other warps' products, rather than before the
        // closing barrier (the profile showed 17% of samples waiting there). Its slot was last
        // read in step j-1, and step j+1 reads it after this step's closing barrier.
        if (j + 2 < nb) decode(j + 2, (j + 2) % 3);
        if (MT == 1 && j == 0) {
#pragma unroll
            for (int ks = 0; ks < (MT == 1 ? DP / 16 : 1); ks++)
                ldsm_x4_a(qf[ks], sQ + a_row + ks * 32);
        }
        const unsigned koff = buf * BN * LD * 2;
        const bool full = (j >= nkb || !g.local) &&
                          ((j < nkb) ? (j + 1) * BN <= nbox : g.video + (j - nkb + 1) * BN <= g.nk);
        // A warp none of whose rows sees any key of the block skips it (warp-uniform). (Skipping
        // per half block measured no faster at 1/7 and made the 4x32 variant spill.)
        bool active = true;
        if (!full) {
            unsigned o = kor[slot * 2] | kor[slot * 2 + 1];
            bool mine = false;
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int h2 = 0; h2 < 2; h2++)
                    mine = mine || (tokq[mt][h2] >= 0 && (o & msel[mt][h2]) == msel[mt][h2]);
            active = __any_sync(0xffffffffu, mine);
        }
        if (active) {
            float s[MT][BN / 8][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int i = 0; i < BN / 8; i++) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
            qk_products<BF16, DP, MT, BN, LD>(s, qf, sQ + a_row, sK + koff + b_nt);
            // Mask (local video blocks and partial blocks). Raw logits stay unscaled (scale > 0
            // keeps the max); exp2 takes s * scale_log2 - m by FMA.
            const unsigned* inf = kinf + slot * BN;
            if (!full) {
#pragma unroll
                for (int nt = 0; nt < BN / 8; nt++) {
                    uint2 cc = *(const uint2*)(inf + nt * 8 + 2 * tq);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            unsigned code = (e & 1) ? cc.y : cc.x, m = msel[mt][e >> 1];
                            if ((code & m) != m) s[mt][nt][e] = NEG_INF;
                        }
                }
            }
            online_softmax<MT, BN, DP, true, false>(s, mrow, lrow, acc, g.scale_log2);
            pv_products<BF16, DP, MT, BN, LD>(s, acc, sV + koff + b_tr);
        }  // active
        __syncthreads();
    }
    store_rows<BF16, DP, MT>(acc, mrow, lrow, tokq, bh, o, lse, g.nq, g.dv, tq);
}

#define FWD_TC_ENTRY(T, B, DP, NW, MT)                                                                    \
    extern "C" __global__ void __launch_bounds__(32 * NW) attn_fwd_tc_##T##_d##DP##_w##NW##_m##MT(        \
        const u16* q, const u16* k, const u16* v, u16* o, float* lse, Geo g, int TF, int TY, int TX,      \
        int nty, int ntx) {                                                                               \
        fwd_tc<B, DP, NW, MT>(q, k, v, o, lse, g, TF, TY, TX, nty, ntx);                                  \
    }
#define FWD_TC_DT(T, B)             \
    FWD_TC_ENTRY(T, B, 32, 4, 1)    \
    FWD_TC_ENTRY(T, B, 64, 4, 1)    \
    FWD_TC_ENTRY(T, B, 128, 4, 1)   \
    FWD_TC_ENTRY(T, B, 32, 8, 1)    \
    FWD_TC_ENTRY(T, B, 64, 8, 1)    \
    FWD_TC_ENTRY(T, B, 128, 8, 1)   \
    FWD_TC_ENTRY(T, B, 64, 4, 2)    \
    FWD_TC_ENTRY(T, B, 128, 4, 2)
FWD_TC_DT(f16, false)
FWD_TC_DT(bf16, true)

// ---------------------------------------------------------------------------------------------
// Local forward, warp-specialised (sm_90). Why: fwd_tc puts a block barrier around every 64-key
// block, so each warp waits for the slowest one although it sees only part of its tile's union
// box (at 1/7 a 4-row warp sees ~60% of the box's blocks); the H100 profile showed it latency-
// bound (33% of issue slots busy, 10% of samples at the closing barrier). Here 4 producer warps
// decode key blocks (tokens, visibility codes) and copy them with cp.async into NSTG shared-
// memory stages; per stage one mbarrier publishes the codes, another completes when the copies
// land. 8 consumer warps of 16 query rows each wait only on the stage they read, skip a block
// none of their rows sees without waiting for its data and release the stage through a third
// mbarrier, so warps run up to NSTG blocks apart. (One cp.async.bulk per key row instead was
// 2.3x slower than fwd_tc; a single producer warp 1.6x: its outstanding copies were too few.)
// Persistent: one block per SM takes (tile, head) items from an atomic counter (zeroed by the
// host before the launch); the stream of stages runs across items, each item's Q tile (128 rows
// = one stage) first, which the consumers load into registers. Tiles have 128 rows (TF x TY x TX
// as fwd_tc's cost model picks).
// Dynamic smem: 2*NSTG*BN*(DP+8)*2 + NSTG*BN*8 + NSTG*16 + 32 + 3*NSTG*8 bytes.

__device__ __forceinline__ void mbar_init(unsigned a, unsigned count) {
    asm volatile("mbarrier.init.shared.b64 [%0], %1;" ::"r"(a), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned a) {
    asm volatile("{ .reg .b64 st; mbarrier.arrive.shared.b64 st, [%0]; }" ::"r"(a) : "memory");
}
__device__ __forceinline__ void mbar_wait(unsigned a, unsigned parity) {
    unsigned ok;
    do {
#if __CUDA_ARCH__ >= 900
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(ok) : "r"(a), "r"(parity) : "memory");
#else
        asm volatile("{ .reg .pred p; mbarrier.test_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(ok) : "r"(a), "r"(parity) : "memory");
#endif
    } while (!ok);
}
// Arrive on mbar when this thread's cp.async copies issued so far have landed (counts as one of
// the expected arrivals).
__device__ __forceinline__ void mbar_arrive_cp_async(unsigned a) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];" ::"r"(a) : "memory");
}

template <bool BF16, int DP, int NSTG>
__device__ void fwd_local_ws(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                             u16* __restrict__ o, float* __restrict__ lse, Geo g, int TF, int TY, int TX, int nty,
                             int ntx, int* __restrict__ counter) {
    constexpr int NC = 8;         // consumer warps
    constexpr int BM = 16 * NC;   // query rows per tile (== 2 * BN: a Q tile fills one stage)
    constexpr int LD = DP + 8;
    constexpr int NP = 4;         // producer warps
    constexpr int PT = 32 * NP;   // producer threads
    constexpr int CH = DP / 8;    // 16-byte chunks per row
    constexpr int RS = PT / CH;   // rows per producer copy step
    extern __shared__ __align__(16) unsigned char smem[];
    u16* Ks = (u16*)smem;                               // [NSTG][BN][LD]
    u16* Vs = Ks + NSTG * BN * LD;                      // [NSTG][BN][LD]
    unsigned* kinf = (unsigned*)(Vs + NSTG * BN * LD);  // [NSTG][BN] visibility codes
    int* ktok = (int*)(kinf + NSTG * BN);               // [NSTG][BN] key tokens (producers)
    int* meta = ktok + NSTG * BN;                       // [NSTG][4]: item (-1: end), block (-1: Q tile), OR, AND
    int* pshare = meta + NSTG * 4;                      // [8]: producers' item (x2), OR and AND partials (x2)
    // full[NSTG] (copies landed), empty[NSTG] (released), mfull[NSTG] (codes and meta)
    unsigned long long* bars = (unsigned long long*)(pshare + 8);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const unsigned sK = smem_u32(Ks), sV = smem_u32(Vs), sbar = smem_u32(bars);
    auto full_bar = [&](int s) { return sbar + s * 8; };
    auto empty_bar = [&](int s) { return sbar + (NSTG + s) * 8; };
    auto meta_bar = [&](int s) { return sbar + (2 * NSTG + s) * 8; };
    const int ntiles = ((g.F + TF - 1) / TF) * nty * ntx;
    const int nitems = ntiles * g.bh;

    if (tid == 0) {
        for (int s = 0; s < NSTG; s++) {
            mbar_init(full_bar(s), PT);   // every producer thread's copies
            mbar_init(empty_bar(s), NC);  // one arrival per consumer warp
            mbar_init(meta_bar(s), 1);    // producer thread 0
        }
    }
    __syncthreads();

    if (warp >= NC) {
        // Producers (4 warps: one warp's outstanding copies could not keep the consumers fed):
        // 16-byte chunk lc of rows lr0, lr0 + RS, ... (features past d / dv and rows without a
        // key are zero-filled by the copies). Named barrier 1 syncs the producer threads.
        const int ptid = tid - 32 * NC;
        const int lc = ptid % CH, lr0 = ptid / CH;
        const bool kcol = lc * 8 < g.d, vcol = lc * 8 < g.dv;
        int t = 0;
        // Stage s of step t is free (released, and its previous copies landed: consumers that
        // skipped a block release it without waiting for them).
        auto acquire = [&](int s) {
            mbar_wait(empty_bar(s), ((t / NSTG) & 1) ^ 1);
            if (t >= NSTG) mbar_wait(full_bar(s), ((t / NSTG) - 1) & 1);
        };
        for (int pi = 0;; pi++) {
            if (ptid == 0) pshare[pi & 1] = atomicAdd(counter, 1);
            asm volatile("bar.sync 1, %0;" ::"n"(PT) : "memory");
            const int item = pshare[pi & 1];
            if (item >= nitems) {
                if (ptid == 0) {
                    const int s = t % NSTG;
                    mbar_wait(empty_bar(s), ((t / NSTG) & 1) ^ 1);
                    meta[s * 4] = -1;
                    mbar_arrive(meta_bar(s));
                }
                break;
            }
            const int tile = item % ntiles;
            const long long bh = item / ntiles;
            const LocalTile lt = local_tile(g, tile, TF, TY, TX, nty, ntx);
            const u16* kh = k + bh * (long long)g.nk * g.d + (kcol ? lc * 8 : 0);
            const u16* vh = v + bh * (long long)g.nk * g.dv + (vcol ? lc * 8 : 0);
            // The Q tile goes through a stage (block -1): rows 0..BN-1 in its K half, the rest in
            // its V half. (A separate Q buffer left room for one stage less: 4% slower at 1/7.)
            {
                const int s = t % NSTG;
                acquire(s);
                if (ptid == 0) {
                    meta[s * 4] = item;
                    meta[s * 4 + 1] = -1;
                    mbar_arrive(meta_bar(s));
                }
                const int nqb = lt.qb.n();
                for (int r = lr0; r < BM; r += RS) {
                    long long row = 0;
                    if (r < nqb) {
                        int f, y, x;
                        row = bh * g.nq + lt.qb.decode(r, g, f, y, x);
                    }
                    const unsigned dst = (r < BN ? sK + (s * BN + r) * LD * 2 : sV + (s * BN + r - BN) * LD * 2) + lc * 16;
                    cp_async16_a(dst, q + row * g.d + (kcol ? lc * 8 : 0), r < nqb && kcol ? 16 : 0);
                }
                mbar_arrive_cp_async(full_bar(s));
                t++;
            }
            for (int j = 0; j < lt.nb; j++, t++) {
                const int s = t % NSTG;
                // Decode before waiting for the stage.
                int tok = -1;
                unsigned code = 0u, orv = 0u, andv = 0u;
                if (ptid < BN) {
                    block_key(g, lt, TF, TY, TX, j, ptid, tok, code);
                    orv = __reduce_or_sync(0xffffffffu, code);
                    andv = __reduce_and_sync(0xffffffffu, code);
                }
                acquire(s);
                if (ptid < BN) {
                    kinf[s * BN + ptid] = code;
                    ktok[s * BN + ptid] = tok;
                    if (lane == 0) {
                        pshare[2 + warp - NC] = (int)orv;
                        pshare[4 + warp - NC] = (int)andv;
                    }
                }
                asm volatile("bar.sync 1, %0;" ::"n"(PT) : "memory");
                // Codes and meta first: a consumer that sees none of the block moves on without
                // waiting for its copies.
                if (ptid == 0) {
                    meta[s * 4] = item;
                    meta[s * 4 + 1] = j;
                    meta[s * 4 + 2] = pshare[2] | pshare[3];
                    meta[s * 4 + 3] = pshare[4] & pshare[5];
                    mbar_arrive(meta_bar(s));
                }
                const unsigned soff = ((s * BN + lr0) * LD + lc * 8) * 2;
#pragma unroll
                for (int i = 0; i < BN / RS; i++) {
                    const int kt = ktok[s * BN + lr0 + i * RS];
                    const bool ok = kt >= 0;
                    const long long tt = ok ? kt : 0;
                    const unsigned off = soff + i * RS * LD * 2;
                    cp_async16_a(sK + off, kh + tt * g.d, ok && kcol ? 16 : 0);
                    cp_async16_a(sV + off, vh + tt * g.dv, ok && vcol ? 16 : 0);
                }
                mbar_arrive_cp_async(full_bar(s));  // when this thread's copies land
            }
        }
        return;
    }

    // Consumers: warp rows warp*16 + gq (+8) of the current tile.
    const int gq = lane >> 2, tq = lane & 3;
    const unsigned a_row = ((warp * 16 + (lane & 15)) * LD + (lane >> 4) * 8) * 2;
    const unsigned b_nt = (((lane & 7) + ((lane >> 4) << 3)) * LD + ((lane >> 3) & 1) * 8) * 2;
    const unsigned b_tr = ((lane & 15) * LD + (lane >> 4) * 8) * 2;
    unsigned qf[DP / 16][4];
    float acc[1][DP / 8][4];
    float mrow[1][2], lrow[1][2];
    unsigned msel[2];
    int tokq[1][2];
    long long bh = -1;
    for (int t = 0;; t++) {
        const int s = t % NSTG;
        const unsigned par = (t / NSTG) & 1;
        mbar_wait(meta_bar(s), par);
        const int item = meta[s * 4], j = meta[s * 4 + 1];
        const unsigned orv = (unsigned)meta[s * 4 + 2], andv = (unsigned)meta[s * 4 + 3];
        if (j < 0 || item < 0) {
            if (bh >= 0) store_rows<BF16, DP, 1>(acc, mrow, lrow, tokq, bh, o, lse, g.nq, g.dv, tq);
            if (item < 0) break;
            // A new tile (its Q stage): the rows' tokens and selectors, Q into registers.
            const int tile = item % ntiles;
            bh = item / ntiles;
            const int tx = tile % ntx, ty = (tile / ntx) % nty, tf = tile / (ntx * nty);
            Box qb;
            qb.f0 = tf * TF; qb.y0 = ty * TY; qb.x0 = tx * TX;
            qb.nf = min(TF, g.F - qb.f0); qb.ny = min(TY, g.h - qb.y0); qb.nx = min(TX, g.w - qb.x0);
#pragma unroll
            for (int h2 = 0; h2 < 2; h2++) {
                const int r = warp * 16 + gq + 8 * h2;
                msel[h2] = 1u;
                tokq[0][h2] = -1;
                if (r < qb.n()) {
                    int f, y, x;
                    tokq[0][h2] = qb.decode(r, g, f, y, x);
                    msel[h2] = (1u << (f - qb.f0)) | (1u << (TF + y - qb.y0)) | (1u << (TF + TY + x - qb.x0));
                }
            }
            mbar_wait(full_bar(s), par);
            const unsigned qa = (warp < NC / 2 ? sK : sV - BN * LD * 2) + s * BN * LD * 2 + a_row;
#pragma unroll
            for (int ks = 0; ks < DP / 16; ks++) ldsm_x4_a(qf[ks], qa + ks * 32);
            __syncwarp();
            if (lane == 0) mbar_arrive(empty_bar(s));
#pragma unroll
            for (int i = 0; i < DP / 8; i++) acc[0][i][0] = acc[0][i][1] = acc[0][i][2] = acc[0][i][3] = 0.f;
            mrow[0][0] = mrow[0][1] = NEG_INF;
            lrow[0][0] = lrow[0][1] = 0.f;
            continue;
        }
        const bool mine = (tokq[0][0] >= 0 && (orv & msel[0]) == msel[0]) || (tokq[0][1] >= 0 && (orv & msel[1]) == msel[1]);
        if (__any_sync(0xffffffffu, mine)) {
            mbar_wait(full_bar(s), par);
            const unsigned koff = s * BN * LD * 2;
            float sc[1][BN / 8][4];
#pragma unroll
            for (int i = 0; i < BN / 8; i++) sc[0][i][0] = sc[0][i][1] = sc[0][i][2] = sc[0][i][3] = 0.f;
            qk_products<BF16, DP, 1, BN, LD, DP / 16>(sc, qf, 0u, sK + koff + b_nt);
            if (andv != 0xffffffffu) {
                const unsigned* inf = kinf + s * BN;
#pragma unroll
                for (int nt = 0; nt < BN / 8; nt++) {
                    const uint2 cc = *(const uint2*)(inf + nt * 8 + 2 * tq);
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const unsigned code = (e & 1) ? cc.y : cc.x, m = msel[e >> 1];
                        if ((code & m) != m) sc[0][nt][e] = NEG_INF;
                    }
                }
            }
            online_softmax<1, BN, DP, true, false>(sc, mrow, lrow, acc, g.scale_log2);
            pv_products<BF16, DP, 1, BN, LD>(sc, acc, sV + koff + b_tr);
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(empty_bar(s));
    }
}

// NSTG: as many stages as fit 227 KB of shared memory.
#define FWD_WS_ENTRY(T, B, DP, NSTG)                                                                       \
    extern "C" __global__ void __launch_bounds__(384, 1) attn_fwd_ws_##T##_d##DP(                         \
        const u16* q, const u16* k, const u16* v, u16* o, float* lse, Geo g, int TF, int TY, int TX,      \
        int nty, int ntx, int* counter) {                                                                 \
        fwd_local_ws<B, DP, NSTG>(q, k, v, o, lse, g, TF, TY, TX, nty, ntx, counter);                     \
    }
FWD_WS_ENTRY(f16, false, 64, 9)
FWD_WS_ENTRY(f16, false, 128, 6)
FWD_WS_ENTRY(bf16, true, 64, 9)
FWD_WS_ENTRY(bf16, true, 128, 6)

// ---------------------------------------------------------------------------------------------
// Forward for the Dense mask, tensor cores: fwd_tc without the mask machinery. The H100 profile
// of fwd_tc at issue #5's shape (2026-11-27) counted ~2,000 instructions per warp and key block
// for 256 HMMA (issue-bound at 0.5 IPC): per-block key decoding, visibility codes, token
// lookups per copied row and per-call shared-address conversions. Here keys and queries are
// raster ranges, the only mask is the key tail (last block), and shared addresses are computed
// once. Requires d == dv == DP. grid (ceil(nq / (64*MT)), BH), block 128 (4 warps x 16*MT
// rows), key blocks of BN = 64 double-buffered, dynamic smem (64*MT + 4*BN) * (DP+8) * 2 bytes.
template <bool BF16, int DP, int MT>
__device__ void fwd_dense_tc(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                             u16* __restrict__ o, float* __restrict__ lse, int nq, int nk, float scale_log2) {
    constexpr int NW = 4;
    constexpr int BM = 16 * MT * NW;
    constexpr int LD = DP + 8;
    constexpr int NT = 32 * NW;
    constexpr int CH = DP / 8;
    extern __shared__ __align__(16) unsigned char smem[];
    u16* Qs = (u16*)smem;            // [BM][LD]
    u16* Ks = Qs + BM * LD;          // [2][BN][LD]
    u16* Vs = Ks + 2 * BN * LD;      // [2][BN][LD]

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int gq = lane >> 2, tq = lane & 3;
    const long long bh = blockIdx.y;
    const int q0 = blockIdx.x * BM;
    const int nb = (nk + BN - 1) / BN;
    const u16* kh = k + bh * (long long)nk * DP;
    const u16* vh = v + bh * (long long)nk * DP;

    for (int u = tid; u < BM * CH; u += NT) {
        int r = u / CH, c = u % CH;
        bool ok = q0 + r < nq;
        long long row = bh * (long long)nq + (ok ? q0 + r : 0);
        cp_async16(Qs + r * LD + c * 8, q + row * DP + c * 8, ok ? 16 : 0);
    }
    auto load_kv = [&](int j, int buf) {
        copy_row_pairs<BN, DP, LD, NT>(Ks + buf * BN * LD, Vs + buf * BN * LD, kh, vh, j * BN, nk, tid);
    };
    load_kv(0, 0);
    cp_async_commit();

    const unsigned sQ = smem_u32(Qs), sK = smem_u32(Ks), sV = smem_u32(Vs);
    const unsigned a_row = ((warp * 16 * MT + (lane & 15)) * LD + (lane >> 4) * 8) * 2;   // Q as A
    const unsigned b_nt = (((lane & 7) + ((lane >> 4) << 3)) * LD + ((lane >> 3) & 1) * 8) * 2;  // K as B
    const unsigned b_tr = ((lane & 15) * LD + (lane >> 4) * 8) * 2;  // V as B (trans)
    constexpr unsigned KBUF = BN * LD * 2;

    float acc[MT][DP / 8][4];
    float mrow[MT][2], lrow[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int i = 0; i < DP / 8; i++) acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.f;
        mrow[mt][0] = mrow[mt][1] = NEG_INF;
        lrow[mt][0] = lrow[mt][1] = 0.f;
    }
    unsigned qf[MT == 1 ? DP / 16 : 1][4];

    for (int j = 0; j < nb; j++) {
        const int buf = j & 1;
        if (j + 1 < nb) {
            load_kv(j + 1, buf ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (MT == 1 && j == 0) {
#pragma unroll
            for (int ks = 0; ks < (MT == 1 ? DP / 16 : 1); ks++) ldsm_x4_a(qf[ks], sQ + a_row + ks * 32);
        }
        const unsigned koff = buf * KBUF;
        float s[MT][BN / 8][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int i = 0; i < BN / 8; i++) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
        qk_products<BF16, DP, MT, BN, LD>(s, qf, sQ + a_row, sK + koff + b_nt);
        if ((j + 1) * BN > nk) {  // key tail: columns past nk
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (j * BN + nt * 8 + 2 * tq + (e & 1) >= nk)
#pragma unroll
                        for (int mt = 0; mt < MT; mt++) s[mt][nt][e] = NEG_INF;
        }
        // Every block has at least one valid key, so the new maxima are finite; rescaling only
        // when a max moved is kept here (19.3 -> 18.0 ms; in fwd_tc the branch made the 4x32
        // variant spill).
        online_softmax<MT, BN, DP, false, true>(s, mrow, lrow, acc, scale_log2);
        pv_products<BF16, DP, MT, BN, LD>(s, acc, sV + koff + b_tr);
        __syncthreads();
    }
    int tokq[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h2 = 0; h2 < 2; h2++) {
            const int tok = q0 + warp * 16 * MT + mt * 16 + gq + 8 * h2;
            tokq[mt][h2] = tok < nq ? tok : -1;
        }
    store_rows<BF16, DP, MT>(acc, mrow, lrow, tokq, bh, o, lse, nq, DP, tq);
}

#define FWD_DENSE_ENTRY(T, B, DP, MT)                                                                     \
    extern "C" __global__ void __launch_bounds__(128) attn_fwd_dense_tc_##T##_d##DP##_m##MT(             \
        const u16* q, const u16* k, const u16* v, u16* o, float* lse, int nq, int nk, float scale_log2) { \
        fwd_dense_tc<B, DP, MT>(q, k, v, o, lse, nq, nk, scale_log2);                                     \
    }
FWD_DENSE_ENTRY(f16, false, 64, 1)
FWD_DENSE_ENTRY(f16, false, 64, 2)
FWD_DENSE_ENTRY(f16, false, 128, 1)
FWD_DENSE_ENTRY(f16, false, 128, 2)
FWD_DENSE_ENTRY(bf16, true, 64, 1)
FWD_DENSE_ENTRY(bf16, true, 64, 2)
FWD_DENSE_ENTRY(bf16, true, 128, 1)
FWD_DENSE_ENTRY(bf16, true, 128, 2)


// ---------------------------------------------------------------------------------------------
// Backward dK/dV (+ dQ atomics), tensor cores. grid (nktiles, BH), block 32*NWK, BK = 16*NWK keys
// per tile, dynamic smem (2*BK + 4*BQ) * (DP+8) * 2 + BK*(BQ+8)*2 + 3*BQ*16 + 64 bytes. Key tiles
// 0..nvt-1: 3D boxes (KTF, KTY, KTX) over the video grid (Dense: raster); tiles nvt..: text keys.
#define BQ 32

template <bool BF16, int DP, int NWK>
__device__ void dkdv_tc(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                        const u16* __restrict__ dout, const float* __restrict__ lse,
                        const float* __restrict__ delta, u16* __restrict__ dk, u16* __restrict__ dv,
                        float* __restrict__ dqacc, Geo g, int KTF, int KTY, int KTX, int nty, int ntx,
                        int nvt) {
    constexpr int LD = DP + 8;
    constexpr int CH = DP / 8;
    constexpr int BK = 16 * NWK;  // keys per tile
    constexpr int NT = 32 * NWK;
    constexpr int LDT = BQ + 8;  // row stride (u16) of dS^T, key-major
    constexpr int NFP = NWK / 2;  // feature parts of the dQ product
    static_assert(DP / NFP >= 16, "dQ feature part must hold an mma tile");
    extern __shared__ __align__(16) unsigned char smem[];
    u16* Ks = (u16*)smem;             // [BK][LD]
    u16* Vs = Ks + BK * LD;           // [BK][LD]
    u16* Qs = Vs + BK * LD;           // [2][BQ][LD]
    u16* Ds = Qs + 2 * BQ * LD;       // [2][BQ][LD] (dO)
    u16* St = Ds + 2 * BQ * LD;       // [BK][LDT] (dS^T, key-major)
    int* qtok = (int*)(St + BK * LDT);  // [3][BQ]
    unsigned* qinf = (unsigned*)(qtok + 3 * BQ);  // [3][BQ] visibility codes
    float* qlse = (float*)(qinf + 3 * BQ);  // [3][BQ] lse
    float* qdel = qlse + 3 * BQ;            // [3][BQ]
    unsigned* qor = (unsigned*)(qdel + 3 * BQ);  // [3] OR of the codes of a query block

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int gq = lane >> 2, tq = lane & 3;
    const long long bh = blockIdx.y;
        // Key tile: tokens of rows 0..BN-1 (kt < 0: none) and the query set that sees it.
    const int tile = blockIdx.x;
    Box qs;  // queries (flattened)
    int nqs;
    bool key_local;
    int kbase = -1;  // text/dense tiles: first key token (raster)
    Box ktb;
    if (tile < nvt) {
        int tx = tile % ntx, ty = (tile / ntx) % nty, tf = tile / (ntx * nty);
        if (g.local) {
            ktb.f0 = tf * KTF; ktb.y0 = ty * KTY; ktb.x0 = tx * KTX;
            ktb.nf = min(KTF, g.F - ktb.f0); ktb.ny = min(KTY, g.h - ktb.y0); ktb.nx = min(KTX, g.w - ktb.x0);
            qs.f0 = qlo(ktb.f0, g.rt, g.F, g.fsz);
            qs.nf = qhi(ktb.f0 + ktb.nf - 1, g.rt, g.F, g.fsz) + 1 - qs.f0;
            qs.y0 = qlo(ktb.y0, g.rs, g.h, g.ysz);
            qs.ny = qhi(ktb.y0 + ktb.ny - 1, g.rs, g.h, g.ysz) + 1 - qs.y0;
            qs.x0 = qlo(ktb.x0, g.rs, g.w, g.xsz);
            qs.nx = qhi(ktb.x0 + ktb.nx - 1, g.rs, g.w, g.xsz) + 1 - qs.x0;
            key_local = true;
        } else {
            kbase = tile * BK;
            qs.f0 = 0; qs.y0 = 0; qs.x0 = 0; qs.nf = 1; qs.ny = 1; qs.nx = g.nq;
            key_local = false;
        }
    } else {
        kbase = g.video + (tile - nvt) * BK;
        qs.f0 = 0; qs.y0 = 0; qs.x0 = 0; qs.nf = 1; qs.ny = 1; qs.nx = g.nq;
        key_local = false;
    }
    // Query boxes live on the (local) video grid or on the 1 x 1 x nq raster.
    Geo gq_ = g;
    if (!key_local) { gq_.h = 1; gq_.w = g.nq; }
    nqs = qs.n();
    const int nb = (nqs + BQ - 1) / BQ;

    auto key_tok = [&](int r, int& f, int& y, int& x) -> int {
        f = y = x = 0;
        if (key_local) {
            if (r >= ktb.n()) return -1;
            return ktb.decode(r, g, f, y, x);
        }
        int t = kbase + r;
        return t < g.nk ? t : -1;
    };
    // Load K, V tile.
    for (int u = tid; u < BK * CH; u += NT) {
        int r = u / CH, c = u % CH;
        int f, y, x;
        int tok = key_tok(r, f, y, x);
        long long row = bh * g.nk + (tok < 0 ? 0 : tok);
        bool okk = tok >= 0 && c * 8 < g.d, okv = tok >= 0 && c * 8 < g.dv;
        cp_async16(Ks + r * LD + c * 8, okk ? k + row * g.d + c * 8 : k, okk ? 16 : 0);
        cp_async16(Vs + r * LD + c * 8, okv ? v + row * g.dv + c * 8 : v, okv ? 16 : 0);
    }
    // Query block decode into slot.
    auto decode = [&](int jj, int slot) {
        if (tid < BQ) {
            int i = jj * BQ + tid;
            int tok = -1;
            unsigned info = 0u;
            if (i < nqs) {
                int f, y, x;
                tok = qs.decode(i, gq_, f, y, x);
                if (key_local) {
                    int fs = wstart(f, g.rt, g.F, g.fsz), ys = wstart(y, g.rs, g.h, g.ysz), xs = wstart(x, g.rs, g.w, g.xsz);
                    info = range_bits(fs - ktb.f0, fs + g.fsz - 1 - ktb.f0, KTF) |
                           range_bits(ys - ktb.y0, ys + g.ysz - 1 - ktb.y0, KTY) << KTF |
                           range_bits(xs - ktb.x0, xs + g.xsz - 1 - ktb.x0, KTX) << (KTF + KTY);
                } else {
                    info = 0xffffffffu;
                }
            }
            qtok[slot * BQ + tid] = tok;
            qinf[slot * BQ + tid] = info;
            unsigned o = __reduce_or_sync(0xffffffffu, info);
            if (tid == 0) qor[slot] = o;
        }
    };
    // Q/dO block copy: this thread's chunk lc of rows lr0, lr0 + RS, ... (as load_kv in fwd_tc).
    constexpr int RS = NT / CH;
    auto load_q = [&](int buf, int slot) {
        const int lc = tid % CH, lr0 = tid / CH;
        const bool qcol = lc * 8 < g.d, dcol = lc * 8 < g.dv;
        const u16* qh = q + bh * (long long)g.nq * g.d + (qcol ? lc * 8 : 0);
        const u16* dh = dout + bh * (long long)g.nq * g.dv + (dcol ? lc * 8 : 0);
        const unsigned sQc = smem_u32(Qs) + (lr0 * LD + lc * 8) * 2, sDc = smem_u32(Ds) + (lr0 * LD + lc * 8) * 2;
        const int* qt = qtok + slot * BQ;
#pragma unroll
        for (int i = 0; i < (BQ + RS - 1) / RS; i++) {
            const int r = lr0 + i * RS;
            if (RS <= BQ || r < BQ) {
                const int tok = qt[r];
                const bool ok = tok >= 0;
                const long long t = ok ? tok : 0;
                const unsigned off = (buf * BQ + i * RS) * LD * 2;
                cp_async16_a(sQc + off, qh + t * g.d, ok && qcol ? 16 : 0);
                cp_async16_a(sDc + off, dh + t * g.dv, ok && dcol ? 16 : 0);
            }
        }
        // lse and delta of the block ride the same cp.async group (no global latency in decode).
        if (tid < BQ) {
            int tok = qtok[slot * BQ + tid];
            long long row = bh * g.nq + (tok < 0 ? 0 : tok);
            cp_async4(qlse + slot * BQ + tid, lse + row, tok >= 0 ? 4 : 0);
            cp_async4(qdel + slot * BQ + tid, delta + row, tok >= 0 ? 4 : 0);
        }
    };
    decode(0, 0);
    if (nb > 1) decode(1, 1);
    __syncthreads();
    load_q(0, 0);
    cp_async_commit();

    // This thread's key rows: warp*16 + gq (+8).
    unsigned msel[2];
    bool kok[2];
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
        int f, y, x;
        int tok = key_tok(warp * 16 + gq + 8 * h2, f, y, x);
        kok[h2] = tok >= 0;
        msel[h2] = key_local && kok[h2]
                       ? (1u << (f - ktb.f0)) | (1u << (KTF + y - ktb.y0)) | (1u << (KTF + KTY + x - ktb.x0))
                       : 1u;
    }

    // Shared addresses (bytes) computed once per thread: see bwd_dense_tc.
    const unsigned sK = smem_u32(Ks), sV = smem_u32(Vs), sQ = smem_u32(Qs), sD = smem_u32(Ds),
                   sS = smem_u32(St);
    const unsigned a_row = (warp * 16 + (lane & 15)) * LD * 2 + (lane >> 4) * 16;
    const unsigned b_nt = (((lane & 7) + ((lane >> 4) << 3)) * LD + ((lane >> 3) & 1) * 8) * 2;
    const unsigned b_tr = ((lane & 15) * LD + (lane >> 4) * 8) * 2;

    float adk[DP / 8][4], adv[DP / 8][4];
#pragma unroll
    for (int i = 0; i < DP / 8; i++) {
        adk[i][0] = adk[i][1] = adk[i][2] = adk[i][3] = 0.f;
        adv[i][0] = adv[i][1] = adv[i][2] = adv[i][3] = 0.f;
    }

    for (int j = 0; j < nb; j++) {
        const int buf = j & 1, slot = j % 3;
        if (j + 1 < nb) {
            load_q(buf ^ 1, (j + 1) % 3);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        // Decode query block j+2 here, overlapped with the other warps' products (as in fwd_tc).
        if (j + 2 < nb) decode(j + 2, (j + 2) % 3);
        const unsigned qoff = buf * BQ * LD * 2;
        // S^T = K Q^T and dP^T = V dO^T: 16 keys x BQ queries per warp. A warp whose keys no
        // query of the block sees skips the products (its dS^T rows are written as zeros).
        const unsigned qo = qor[slot];
        const bool active = __any_sync(0xffffffffu, (kok[0] && (qo & msel[0]) == msel[0]) ||
                                                        (kok[1] && (qo & msel[1]) == msel[1]));
        float st[BQ / 8][4], dp[BQ / 8][4];
#pragma unroll
        for (int i = 0; i < BQ / 8; i++) {
            st[i][0] = st[i][1] = st[i][2] = st[i][3] = 0.f;
            dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
        }
        if (active) st_dp_products<BF16, DP, BQ, LD>(st, dp, sK + a_row, sV + a_row, sQ + qoff + b_nt, sD + qoff + b_nt);
        // P^T and dS^T (element e: key row gq + 8*(e>>1), query col nt*8 + 2*tq + (e&1)).
        const unsigned* inf = qinf + slot * BQ;
        const float* ql = qlse + slot * BQ;
        const float* qd = qdel + slot * BQ;
        // Branch-free: the pair's codes, lse and delta are read once (64-bit), p is a select.
#pragma unroll
        for (int nt = 0; nt < BQ / 8; nt++) {
            const uint2 i2 = *(const uint2*)(inf + nt * 8 + 2 * tq);
            const float2 l2 = *(const float2*)(ql + nt * 8 + 2 * tq);
            const float2 d2 = *(const float2*)(qd + nt * 8 + 2 * tq);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int h2 = e >> 1;
                const unsigned m = msel[h2], code = (e & 1) ? i2.y : i2.x;
                const bool ok = active && kok[h2] && (code & m) == m;
                const float p = ex2_ftz(fmaf(st[nt][e], g.scale_log2, -LOG2E * ((e & 1) ? l2.y : l2.x)));
                const float pz = ok ? p : 0.f;
                st[nt][e] = pz;
                dp[nt][e] = pz * (dp[nt][e] - ((e & 1) ? d2.y : d2.x));
            }
        }
        // dV += P^T dO, dK += dS^T Q (k = queries).
#pragma unroll
        for (int kk = 0; kk < BQ / 16; kk++) {
            unsigned pa[4], sa[4];
            c_to_a<BF16, BQ>(st, kk, pa);
            c_to_a<BF16, BQ>(dp, kk, sa);
            // dS^T to shared memory, key-major (32-bit stores), for dQ.
            {
                u32* row0 = (u32*)(St + (warp * 16 + gq) * LDT + kk * 16 + 2 * tq);
                u32* row1 = (u32*)(St + (warp * 16 + gq + 8) * LDT + kk * 16 + 2 * tq);
                row0[0] = sa[0];
                row1[0] = sa[1];
                row0[4] = sa[2];
                row1[4] = sa[3];
            }
            if (active)
                dvdk_products<BF16, DP, LD>(pa, sa, adv, adk, sD + qoff + b_tr + kk * 16 * LD * 2,
                                            sQ + qoff + b_tr + kk * 16 * LD * 2);
        }
        __syncthreads();
        // dQ[q, :] += dS[q, keys] K[keys, :]: warp w takes queries (w&1)*16.., features (w>>1)*HF..
        {
            constexpr int HF = DP / NFP;
            const int qr0 = (warp & 1) * 16, f0 = (warp >> 1) * HF;
            const unsigned s_tr = ((((lane & 7) + ((lane >> 4) << 3)) * LDT) + qr0 + ((lane >> 3) & 1) * 8) * 2;
            float aq[HF / 8][4];
            dq_products<BF16, BK, HF, LD, LDT>(aq, sS + s_tr, sK + b_tr + f0 * 2);
            const int* tk = qtok + slot * BQ;
#pragma unroll
            for (int h2 = 0; h2 < 2; h2++) {
                int tok = tk[qr0 + gq + 8 * h2];
                if (tok < 0) continue;
                float* dst = dqacc + (bh * g.nq + tok) * g.d;
#pragma unroll
                for (int nt = 0; nt < HF / 8; nt++) {
                    int f = f0 + nt * 8 + 2 * tq;
                    if (f < g.d) red_add2(dst + f, aq[nt][2 * h2], aq[nt][2 * h2 + 1]);
                }
            }
        }
        __syncthreads();
    }
    // Store dK (scaled), dV.
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
        if (!kok[h2]) continue;
        int f_, y_, x_;
        int tok = key_tok(warp * 16 + gq + 8 * h2, f_, y_, x_);
        long long row = bh * g.nk + tok;
#pragma unroll
        for (int nt = 0; nt < DP / 8; nt++) {
            int f = nt * 8 + 2 * tq;
            if (f < g.d)
                *(unsigned*)(dk + row * g.d + f) = pack2<BF16>(adk[nt][2 * h2] * g.scale, adk[nt][2 * h2 + 1] * g.scale);
            if (f < g.dv)
                *(unsigned*)(dv + row * g.dv + f) = pack2<BF16>(adv[nt][2 * h2], adv[nt][2 * h2 + 1]);
        }
    }
}

#define DKDV_TC_ENTRY(T, B, DP, NW)                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * NW) attn_dkdv_tc_##T##_d##DP##_w##NW(               \
        const u16* q, const u16* k, const u16* v, const u16* dout, const float* lse, const float* delta, \
        u16* dk, u16* dv, float* dqacc, Geo g, int KTF, int KTY, int KTX, int nty, int ntx, int nvt) {    \
        dkdv_tc<B, DP, NW>(q, k, v, dout, lse, delta, dk, dv, dqacc, g, KTF, KTY, KTX, nty, ntx, nvt);    \
    }
DKDV_TC_ENTRY(f16, false, 32, 4)
DKDV_TC_ENTRY(f16, false, 64, 4)
DKDV_TC_ENTRY(f16, false, 128, 4)
DKDV_TC_ENTRY(f16, false, 64, 8)
DKDV_TC_ENTRY(f16, false, 128, 8)
DKDV_TC_ENTRY(bf16, true, 32, 4)
DKDV_TC_ENTRY(bf16, true, 64, 4)
DKDV_TC_ENTRY(bf16, true, 128, 4)
DKDV_TC_ENTRY(bf16, true, 64, 8)
DKDV_TC_ENTRY(bf16, true, 128, 8)

// ---------------------------------------------------------------------------------------------
// Backward for the Dense mask, tensor cores: the dK/dV + dQ-atomics structure of dkdv_tc with
// everything the mask needs taken out, because the H100 profile of dkdv_tc (issue #5, 2026-11-27)
// showed the tensor pipe waiting on scalar work: 1,400 instructions per warp and query block
// for 160 HMMA, 28% of the stall samples in the per-element mask/exp code (smem loads of the
// visibility codes, branches), and 16-bit scalar stores of dS^T. Here:
//   - no visibility codes and no branches per element: padding rows need no mask (zero-filled
//     Q/dO rows give dS = 0; zero-filled K/V rows are never stored and add 0 to dQ);
//   - lse and delta of the query block are read once per block (LDS.64), lse pre-scaled to log2;
//   - dS^T goes to shared memory key-major with 32-bit stores and dQ reads it with ldmatrix.trans;
//   - shared addresses are computed once per thread (32-bit), buffers toggled by an offset.
// Requires d == dv == DP (the caller falls back to dkdv_tc otherwise). grid (ceil(nk/BK), BH),
// block 256 (8 warps x 16 keys = BK 128), BQD queries per step, dynamic smem
// (2*BK + 4*BQD) * (DP+8) * 2 + BK * (BQD+8) * 2 + 4 * BQD * 4 bytes.
template <bool BF16, int DP, int BQD>
__device__ void bwd_dense_tc(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                             const u16* __restrict__ dout, const float* __restrict__ lse,
                             const float* __restrict__ delta, u16* __restrict__ dk, u16* __restrict__ dv,
                             float* __restrict__ dqacc, int nq, int nk, float scale, float scale_log2) {
    constexpr int NWK = 8;
    constexpr int BK = 16 * NWK;
    constexpr int NT = 32 * NWK;
    constexpr int LD = DP + 8;        // row stride (u16) of K, V, Q, dO tiles
    constexpr int CH = DP / 8;        // 16-byte chunks per row
    constexpr int LDT = BQD + 8;      // row stride (u16) of dS^T (key-major)
    constexpr int QW = BQD / 16;      // query row groups of the dQ product
    constexpr int FW = NWK / QW;      // feature parts of the dQ product
    constexpr int HF = DP / FW;       // features per warp in the dQ product
    static_assert(HF >= 16 && HF % 16 == 0, "dQ feature part must hold an mma tile");
    extern __shared__ __align__(16) unsigned char smem[];
    u16* Ks = (u16*)smem;             // [BK][LD]
    u16* Vs = Ks + BK * LD;           // [BK][LD]
    u16* Qs = Vs + BK * LD;           // [2][BQD][LD]
    u16* Ds = Qs + 2 * BQD * LD;      // [2][BQD][LD] (dO)
    u16* St = Ds + 2 * BQD * LD;      // [2][BK][LDT] (dS^T, key-major)
    float* qls = (float*)(St + 2 * BK * LDT);  // [2][BQD] lse
    float* qds = qls + 2 * BQD;            // [2][BQD] delta

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int gq = lane >> 2, tq = lane & 3;
    const long long bh = blockIdx.y;
    const int kbase = blockIdx.x * BK;
    const int nb = (nq + BQD - 1) / BQD;
    const u16* qh = q + bh * (long long)nq * DP;
    const u16* doh = dout + bh * (long long)nq * DP;
    const float* lh = lse + bh * (long long)nq;
    const float* dh = delta + bh * (long long)nq;

    // K, V tile (rows past nk zero-filled).
    copy_row_pairs<BK, DP, LD, NT>(Ks, Vs, k + bh * (long long)nk * DP, v + bh * (long long)nk * DP, kbase, nk, tid);
    auto load_q = [&](int j, int buf) {
        copy_row_pairs<BQD, DP, LD, NT>(Qs + buf * BQD * LD, Ds + buf * BQD * LD, qh, doh, j * BQD, nq, tid);
        if (tid < BQD) {
            int tok = j * BQD + tid;
            bool ok = tok < nq;
            cp_async4(qls + buf * BQD + tid, lh + (ok ? tok : 0), ok ? 4 : 0);
            cp_async4(qds + buf * BQD + tid, dh + (ok ? tok : 0), ok ? 4 : 0);
        }
    };
    load_q(0, 0);
    cp_async_commit();

    // Per-thread shared addresses (bytes), computed once.
    const unsigned sK = smem_u32(Ks), sV = smem_u32(Vs), sQ = smem_u32(Qs), sD = smem_u32(Ds),
                   sS = smem_u32(St);
    const unsigned a_row = (warp * 16 + (lane & 15)) * LD * 2 + (lane >> 4) * 16;  // K/V A operand
    const unsigned b_nt = (((lane & 7) + ((lane >> 4) << 3)) * LD + ((lane >> 3) & 1) * 8) * 2;  // Q/dO as B
    const unsigned b_tr = ((lane & 15) * LD + (lane >> 4) * 8) * 2;  // Q/dO/K as B (trans)
    const int qr0 = (warp % QW) * 16, f0 = (warp / QW) * HF;
    const unsigned s_tr = ((((lane & 7) + ((lane >> 4) << 3)) * LDT) + qr0 + ((lane >> 3) & 1) * 8) * 2;
    constexpr unsigned QBUF = BQD * LD * 2;  // bytes per Q / dO buffer

    float adk[DP / 8][4], adv[DP / 8][4];
#pragma unroll
    for (int i = 0; i < DP / 8; i++) {
        adk[i][0] = adk[i][1] = adk[i][2] = adk[i][3] = 0.f;
        adv[i][0] = adv[i][1] = adv[i][2] = adv[i][3] = 0.f;
    }

    for (int j = 0; j < nb; j++) {
        const int buf = j & 1;
        if (j + 1 < nb) {
            load_q(j + 1, buf ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const unsigned qoff = buf * QBUF;
        // S^T = K Q^T and dP^T = V dO^T: 16 keys x BQD queries per warp.
        float st[BQD / 8][4], dp[BQD / 8][4];
#pragma unroll
        for (int i = 0; i < BQD / 8; i++) {
            st[i][0] = st[i][1] = st[i][2] = st[i][3] = 0.f;
            dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
        }
        st_dp_products<BF16, DP, BQD, LD>(st, dp, sK + a_row, sV + a_row, sQ + qoff + b_nt, sD + qoff + b_nt);
        // P^T and dS^T (element e: key row gq + 8*(e>>1), query col nt*8 + 2*tq + (e&1)).
        const float* ql = qls + buf * BQD;
        const float* qd = qds + buf * BQD;
#pragma unroll
        for (int nt = 0; nt < BQD / 8; nt++) {
            const float2 l2 = *(const float2*)(ql + nt * 8 + 2 * tq);
            const float2 d2 = *(const float2*)(qd + nt * 8 + 2 * tq);
            const float la = l2.x * LOG2E, lb = l2.y * LOG2E;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float p = ex2_ftz(fmaf(st[nt][e], scale_log2, -((e & 1) ? lb : la)));
                st[nt][e] = p;
                dp[nt][e] = p * (dp[nt][e] - ((e & 1) ? d2.y : d2.x));
            }
        }
        // dV += P^T dO, dK += dS^T Q (k = queries); dS^T to shared memory for dQ.
#pragma unroll
        for (int kk = 0; kk < BQD / 16; kk++) {
            unsigned pa[4], sa[4];
            c_to_a<BF16, BQD>(st, kk, pa);
            c_to_a<BF16, BQD>(dp, kk, sa);
            {
                u32* row0 = (u32*)(St + (buf * BK + warp * 16 + gq) * LDT + kk * 16 + 2 * tq);
                u32* row1 = (u32*)(St + (buf * BK + warp * 16 + gq + 8) * LDT + kk * 16 + 2 * tq);
                row0[0] = sa[0];
                row1[0] = sa[1];
                row0[4] = sa[2];
                row1[4] = sa[3];
            }
            dvdk_products<BF16, DP, LD>(pa, sa, adv, adk, sD + qoff + b_tr + kk * 16 * LD * 2,
                                        sQ + qoff + b_tr + kk * 16 * LD * 2);
        }
        __syncthreads();
        // dQ[q, :] += dS[q, keys] K[keys, :]: warp takes queries qr0.., features f0..f0+HF.
        {
            float aq[HF / 8][4];
            dq_products<BF16, BK, HF, LD, LDT>(aq, sS + buf * BK * LDT * 2 + s_tr, sK + b_tr + f0 * 2);
#pragma unroll
            for (int h2 = 0; h2 < 2; h2++) {
                const int tok = j * BQD + qr0 + gq + 8 * h2;
                if (tok < nq) {
                    float* dst = dqacc + (bh * (long long)nq + tok) * DP + f0 + 2 * tq;
#pragma unroll
                    for (int nt = 0; nt < HF / 8; nt++) red_add2(dst + nt * 8, aq[nt][2 * h2], aq[nt][2 * h2 + 1]);
                }
            }
        }
        // No barrier here: the next step writes the other dS^T buffer, and its Q/dO/lse loads
        // go to buffers whose last readers (the products before this step's barrier) are done.
    }
    // Store dK (scaled), dV.
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
        const int tok = kbase + warp * 16 + gq + 8 * h2;
        if (tok >= nk) continue;
        const long long row = bh * (long long)nk + tok;
#pragma unroll
        for (int nt = 0; nt < DP / 8; nt++) {
            const int f = nt * 8 + 2 * tq;
            *(unsigned*)(dk + row * DP + f) = pack2<BF16>(adk[nt][2 * h2] * scale, adk[nt][2 * h2 + 1] * scale);
            *(unsigned*)(dv + row * DP + f) = pack2<BF16>(adv[nt][2 * h2], adv[nt][2 * h2 + 1]);
        }
    }
}

#define BWD_DENSE_ENTRY(T, B, DP, BQD)                                                                    \
    extern "C" __global__ void __launch_bounds__(256) attn_bwd_dense_tc_##T##_d##DP##_q##BQD(           \
        const u16* q, const u16* k, const u16* v, const u16* dout, const float* lse, const float* delta, \
        u16* dk, u16* dv, float* dqacc, int nq, int nk, float scale, float scale_log2) {                  \
        bwd_dense_tc<B, DP, BQD>(q, k, v, dout, lse, delta, dk, dv, dqacc, nq, nk, scale, scale_log2);    \
    }
BWD_DENSE_ENTRY(f16, false, 64, 32)
BWD_DENSE_ENTRY(f16, false, 128, 32)
BWD_DENSE_ENTRY(f16, false, 64, 64)
BWD_DENSE_ENTRY(f16, false, 128, 64)
BWD_DENSE_ENTRY(bf16, true, 64, 32)
BWD_DENSE_ENTRY(bf16, true, 128, 32)
BWD_DENSE_ENTRY(bf16, true, 64, 64)
BWD_DENSE_ENTRY(bf16, true, 128, 64)
