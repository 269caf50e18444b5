"""Checks of the shipped bundle that need only numpy (+ onnxruntime for the graph outputs).

The manifest's hashes and I/O specs, the tokenizer and RoPE tables against test_vectors/, and
ONNX Runtime outputs of all four graphs against the reference values exported with the bundle."""
import hashlib
import json
import os

import numpy as np
import pytest

from fastvmt_onnx import data as D
from fastvmt_onnx.model_np import rope_tables_np

BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "tiny-shapes")


def _manifest():
    p = os.path.join(BUNDLE, "manifest.json")
    if not os.path.exists(p):
        pytest.skip(f"no bundle at {BUNDLE}")
    return json.load(open(p))


def _tv():
    idx = json.load(open(os.path.join(BUNDLE, "test_vectors", "index.json")))
    out = {}
    for name, e in idx.items():
        a = np.fromfile(os.path.join(BUNDLE, "test_vectors", e["file"]), dtype=np.dtype(e["dtype"]).newbyteorder("<"))
        out[name] = a.reshape(e["shape"])
    return idx, out


def test_manifest_hashes_and_specs():
    m = _manifest()
    assert m["format"] == "fastvmt-bundle" and m["format_version"] == 1
    for key in ("denoiser", "guidance_head", "guidance_grad", "text_encoder"):
        f = m["files"][key]
        p = os.path.join(BUNDLE, f["path"])
        assert hashlib.sha256(open(p, "rb").read()).hexdigest() == f["sha256"], key
        names = [i["name"] for i in f["inputs"]]
        if key == "text_encoder":
            assert names == ["tokens"]
        else:
            assert names[:5] == ["x", "t", "text", "rope_cos", "rope_sin"]
    total = sum(os.path.getsize(os.path.join(BUNDLE, f["path"])) for f in m["files"].values())
    assert total < 32 * 1024 * 1024


def test_tokenizer_and_rope_match_vectors():
    m = _manifest()
    idx, tv = _tv()
    toks = np.stack([D.tokenize(p, m["text"]["max_len"], m["text"]["vocab"]) for p in idx["tokens"]["prompts"]])
    np.testing.assert_array_equal(toks, tv["tokens"])
    g = idx["rope_cos"]["grid"]
    cos, sin = rope_tables_np(g["F"], g["h"], g["w"], m["rope"]["axes_dim"], m["rope"]["theta"])
    np.testing.assert_allclose(cos, tv["rope_cos"], atol=1e-7)
    np.testing.assert_allclose(sin, tv["rope_sin"], atol=1e-7)


def test_onnxruntime_matches_vectors():
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    m = _manifest()
    _, tv = _tv()

    def run(key, feeds):
        s = ort.InferenceSession(os.path.join(BUNDLE, m["files"][key]["path"]), providers=["CPUExecutionProvider"])
        return s.run(None, feeds)

    def rel(a, b):
        return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))
    (text,) = run("text_encoder", {"tokens": tv["tokens"]})
    assert rel(text, tv["text"]) < 1e-5
    base = {k: tv[k] for k in ("x", "t", "text", "rope_cos", "rope_sin")}
    (v,) = run("denoiser", base)
    assert rel(v, tv["velocity"]) < 1e-4
    q, k = run("guidance_head", base)
    assert rel(q, tv["q"]) < 1e-4 and rel(k, tv["k"]) < 1e-4
    (dx,) = run("guidance_grad", {**base, "dq": tv["dq"], "dk": tv["dk"]})
    assert rel(dx, tv["dx"]) < 1e-4
