"""`export_wan.py --structure-only` + `materialize`: graphs exported without their weights get them
from the seeded model where they run (the GPU host; bench/wan/run_device.sh). The rebuilt graph must
compute what the model computes, and a weight the model does not have must be refused by name."""
import os
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: the Wan tests need torch")
pytest.importorskip("diffusers", reason="diffusers not installed: the Wan tests need it")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
onnx = pytest.importorskip("onnx", reason="onnx not installed")

from fastvmt_onnx.export_wan import WanGraph, example, export_wan, tiny_wan  # noqa: E402
from fastvmt_onnx.materialize import materialize, optimize_graph  # noqa: E402
from fastvmt_onnx.model import set_attention_impl  # noqa: E402


def test_structure_only_graph_gets_its_weights_back(tmp_path):
    wan = tiny_wan()
    path = export_wan(wan, str(tmp_path), graphs=("denoiser",), structure_only=True)["denoiser"]
    m = onnx.load(path, load_external_data=False)
    external = [i.name for i in m.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) >= 10, external  # the weights are references...
    assert not os.path.exists(path + ".data")  # ...to a file that is not there
    with pytest.raises(Exception):
        ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    state = WanGraph(tiny_wan()).state_dict()  # a fresh model from the same seed
    broken = dict(state)
    del broken[external[0]]
    with pytest.raises(KeyError, match=external[0]):
        materialize(str(tmp_path), broken)
    assert materialize(str(tmp_path), state) == [path + ".data"]

    seed = random.randrange(1 << 30)
    x, t, text, cos, sin = example(wan, B=2, Fr=2, hh=3, ww=4, L=5, seed=seed)
    set_attention_impl("math")
    with torch.no_grad():
        want = WanGraph(wan, "denoiser")(x, t, text, cos, sin).numpy()
    feeds = dict(x=x.numpy(), t=t.numpy(), text=text.numpy(), rope_cos=cos.numpy(), rope_sin=sin.numpy())
    for stage in ("materialized", "optimised"):
        if stage == "optimised":
            before = len(onnx.load(path, load_external_data=False).graph.node)
            optimize_graph(path)  # `materialize --optimize`: onnxscript's optimiser, as a normal export
            assert len(onnx.load(path, load_external_data=False).graph.node) < before
        got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        assert err < 1e-5, (stage, seed, err)
