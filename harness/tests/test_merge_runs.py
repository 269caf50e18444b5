"""merge_runs.py joins device_run.sh's per-run folders into one runs folder score.py can read."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MERGE = os.path.join(HERE, "..", "merge_runs.py")


def _run_dir(root, name, clip, mode, gif_bytes):
    d = os.path.join(root, name)
    os.makedirs(d)
    gif = f"{clip}.{mode}_00001.gif"
    with open(os.path.join(d, gif), "wb") as f:
        f.write(gif_bytes)
    doc = {"machine": "test", "model": "m", "device": "cpu", "steps": 3,
           "runs": [{"clip": clip, "mode": mode, "gif": gif, "real_backward": 4,
                     "reference_gif": f"/elsewhere/clips/{clip}.gif"}]}
    with open(os.path.join(d, "runs.json"), "w") as f:
        json.dump(doc, f)


def test_merge_joins_runs_and_repoints_references(tmp_path):
    out, runs, clips = tmp_path / "out", tmp_path / "runs", tmp_path / "clips"
    os.makedirs(out)
    _run_dir(out, "c000.fastvmt", "a", "fastvmt", b"GIF-a")
    _run_dir(out, "c001.adaptive-x", "b", "adaptive-x", b"GIF-b")
    subprocess.run([sys.executable, MERGE, str(out), str(runs), "--clips", str(clips)], check=True)
    doc = json.load(open(runs / "runs.json"))
    assert doc["machine"] == "test" and doc["steps"] == 3
    assert sorted((r["clip"], r["mode"]) for r in doc["runs"]) == [("a", "fastvmt"), ("b", "adaptive-x")]
    for r in doc["runs"]:
        assert (runs / r["gif"]).read_bytes() == f"GIF-{r['clip']}".encode()
        assert r["reference_gif"] == str(clips / f"{r['clip']}.gif")
