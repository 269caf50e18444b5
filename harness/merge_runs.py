"""Join the per-run folders of harness/device_run.sh into one runs folder for score.py.

    python3 harness/merge_runs.py OUT_DIR RUNS_DIR --clips CLIPS_DIR

Copies every GIF into RUNS_DIR, points reference_gif at CLIPS_DIR (the runs were made on
another machine) and writes RUNS_DIR/runs.json."""
import argparse
import glob
import json
import os
import shutil

ap = argparse.ArgumentParser()
ap.add_argument("out_dir")
ap.add_argument("runs_dir")
ap.add_argument("--clips", required=True)
a = ap.parse_args()
os.makedirs(a.runs_dir, exist_ok=True)
doc, runs = None, []
for path in sorted(glob.glob(os.path.join(a.out_dir, "*", "runs.json"))):
    d = json.load(open(path))
    doc = doc or d
    for r in d["runs"]:
        shutil.copy(os.path.join(os.path.dirname(path), r["gif"]), a.runs_dir)
        r["reference_gif"] = os.path.abspath(os.path.join(a.clips, os.path.basename(r["reference_gif"])))
        runs.append(r)
doc["runs"] = runs
json.dump(doc, open(os.path.join(a.runs_dir, "runs.json"), "w"), indent=1)
print(f"{len(runs)} runs -> {a.runs_dir}/runs.json")
