"""Weights for graphs exported without them (`export_wan.py --structure-only`).

Why: exporting the Wan2.1-1.3B-dims bundle takes ~9 minutes of the GPU host's 30-minute lease
(torch.export tracing, ~7.6 s per block per graph), and the bundle's weights (2.8 GB per graph)
cannot travel there (64 MiB per transfer). The graphs without weights are a few MB. So the build
machine exports the structure, and the GPU host writes the weights from the same seeded model
(`wan13_dims` / `tiny_wan`, then `to_dtype`): the result is the bundle a full export there would
give, weight for weight, in under a minute.

    # build machine
    python -m fastvmt_onnx.export_wan --wan13-dims 30 --dtype fp16 --custom-attention \\
        --structure-only --bundle-name wan13-dense --out .wanstruct/wan13-dense ...
    # GPU host
    python -m fastvmt_onnx.materialize --wan13-dims 30 --dtype fp16 /tmp/wanbench/wan13-dense

How: a structure-only graph keeps every weight as an initializer named by its parameter (the
export skips onnxscript's optimiser, which would fold weights into new constants) and stored as
an external reference (location, offset, length) into `<graph>.onnx.data`, which is not written.
`materialize` looks each name up in the seeded `WanGraph`'s state dict, checks type, shape and
length, and writes the bytes at the recorded offset. A name it cannot find is an error.

`--optimize` then runs onnxscript's optimiser on each graph with its weights, as the normal
export does, and re-hashes the manifest. On a 2-block Wan-dims graph that gives the normal
export's node and Cast counts exactly (389/52 denoiser, 600/74 guidance_step, from 853/90 and
1407/130 unoptimised; ONNX Runtime's own optimiser at load folds the Casts to the same count but
leaves Split-to-sequence patterns). It is off by default because it is slow: 16.8 min for the
four 30-block graphs on the 2-core build machine (one graph at a time; 1 to 6 min each), against
49 s for the weights alone. On the H100 (2026-11-27) the unoptimised denoiser ran as fast as the
normal export's (plain sampling 17.9 s vs 18.1 s), but the unoptimised gradient graphs failed in
ONNX Runtime's CUDA session: a Reshape of `text` to [B*L, 4096], computed from Shape nodes, came
out as [1, 4096] (the CPU session computes it right; the optimiser folds that target to the
constant [-1, 4096]). `--optimize-graphs guidance_step` (about 2 min there) is the verified
route; run_device.sh's `materialize` does it by default.
"""
from __future__ import annotations

import argparse
import os

import torch

_ONNX_TYPES = {1: torch.float32, 10: torch.float16, 16: torch.bfloat16, 7: torch.int64}


def strip_weights(path: str, threshold: int = 1024) -> None:
    """Re-saves `path` with every initializer of at least `threshold` bytes as an external
    reference into `<path>.data`, then deletes that file: the graph without its weights."""
    import onnx
    m = onnx.load(path)  # with its weights, wherever they are
    data = os.path.basename(path) + ".data"
    if os.path.exists(path + ".data"):
        os.remove(path + ".data")
    onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                    size_threshold=threshold)
    os.remove(path + ".data")


def _external(init):
    info = {e.key: e.value for e in init.external_data}
    return info["location"], int(info.get("offset", 0)), int(info["length"])


def optimize_graph(path: str) -> None:
    """onnxscript's optimiser on a graph with its weights (what torch.onnx.export(optimize=True)
    runs), saved back with its weights beside it; written aside, then moved into place."""
    import onnx
    import onnxscript
    m = onnxscript.optimizer.optimize(onnx.load(path))
    base = os.path.basename(path)
    aside = path + ".optimised"
    os.makedirs(aside, exist_ok=True)
    onnx.save_model(m, os.path.join(aside, base), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=base + ".data", size_threshold=1024)
    if os.path.exists(os.path.join(aside, base + ".data")):
        os.replace(os.path.join(aside, base + ".data"), path + ".data")
    os.replace(os.path.join(aside, base), path)
    os.rmdir(aside)


