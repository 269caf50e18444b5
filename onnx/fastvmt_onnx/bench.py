"""CPU timing of the bundle's graphs with onnxruntime (default shape, N intra-op threads).

    python -m fastvmt_onnx.bench --bundle onnx/models/tiny-shapes --threads 2
"""
import argparse
import json
import os
import time

import numpy as np


def main():
    import onnxruntime as ort
    from .model_np import rope_tables_np
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="onnx/models/tiny-shapes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    m = json.load(open(os.path.join(a.bundle, "manifest.json")))
    d = m["defaults"]
    pt, ph, pw = m["patch_size"]
    Fr, H, W = d["frames"], d["height"], d["width"]
    cos, sin = rope_tables_np(Fr // pt, H // ph, W // pw, m["rope"]["axes_dim"], m["rope"]["theta"])
    N = cos.shape[0]
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    rng = np.random.default_rng(0)
    print(f"onnxruntime {ort.__version__}, {a.threads} threads, F={Fr} H={H} W={W} (N={N} tokens)")
    for key, B in [("text_encoder", 2), ("denoiser", 1), ("denoiser", 2), ("guidance_head", 1), ("guidance_head", 2),
                   ("guidance_grad", 1), ("guidance_grad", 2)]:
        s = ort.InferenceSession(os.path.join(a.bundle, m["files"][key]["path"]), so, providers=["CPUExecutionProvider"])
        if key == "text_encoder":
            feeds = {"tokens": np.zeros((B, m["text"]["max_len"]), np.int64)}
        else:
            feeds = dict(x=rng.standard_normal((B, 3, Fr, H, W), dtype=np.float32), t=np.full(B, 0.5, np.float32),
                         text=rng.standard_normal((B, m["text"]["max_len"], m["text"]["dim"]), dtype=np.float32),
                         rope_cos=cos, rope_sin=sin)
            if key == "guidance_grad":
                feeds["dq"] = rng.standard_normal((B, m["heads"], N, m["head_dim"]), dtype=np.float32)
                feeds["dk"] = rng.standard_normal((B, m["heads"], N, m["head_dim"]), dtype=np.float32)
        s.run(None, feeds)
        ts = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            s.run(None, feeds)
            ts.append(time.perf_counter() - t0)
        print(f"| {key} | B={B} | median {np.median(ts) * 1e3:.0f} ms | min {np.min(ts) * 1e3:.0f} ms |")


if __name__ == "__main__":
    main()
