"""Sum ONNX Runtime profiles (FASTVMT_ORT_PROFILE=PREFIX, one JSON per graph) by operator and
execution provider: which nodes ran on the CPU (a silent fallback inside a CUDA session costs
copies of whole activations), how many copies between host and device the session inserted,
and where the time went.

    python3 bench/wan/profile_summary.py PREFIX*.json [--top 15]

On the CUDA provider a node's time is its launch on the host unless ONNX Runtime was built with
CUDA profiling (the PyPI build is not): compare `model_run` times, and read node times as
launch costs there. CPU nodes' times are real.
"""
from __future__ import annotations

import argparse
import collections
import json
import os


def summarise(path, top):
    events = json.load(open(path))
    runs = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    by_provider = collections.Counter()
    by_op = collections.defaultdict(lambda: [0, 0])  # (op, provider) -> [count, microseconds]
    for e in nodes:
        a = e.get("args", {})
        key = (a.get("op_name", "?"), a.get("provider", "?"))
        by_provider[key[1]] += 1
        by_op[key][0] += 1
        by_op[key][1] += e["dur"]
    print(f"== {os.path.basename(path)}")
    if runs:
        print(f"   {len(runs)} runs, mean {sum(runs) / len(runs) / 1e3:.1f} ms, total {sum(runs) / 1e6:.2f} s")
    print("   node executions by provider: " + ", ".join(f"{p} {n}" for p, n in by_provider.most_common()))
    copies = {k: v for k, v in by_op.items() if k[0].startswith("Memcpy")}
    if copies:
        print("   host/device copies: " + ", ".join(f"{k[0]} x{v[0]} ({v[1] / 1e3:.1f} ms)" for k, v in copies.items()))
    cpu_big = sorted(((k, v) for k, v in by_op.items() if k[1] == "CPUExecutionProvider"), key=lambda kv: -kv[1][1])
    if cpu_big and any(p != "CPUExecutionProvider" for p in by_provider):
        print("   on the CPU inside a non-CPU session (op, count, ms): "
              + ", ".join(f"{k[0]} x{v[0]} {v[1] / 1e3:.1f}" for k, v in cpu_big[:8]))
    total = sum(v[1] for v in by_op.values()) or 1
    print(f"   top {top} (op, provider, count, ms, share):")
    for (op, prov), (n, us) in sorted(by_op.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"     {op:<24} {prov.replace('ExecutionProvider', ''):<6} {n:>6} {us / 1e3:>10.1f} {us / total * 100:>5.1f}%")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    for f in a.files:
        summarise(f, a.top)


if __name__ == "__main__":
    main()
