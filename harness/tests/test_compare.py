"""compare.py: paired MF differences over the clips two variants share, against a by-hand computation."""
import csv
import json
import math
import os
import random
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
COMPARE = os.path.join(HERE, "..", "compare.py")
sys.path.insert(0, os.path.join(HERE, ".."))

from compare import load_scores, paired  # noqa: E402


def _scores(tmp_path, rng):
    runs, mf = [], {}
    for i in range(9):
        clip = f"c{i}"
        for mode, bwd in (("ditflow", 40), ("fastvmt", 16)):
            v = rng.uniform(-1, 1)
            mf[(clip, mode)] = v
            runs.append({"clip": clip, "mode": mode, "mf": v, "real_backward": bwd})
    # what the pairing must leave out: a clip only one mode scored, an error, a NaN MF
    runs.append({"clip": "only_a", "mode": "fastvmt", "mf": 0.5, "real_backward": 16})
    runs.append({"clip": "c0", "mode": "adaptive", "error": "broken GIF"})
    runs.append({"clip": "c1", "mode": "adaptive", "mf": float("nan"), "real_backward": 9})
    runs.append({"clip": "c2", "mode": "adaptive", "mf": 0.25, "real_backward": 9})
    with open(tmp_path / "scores.json", "w") as f:
        json.dump({"runs": runs}, f)
    return mf


def test_paired_difference_matches_a_direct_computation(tmp_path):
    rng = random.Random(7)
    mf = _scores(tmp_path, rng)
    p = paired(load_scores(tmp_path), "fastvmt", "ditflow")
    d = [mf[(f"c{i}", "fastvmt")] - mf[(f"c{i}", "ditflow")] for i in range(9)]
    mean = sum(d) / 9
    se = (sum((x - mean) ** 2 for x in d) / 8) ** 0.5 / 3
    assert p["n"] == 9
    assert math.isclose(p["diff"], mean, rel_tol=1e-12)
    assert math.isclose(p["se"], se, rel_tol=1e-12)
    assert (p["bwd_a"], p["bwd_b"]) == (16, 40)
    one = paired(load_scores(tmp_path), "adaptive", "fastvmt")
    assert one["n"] == 1 and math.isclose(one["diff"], 0.25 - mf[("c2", "fastvmt")])


def test_cli_prints_pairs_writes_csv_and_names_a_missing_mode(tmp_path):
    _scores(tmp_path, random.Random(3))
    out = subprocess.run([sys.executable, COMPARE, str(tmp_path), "fastvmt:ditflow", "--csv",
                          str(tmp_path / "c.csv")], capture_output=True, text=True, check=True).stdout
    assert out.startswith("fastvmt - ditflow: ") and "n=9" in out
    rows = list(csv.reader(open(tmp_path / "c.csv")))
    assert rows[0] == ["clip", "fastvmt_mf", "fastvmt_bwd", "ditflow_mf", "ditflow_bwd"]
    assert len(rows) == 1 + 10  # c0..c8 and only_a
    bad = subprocess.run([sys.executable, COMPARE, str(tmp_path), "fastvmt:nosuch"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "'nosuch' is not in scores.json" in bad.stderr


def test_pooled_pairs_concatenate_the_per_pair_differences(tmp_path):
    rng = random.Random(11)
    mf = _scores(tmp_path, rng)
    p = paired(load_scores(tmp_path), ["fastvmt", "adaptive"], ["ditflow", "fastvmt"])
    d = [mf[(f"c{i}", "fastvmt")] - mf[(f"c{i}", "ditflow")] for i in range(9)]
    d.append(0.25 - mf[("c2", "fastvmt")])  # adaptive's only finite clip
    mean = sum(d) / len(d)
    se = (sum((x - mean) ** 2 for x in d) / (len(d) - 1)) ** 0.5 / len(d) ** 0.5
    assert p["n"] == 10 and p["a"] == "fastvmt+adaptive" and p["b"] == "ditflow+fastvmt"
    assert math.isclose(p["diff"], mean, rel_tol=1e-12)
    assert math.isclose(p["se"], se, rel_tol=1e-12)
    assert math.isclose(p["bwd_a"], (9 * 16 + 9) / 10) and math.isclose(p["bwd_b"], (9 * 40 + 16) / 10)
    out = subprocess.run([sys.executable, COMPARE, str(tmp_path), "fastvmt+adaptive:ditflow+fastvmt"],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("fastvmt+adaptive - ditflow+fastvmt: ") and "n=10" in out
    bad = subprocess.run([sys.executable, COMPARE, str(tmp_path), "fastvmt+adaptive:ditflow"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "pool as many modes" in bad.stderr
