// The DiT block's fp32 islands as single passes (definition: src/norm/mod.rs). Compiled at run
// time with NVRTC (no headers). T: 0 = f32, 1 = f16, 2 = bf16; tables f32; math in f32.
typedef unsigned short u16;

template <int K> struct Elt;
template <> struct Elt<0> {
    typedef float T;
    static __device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
    static __device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
};
template <> struct Elt<1> {
    typedef u16 T;
    static __device__ __forceinline__ float ld(const u16* p, long long i) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p[i]));
        return f;
    }
    static __device__ __forceinline__ void st(u16* p, long long i, float v) {
        u16 r;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(v));
        p[i] = r;
    }
};
template <> struct Elt<2> {
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

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The modulation and the residual as separate roundings (no fused multiply-add), as the
// exported graph's separate Mul and Add nodes (and PyTorch's eager kernels) compute them.
__device__ __forceinline__ float modulate(float v, float m, float a) { return __fadd_rn(__fmul_rn(v, m), a); }

// One warp per row; the row's values stay in registers when C <= 32 * MAXV (Wan: 1536 = 48 a
// lane), else they are re-read from global memory (L1/L2) for each pass.
#define MAXV 64
template <int K>
__device__ void modln_impl(const typename Elt<K>::T* __restrict__ x, const float* __restrict__ mul,
                           int mul_rows, const float* __restrict__ add, int add_rows, int rows,
                           int tokens, int C, float eps, typename Elt<K>::T* __restrict__ y) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const long long base = (long long)r * C;
    const int b = r / tokens;
    const float* m = mul + (mul_rows == 1 ? 0 : (long long)b * C);
    const float* a = add + (add_rows == 1 ? 0 : (long long)b * C);
    float v[MAXV];
    const bool cached = C <= 32 * MAXV;
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < MAXV; i++) {
        const int c = lane + 32 * i;
        if (cached && c < C) { v[i] = Elt<K>::ld(x, base + c); s += v[i]; }
    }
    if (!cached)
        for (int c = lane; c < C; c += 32) s += Elt<K>::ld(x, base + c);
    const float mean = warp_sum(s) / (float)C;
    float q = 0.f;
#pragma unroll
    for (int i = 0; i < MAXV; i++) {
        const int c = lane + 32 * i;
        if (cached && c < C) { const float d = v[i] - mean; q += d * d; }
    }
    if (!cached)
        for (int c = lane; c < C; c += 32) { const float d = Elt<K>::ld(x, base + c) - mean; q += d * d; }
    const float rstd = rsqrtf(warp_sum(q) / (float)C + eps);
#pragma unroll
    for (int i = 0; i < MAXV; i++) {
        const int c = lane + 32 * i;
        if (cached && c < C) Elt<K>::st(y, base + c, modulate((v[i] - mean) * rstd, m[c], a[c]));
    }
    if (!cached)
        for (int c = lane; c < C; c += 32)
            Elt<K>::st(y, base + c, modulate((Elt<K>::ld(x, base + c) - mean) * rstd, m[c], a[c]));
}

template <int K>
__device__ void gres_impl(const typename Elt<K>::T* __restrict__ h, const typename Elt<K>::T* __restrict__ o,
                          const float* __restrict__ gate, int gate_rows, long long n, long long per_sample,
                          int C, typename Elt<K>::T* __restrict__ y) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += step) {
        const long long b = gate_rows == 1 ? 0 : i / per_sample;
        Elt<K>::st(y, i, __fadd_rn(Elt<K>::ld(h, i), __fmul_rn(Elt<K>::ld(o, i), gate[b * C + i % C])));
    }
}

// 16-byte vectors (8 values of a 16-bit type): rows of C % 256 == 0, C <= 2048 (Wan: 1536, six
// vectors a lane) and 16-byte aligned buffers, checked by the caller. The scalar kernels above
// moved 16 bits per load and reached ~20 % of the memory bandwidth on the H100.
template <int K>
__device__ __forceinline__ void unpack8(const uint4 u, float* f) {
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const u16 lo = (u16)(w[i] & 0xffffu), hi = (u16)(w[i] >> 16);
        f[2 * i] = Elt<K>::ld(&lo, 0);
        f[2 * i + 1] = Elt<K>::ld(&hi, 0);
    }
}
template <int K>
__device__ __forceinline__ uint4 pack8(const float* f) {
    u16 h[8];
#pragma unroll
    for (int i = 0; i < 8; i++) Elt<K>::st(h, i, f[i]);
    return make_uint4(h[0] | ((unsigned)h[1] << 16), h[2] | ((unsigned)h[3] << 16),
                      h[4] | ((unsigned)h[5] << 16), h[6] | ((unsigned)h[7] << 16));
}

