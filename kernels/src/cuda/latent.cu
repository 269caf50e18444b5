// Elementwise sampler updates on flat f32 latents (definition: src/latent/mod.rs). Compiled at
// run time with NVRTC (no headers). Every f32 operation is an explicit round-to-nearest
// intrinsic in the CPU's evaluation order, so NVRTC cannot contract a multiply and an add into
// an FMA and the results are bit-identical to src/latent/cpu.rs. Grid-stride loops with 64-bit
// indices (n may exceed 2^31); 256 threads a block.

__device__ __forceinline__ long long first_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long grid_stride() { return (long long)gridDim.x * blockDim.x; }

// out = (wa * a) + (wb * b); out may be a or b (in-place), so no __restrict__ here.
extern "C" __global__ void __launch_bounds__(256)
latent_lerp(float* out, const float* a, const float* b, long long n, float wa, float wb) {
    for (long long i = first_index(); i < n; i += grid_stride())
        out[i] = __fadd_rn(__fmul_rn(wa, a[i]), __fmul_rn(wb, b[i]));
}

// x = x + dt * v
extern "C" __global__ void __launch_bounds__(256)
latent_euler(float* __restrict__ x, const float* __restrict__ velocity, long long n, float dt) {
    for (long long i = first_index(); i < n; i += grid_stride())
        x[i] = __fadd_rn(x[i], __fmul_rn(dt, velocity[i]));
}

// v = u + s * (c - u) from velocity = [cond (n); uncond (n)], then x = x + dt * v
extern "C" __global__ void __launch_bounds__(256)
latent_cfg_euler(float* __restrict__ x, const float* __restrict__ velocity, long long n, float s,
                 float dt) {
    for (long long i = first_index(); i < n; i += grid_stride()) {
        const float c = velocity[i], u = velocity[n + i];
        const float v = __fadd_rn(u, __fmul_rn(s, __fsub_rn(c, u)));
        x[i] = __fadd_rn(x[i], __fmul_rn(dt, v));
    }
}

// One AdamW step; one_minus_beta1/2 are computed once on the host (as the CPU does).
extern "C" __global__ void __launch_bounds__(256)
latent_adamw(float* __restrict__ x, const float* __restrict__ grad, float* __restrict__ m,
             float* __restrict__ v, long long n, float lr, float beta1, float beta2,
             float one_minus_beta1, float one_minus_beta2, float eps, float weight_decay,
             float bias_correction1, float bias_correction2) {
    for (long long i = first_index(); i < n; i += grid_stride()) {
        const float g = grad[i];
        const float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(one_minus_beta1, g));
        const float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(one_minus_beta2, g), g));
        m[i] = mi;
        v[i] = vi;
        const float denom = __fadd_rn(__fsqrt_rn(__fdiv_rn(vi, bias_correction2)), eps);
        const float update = __fdiv_rn(__fdiv_rn(mi, bias_correction1), denom);
        const float xi = x[i];
        x[i] = __fsub_rn(xi, __fmul_rn(lr, __fadd_rn(update, __fmul_rn(weight_decay, xi))));
    }
}

// NaN or infinite: all exponent bits set (no math header needed).
__device__ __forceinline__ bool not_finite(float f) {
    return (__float_as_uint(f) & 0x7f800000u) == 0x7f800000u;
}

// The f64 sums, without contraction either (the CPU rounds each product).
__device__ __forceinline__ double add_product(double acc, double p, double q) {
    return __dadd_rn(acc, __dmul_rn(p, q));
}

// Block totals by warp shuffles, then one atomic per block into
// out = [nonfinite (u64), dot, norm_a2, norm_b2 (f64 bits)], zeroed by the host. b may be null
// (has_b == 0): dot and norm_b2 stay 0. 256 threads.
extern "C" __global__ void __launch_bounds__(256)
latent_stats(const float* __restrict__ a, const float* __restrict__ b, int has_b, long long n,
             unsigned long long* __restrict__ out) {
    unsigned long long count = 0;
    double dot = 0.0, na = 0.0, nb = 0.0;
    for (long long i = first_index(); i < n; i += grid_stride()) {
        const float ai = a[i];
        count += not_finite(ai) ? 1ull : 0ull;
        const double ad = (double)ai;
        na = add_product(na, ad, ad);
        if (has_b) {
            const double bd = (double)b[i];
            dot = add_product(dot, ad, bd);
            nb = add_product(nb, bd, bd);
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        count += __shfl_xor_sync(0xffffffffu, count, o);
        dot += __shfl_xor_sync(0xffffffffu, dot, o);
        na += __shfl_xor_sync(0xffffffffu, na, o);
        nb += __shfl_xor_sync(0xffffffffu, nb, o);
    }
    __shared__ unsigned long long s_count[8];
    __shared__ double s_dot[8], s_na[8], s_nb[8];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
        s_count[warp] = count;
        s_dot[warp] = dot;
        s_na[warp] = na;
        s_nb[warp] = nb;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        const int warps = blockDim.x >> 5;
        for (int w = 1; w < warps; w++) {
            s_count[0] += s_count[w];
            s_dot[0] += s_dot[w];
            s_na[0] += s_na[w];
            s_nb[0] += s_nb[w];
        }
        if (s_count[0]) atomicAdd(out, s_count[0]);
        atomicAdd(reinterpret_cast<double*>(out + 1), s_dot[0]);
        atomicAdd(reinterpret_cast<double*>(out + 2), s_na[0]);
        atomicAdd(reinterpret_cast<double*>(out + 3), s_nb[0]);
    }
}
