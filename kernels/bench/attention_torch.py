"""PyTorch baselines for the fused attention, side by side with ours.

SDPA (dense) and FlexAttention (torch.compile'd, the same 3D neighbourhood mask through
create_block_mask: raster tokens of a 21 x 30 x 52 grid, windows clamp-shifted inside the video)
at 32,760 tokens, 12 heads x 128, batch 1; forward and forward+backward; bf16 and f16. CUDA
events, warm-up, median. With --ours (JSON lines from examples/attention_bench.rs) prints the
side-by-side table: ms, TFLOP/s over visible pairs, ratios vs SDPA dense and FlexAttention, the
FLOP ratio dense/local and the fraction of it reached.

python3 kernels/bench/attention_torch.py --ours ours.json --out torch.json
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

FR, H, W, HEADS, D = 21, 30, 52, 12, 128
N = FR * H * W
WINDOWS = [(1, 7), (1, 3), (2, 10)]


def bench(fn, reps=10, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def local_mask_mod(rt, rs):
    dev = "cuda"
    fsz, ysz, xsz = min(2 * rt + 1, FR), min(2 * rs + 1, H), min(2 * rs + 1, W)

    def start(c, r, e, sz):
        return torch.clamp(c - r, 0, e - sz)

    def mask_mod(b, h, q_idx, kv_idx):
        qf, qy, qx = q_idx // (H * W), (q_idx // W) % H, q_idx % W
        kf, ky, kx = kv_idx // (H * W), (kv_idx // W) % H, kv_idx % W
        fs, ys, xs = start(qf, rt, FR, fsz), start(qy, rs, H, ysz), start(qx, rs, W, xsz)
        return ((kf >= fs) & (kf < fs + fsz) & (ky >= ys) & (ky < ys + ysz) & (kx >= xs) & (kx < xs + xsz))

    return mask_mod, fsz * ysz * xsz


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours")
    ap.add_argument("--out")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    import torch._dynamo
    # One compiled graph per (dtype, mask, grad mode): raise dynamo's recompile limit.
    torch._dynamo.config.cache_size_limit = 64
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 64
    flex = torch.compile(flex_attention, dynamic=False)
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}; torch {torch.__version__}")
    # Ceilings: bf16 matmul and device copy.
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = bench(lambda: a @ a, reps=10)
    print(f"ceiling: bf16 matmul 8192^3 {2 * 8192**3 / t / 1e9:.0f} TFLOP/s")
    x = torch.empty(1 << 29, device="cuda", dtype=torch.uint8)
    y = torch.empty_like(x)
    t = bench(lambda: y.copy_(x), reps=10)
    print(f"ceiling: device copy {2 * x.numel() / t / 1e6:.0f} GB/s")
    del a, x, y
    rows = []
    for dt, name in [(torch.bfloat16, "bf16"), (torch.float16, "f16")]:
        g = torch.Generator(device="cuda").manual_seed(0)
        q = (torch.rand(1, HEADS, N, D, device="cuda", generator=g) * 4 - 2).to(dt).requires_grad_()
        k = (torch.rand(1, HEADS, N, D, device="cuda", generator=g) * 4 - 2).to(dt).requires_grad_()
        v = (torch.rand(1, HEADS, N, D, device="cuda", generator=g) * 2 - 1).to(dt).requires_grad_()
        do = (torch.rand(1, HEADS, N, D, device="cuda", generator=g) * 2 - 1).to(dt)

        def fb(f):
            def run():
                o = f()
                o.backward(do)
            return run

        with torch.no_grad():
            tf = bench(lambda: F.scaled_dot_product_attention(q, k, v), args.reps)
        tfb = bench(fb(lambda: F.scaled_dot_product_attention(q, k, v)), args.reps)
        rows.append({"impl": "sdpa", "mask": "dense", "dtype": name, "fwd_ms": tf, "fwdbwd_ms": tfb,
                     "visible_per_query": N})
        print(f"sdpa dense {name}: fwd {tf:.3f} ms, fwd+bwd {tfb:.3f} ms", flush=True)
        for rt, rs in WINDOWS:
            mm, vis = local_mask_mod(rt, rs)
            t0 = time.time()
            bm = create_block_mask(mm, None, None, N, N, device="cuda")
            with torch.no_grad():
                tf = bench(lambda: flex(q, k, v, block_mask=bm), args.reps)
            tfb = bench(fb(lambda: flex(q, k, v, block_mask=bm)), args.reps)
            rows.append({"impl": "flex", "mask": f"local{rt}/{rs}", "dtype": name, "fwd_ms": tf,
                         "fwdbwd_ms": tfb, "visible_per_query": vis,
                         "block_sparsity": float(bm.sparsity())})
            print(f"flex local{rt}/{rs} {name}: fwd {tf:.3f} ms, fwd+bwd {tfb:.3f} ms "
                  f"(block sparsity {bm.sparsity():.1f}%, setup {time.time() - t0:.0f}s)", flush=True)
        del q, k, v, do
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    if not args.ours:
        return
    ours = [json.loads(l) for l in open(args.ours) if l.strip()]
    fl = lambda vis: 4.0 * HEADS * N * vis * D
    print("\nside by side (" + dev + "), TFLOP/s over visible pairs; fwd+bwd FLOPs = 3.5 x fwd")
    print(f"{'mask':<11}{'dtype':>5} | {'ours fwd':>9}{'TF/s':>6} {'ours f+b':>9}{'TF/s':>6} | "
          f"{'torch':>5} {'fwd':>8} {'f+b':>8} | {'xSDPA fwd':>9} {'xSDPA f+b':>9} | {'xFlex fwd':>9} {'xFlex f+b':>9} | "
          f"{'FLOPratio':>9} {'frac fwd':>8} {'frac f+b':>8}")
    for o in ours:
        sd = next((r for r in rows if r["impl"] == "sdpa" and r["dtype"] == o["dtype"]), None)
        ref = next((r for r in rows if r["mask"] == o["mask"] and r["dtype"] == o["dtype"]), None)
        if sd is None or ref is None:
            continue
        vis = o["visible_per_query"]
        ratio = N / vis
        f1 = sd["fwd_ms"] / o["fwd_ms"]
        f2 = sd["fwdbwd_ms"] / o["fwdbwd_ms"]
        x1 = ref["fwd_ms"] / o["fwd_ms"]
        x2 = ref["fwdbwd_ms"] / o["fwdbwd_ms"]
        print(f"{o['mask']:<11}{o['dtype']:>5} | {o['fwd_ms']:>9.3f}{fl(vis) / o['fwd_ms'] / 1e9:>6.0f} "
              f"{o['fwdbwd_ms']:>9.3f}{3.5 * fl(vis) / o['fwdbwd_ms'] / 1e9:>6.0f} | "
              f"{ref['impl']:>5} {ref['fwd_ms']:>8.3f} {ref['fwdbwd_ms']:>8.3f} | {f1:>9.2f} {f2:>9.2f} | "
              f"{x1:>9.2f} {x2:>9.2f} | {ratio:>9.1f} {f1 / ratio:>8.2f} {f2 / ratio:>8.2f}")


if __name__ == "__main__":
    main()