#define MAXV8 8
template <int K>
__device__ void modln_v_impl(const u16* __restrict__ x, const float* __restrict__ mul, int mul_rows,
                             const float* __restrict__ add, int add_rows, int rows, int tokens, int C,
                             float eps, u16* __restrict__ y) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int nv = C >> 8;  // vectors per lane
    const uint4* xv = reinterpret_cast<const uint4*>(x + (long long)r * C);
    uint4* yv = reinterpret_cast<uint4*>(y + (long long)r * C);
    const int b = r / tokens;
    const float4* m = reinterpret_cast<const float4*>(mul + (mul_rows == 1 ? 0 : (long long)b * C));
    const float4* a = reinterpret_cast<const float4*>(add + (add_rows == 1 ? 0 : (long long)b * C));
    float v[MAXV8][8];
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < MAXV8; i++)
        if (i < nv) {
            unpack8<K>(xv[i * 32 + lane], v[i]);
#pragma unroll
            for (int j = 0; j < 8; j++) s += v[i][j];
        }
    const float mean = warp_sum(s) / (float)C;
    float q = 0.f;
#pragma unroll
    for (int i = 0; i < MAXV8; i++)
        if (i < nv) {
#pragma unroll
            for (int j = 0; j < 8; j++) { const float d = v[i][j] - mean; q += d * d; }
        }
    const float rstd = rsqrtf(warp_sum(q) / (float)C + eps);
#pragma unroll
    for (int i = 0; i < MAXV8; i++)
        if (i < nv) {
            const int c4 = (i * 32 + lane) * 2;  // float4 index of this vector's first channel
            const float4 m0 = m[c4], m1 = m[c4 + 1], a0 = a[c4], a1 = a[c4 + 1];
            const float mm[8] = {m0.x, m0.y, m0.z, m0.w, m1.x, m1.y, m1.z, m1.w};
            const float aa[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            float o[8];
#pragma unroll
            for (int j = 0; j < 8; j++) o[j] = modulate((v[i][j] - mean) * rstd, mm[j], aa[j]);
            yv[i * 32 + lane] = pack8<K>(o);
        }
}

// 8 values a thread; n % 8 == 0, C % 8 == 0, 16-byte aligned buffers (checked by the caller).
template <int K>
__device__ void gres_v_impl(const u16* __restrict__ h, const u16* __restrict__ o,
                            const float* __restrict__ gate, int gate_rows, long long n,
                            long long per_sample, int C, u16* __restrict__ y) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (; i < n / 8; i += step) {
        const long long e = i * 8;
        const long long b = gate_rows == 1 ? 0 : e / per_sample;
        const float4* g = reinterpret_cast<const float4*>(gate + b * C + e % C);
        const float4 g0 = g[0], g1 = g[1];
        const float gg[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
        float hf[8], of[8], r[8];
        unpack8<K>(reinterpret_cast<const uint4*>(h)[i], hf);
        unpack8<K>(reinterpret_cast<const uint4*>(o)[i], of);
#pragma unroll
        for (int j = 0; j < 8; j++) r[j] = __fadd_rn(hf[j], __fmul_rn(of[j], gg[j]));
        reinterpret_cast<uint4*>(y)[i] = pack8<K>(r);
    }
}

#define NORM_V_ENTRIES(SUF, K)                                                                     \
    extern "C" __global__ void __launch_bounds__(256) norm_modln_v_##SUF(                          \
        const u16* x, const float* mul, int mul_rows, const float* add, int add_rows, int rows,   \
        int tokens, int C, float eps, u16* y) {                                                    \
        modln_v_impl<K>(x, mul, mul_rows, add, add_rows, rows, tokens, C, eps, y);                 \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) norm_gres_v_##SUF(                           \
        const u16* h, const u16* o, const float* gate, int gate_rows, long long n,                \
        long long per_sample, int C, u16* y) {                                                     \
        gres_v_impl<K>(h, o, gate, gate_rows, n, per_sample, C, y);                                \
    }
NORM_V_ENTRIES(f16, 1)
NORM_V_ENTRIES(bf16, 2)

#define NORM_ENTRIES(SUF, K)                                                                       \
    extern "C" __global__ void __launch_bounds__(256) norm_modln_##SUF(                            \
        const Elt<K>::T* x, const float* mul, int mul_rows, const float* add, int add_rows,       \
        int rows, int tokens, int C, float eps, Elt<K>::T* y) {                                    \
        modln_impl<K>(x, mul, mul_rows, add, add_rows, rows, tokens, C, eps, y);                   \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) norm_gres_##SUF(                             \
        const Elt<K>::T* h, const Elt<K>::T* o, const float* gate, int gate_rows, long long n,    \
        long long per_sample, int C, Elt<K>::T* y) {                                               \
        gres_impl<K>(h, o, gate, gate_rows, n, per_sample, C, y);                                  \
    }
NORM_ENTRIES(f32, 0)
NORM_ENTRIES(f16, 1)
NORM_ENTRIES(bf16, 2)