def refresh_manifest(bundle_dir: str) -> None:
    """Re-hashes the graph files listed in the bundle's manifest.json (after optimize_graph)."""
    import json
    from .export import io_spec, sha256
    path = os.path.join(bundle_dir, "manifest.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        man = json.load(f)
    for spec in man.get("files", {}).values():
        p = os.path.join(bundle_dir, spec["path"])
        ins, outs = io_spec(p)
        spec.update(sha256=sha256(p), bytes=os.path.getsize(p), inputs=ins, outputs=outs)
        if os.path.exists(p + ".data"):
            spec["external_data_bytes"] = os.path.getsize(p + ".data")
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(man, f, indent=1)
    os.replace(tmp, path)


def materialize(bundle_dir: str, state: dict[str, torch.Tensor], optimize: bool | tuple[str, ...] = False) -> list[str]:
    """Writes the external weight files of every graph in `bundle_dir` from `state` (parameter
    name -> tensor), then (optimize: True for every graph, or a tuple of graph names such as
    ("guidance_step",)) optimises those graphs as the normal export does and re-hashes the
    manifest; returns the weight files written."""
    import onnx
    written = []
    for name in sorted(os.listdir(bundle_dir)):
        if not name.endswith(".onnx"):
            continue
        path = os.path.join(bundle_dir, name)
        m = onnx.load(path, load_external_data=False)
        refs = [i for i in m.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
        if not refs:
            continue
        files = {}
        for init in refs:
            location, offset, length = _external(init)
            if os.path.basename(location) != location:
                raise ValueError(f"{path}: initializer {init.name} points outside the bundle ({location})")
            if init.name not in state:
                raise KeyError(f"{path}: initializer {init.name} is not a parameter of the model "
                               "(was the graph exported with --structure-only?)")
            t = state[init.name].detach().contiguous()
            want = _ONNX_TYPES.get(init.data_type)
            if t.dtype != want or list(t.shape) != list(init.dims):
                raise ValueError(f"{path}: initializer {init.name} is {want} {list(init.dims)}, "
                                 f"the model's parameter is {t.dtype} {list(t.shape)}")
            raw = t.view(torch.uint8).numpy().tobytes() if t.dim() else t.reshape(1).view(torch.uint8).numpy().tobytes()
            if len(raw) != length:
                raise ValueError(f"{path}: initializer {init.name} has {len(raw)} bytes, the graph expects {length}")
            files.setdefault(location, []).append((offset, raw))
        for location, chunks in files.items():
            out = os.path.join(bundle_dir, location)
            tmp = out + ".partial"
            with open(tmp, "wb") as f:  # the offsets were laid out by onnx.save_model, in order
                for offset, raw in sorted(chunks, key=lambda c: c[0]):
                    f.seek(offset)
                    f.write(raw)
            os.replace(tmp, out)  # never a half-written weight file under the final name
            written.append(out)
        if optimize is True or (optimize and name[: -len(".onnx")] in optimize):
            optimize_graph(path)
    if optimize:
        refresh_manifest(bundle_dir)
    return written


def main():
    from .export_wan import WanGraph, tiny_wan, to_dtype, wan13_dims
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", help="folder of graphs exported with export_wan.py --structure-only")
    ap.add_argument("--tiny", action="store_true", help="the tiny random config")
    ap.add_argument("--wan13-dims", type=int, default=0, metavar="LAYERS",
                    help="blocks of the Wan2.1-1.3B-dims model (default: the manifest's `blocks`)")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None,
                    help="weights' type (default: the manifest's `weights_dtype`)")
    ap.add_argument("--optimize", action="store_true",
                    help="run onnxscript's optimiser on each graph after writing its weights (slow)")
    ap.add_argument("--optimize-graphs", default="",
                    help="comma list of graphs to optimise (e.g. guidance_step: its unoptimised form "
                         "failed in ONNX Runtime's CUDA session, 2026-11-27)")
    a = ap.parse_args()
    manifest = os.path.join(a.bundle, "manifest.json")
    if os.path.exists(manifest) and not a.tiny:
        import json
        with open(manifest) as f:
            man = json.load(f)
        a.wan13_dims = a.wan13_dims or int(man.get("blocks", 0))
        a.dtype = a.dtype or man.get("weights_dtype")
    a.dtype = a.dtype or "fp32"
    if not (a.tiny or a.wan13_dims):
        ap.error("give --tiny or --wan13-dims LAYERS (the same as the export), or a bundle with a manifest")
    wan = tiny_wan() if a.tiny else wan13_dims(a.wan13_dims)
    wan = to_dtype(wan, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype])
    state = WanGraph(wan).state_dict()
    optimize = True if a.optimize else tuple(g for g in a.optimize_graphs.split(",") if g)
    for f in materialize(a.bundle, state, optimize=optimize):
        print(f"wrote {f} ({os.path.getsize(f) / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
