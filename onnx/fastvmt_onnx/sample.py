"""Flow-matching sampler for a FastVMT bundle (numpy + onnxruntime), and the torch equivalent.

x_t = (1 - t) x0 + t noise, the model predicts v = noise - x0. Euler from t=1 to t=0 over the
shifted schedule sigma' = shift * s / (1 + (shift - 1) * s), s = linspace(1, 0, steps + 1).
CFG: v = v_uncond + cfg * (v_cond - v_uncond); the unconditional prompt is all pad tokens.

    python -m fastvmt_onnx.sample --bundle onnx/models/tiny-shapes --prompt "a red circle on a black background" --out out.gif
"""
from __future__ import annotations

import json
import os

import numpy as np

from . import data as D
from .model_np import rope_tables_np


def sigmas(steps, shift):
    s = np.linspace(1.0, 0.0, steps + 1)
    return shift * s / (1 + (shift - 1) * s)


def euler_sample(velocity_fn, text_c, text_u, shape, steps, cfg, shift, rng):
    """velocity_fn(x [2B,...], t [2B], text [2B,L,D]) -> v. Returns x0 in [-1, 1] (float32)."""
    x = rng.standard_normal(shape).astype(np.float32)
    sig = sigmas(steps, shift)
    B = shape[0]
    text = np.concatenate([text_c, text_u], 0).astype(np.float32)
    for i in range(steps):
        t = np.full(2 * B, sig[i], np.float32)
        v = velocity_fn(np.concatenate([x, x], 0), t, text)
        v = v[B:] + cfg * (v[:B] - v[B:])
        x = (x + (sig[i + 1] - sig[i]) * v).astype(np.float32)
    return x


def to_uint8(x):
    """x [B,3,F,H,W] in [-1,1] -> uint8 [B,F,H,W,3]."""
    v = np.clip((x + 1) * 0.5, 0, 1)
    return np.rint(v.transpose(0, 2, 3, 4, 1) * 255).astype(np.uint8)


class OrtBundle:
    def __init__(self, path, threads=0):
        import onnxruntime as ort
        self.path = path
        self.manifest = json.load(open(os.path.join(path, "manifest.json")))
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        self.sess = {}
        for k in ("text_encoder", "denoiser"):
            self.sess[k] = ort.InferenceSession(os.path.join(path, self.manifest["files"][k]["path"]), so,
                                                providers=["CPUExecutionProvider"])
        m = self.manifest
        self.vocab = m["text"]["vocab"]
        self.max_len = m["text"]["max_len"]

    def session(self, key):
        if key not in self.sess:
            import onnxruntime as ort
            self.sess[key] = ort.InferenceSession(os.path.join(self.path, self.manifest["files"][key]["path"]),
                                                  providers=["CPUExecutionProvider"])
        return self.sess[key]

    def encode(self, prompts):
        toks = np.stack([D.tokenize(p, self.max_len, self.vocab) for p in prompts])
        return self.sess["text_encoder"].run(None, {"tokens": toks})[0]

    def rope(self, frames, h, w):
        r = self.manifest["rope"]
        return rope_tables_np(frames, h, w, r["axes_dim"], r["theta"])

    def sample_many(self, prompts, steps=30, cfg=5.0, shift=1.0, seed=0, batch=4, frames=None, height=None, width=None):
        d = self.manifest["defaults"]
        Fr, H, W = frames or d["frames"], height or d["height"], width or d["width"]
        pt, ph, pw = self.manifest["patch_size"]
        cos, sin = self.rope(Fr // pt, H // ph, W // pw)
        rng = np.random.default_rng(seed)
        out = []
        for i in range(0, len(prompts), batch):
            ps = prompts[i:i + batch]
            tc = self.encode(ps)
            tu = self.encode([""] * len(ps))

            def vel(x, t, text):
                return self.sess["denoiser"].run(None, {"x": x, "t": t, "text": text, "rope_cos": cos, "rope_sin": sin})[0]
            x = euler_sample(vel, tc, tu, (len(ps), 3, Fr, H, W), steps, cfg, shift, rng)
            out.extend(to_uint8(x))
        return out


def torch_sample(dit, te, prompts, frames, H, W, steps=30, cfg=5.0, shift=1.0, seed=0, device="cuda"):
    """Same sampler with the torch model (used for evaluation during training)."""
    import torch
    from .model import rope_tables
    c = dit.cfg
    pt, ph, pw = c.patch_size
    cos, sin = rope_tables(frames // pt, H // ph, W // pw, c, device)
    toks = torch.from_numpy(np.stack([D.tokenize(p, c.max_len) for p in prompts])).to(device)
    B = len(prompts)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=False):
        text = torch.cat([te(toks), te(torch.zeros_like(toks))], 0)
        x = torch.randn(B, 3, frames, H, W, generator=g, device=device)
        sig = sigmas(steps, shift)
        for i in range(steps):
            t = torch.full((2 * B,), float(sig[i]), device=device)
            v = dit(torch.cat([x, x], 0), t, text, cos, sin).float()
            v = v[B:] + cfg * (v[:B] - v[B:])
            x = x + float(sig[i + 1] - sig[i]) * v
    return to_uint8(x.float().cpu().numpy())


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="onnx/models/tiny-shapes")
    ap.add_argument("--prompt", action="append", required=True)
    ap.add_argument("--out", default="sample.gif")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--cfg", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    b = OrtBundle(a.bundle)
    d = b.manifest["defaults"]
    clips = b.sample_many(a.prompt, steps=a.steps or d["steps"], cfg=a.cfg or d["cfg"],
                          shift=b.manifest["scheduler"]["shift"], seed=a.seed)
    D.save_gif(np.concatenate(clips, axis=2), a.out, fps=d.get("fps", 8), scale=2)
    print("wrote", a.out)
