"""Scorer tests on fake runs (no model, no torch): pytest harness/tests -q  (CPU, < 20 s)."""
import json
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.path.dirname(HERE)
sys.path.insert(0, HARNESS)

import fake_runs as FR  # noqa: E402
import make_clips as MC  # noqa: E402
import metrics as MT  # noqa: E402
import score as S  # noqa: E402
from fastvmt_onnx import data as D  # noqa: E402

H = W = D.DEFAULT_H
F = D.DEFAULT_FRAMES


def clip_entry(family, seed, ood=False):
    """A reference clip + its clips.json entry, built the way make_clips does (then through a
    GIF round trip, as the scorer sees it)."""
    rng = np.random.default_rng([seed, 0])
    if ood:
        clip, _, info = D.make_harness_clip(rng, F, H, W, trajectory=family)
    else:
        clip, _, info = D.make_clip(rng, F, H, W, n_obj=1, trajectory=family, exclude=None)
    o = info["objects"][0]
    ref_colour = None if ood else o["colour"]
    c, s, b = MC.pick_target(rng, ref_colour, o["shape"], None if ood else info["background"])
    entry = dict(name=f"{family}{seed}", frames=F, height=H, width=W, fps=8,
                 trajectory=np.asarray(o["centre"], np.float64).tolist(),
                 size=np.asarray(o["size"], np.float64).tolist(),
                 target=dict(colour=c, shape=s, background=b),
                 domain="out_of_domain" if ood else "in_domain", family=family,
                 reference=dict(shape=o["shape"], background_motion=list(info.get("background_motion", (0, 0)))),
                 prompt=D.caption_for([{"colour": c, "shape": s}], b))
    return clip, entry


def gif_roundtrip(clip, tmp_path, name="x"):
    p = os.path.join(str(tmp_path), name + ".gif")
    D.save_gif(clip, p, fps=8)
    return S.load_gif(p, 125.0)


# ----------------------------------------------------------------------------- the metric itself
def test_similarity_definition():
    t = np.arange(F, dtype=np.float64)
    right = np.stack([10 + 3 * t, np.full(F, 20.0)], -1)[None]          # moving right, 3 px/frame
    left = right[:, ::-1].copy()
    down = np.stack([np.full(F, 20.0), 10 + 3 * t], -1)[None]
    still = np.full((1, F, 2), 20.0)
    eps = MT.MOVE_FRAC * W
    assert MT.similarity(right, right, eps)[0, 0] == pytest.approx(1.0)
    assert MT.similarity(left, right, eps)[0, 0] == pytest.approx(-1.0)
    assert MT.similarity(down, right, eps)[0, 0] == pytest.approx(0.0)
    assert MT.similarity(still, right, eps)[0, 0] == pytest.approx(0.0)
    # static tracks are dropped: a still output scores 0, a still reference is unscorable
    assert S.motion_fidelity(still, right, H, W)["mf"] == 0.0
    assert np.isnan(S.motion_fidelity(right, still, H, W)["mf"])
    # best match: a generated track matching one of several reference tracks scores 1
    assert S.motion_fidelity(right, np.concatenate([down, right]), H, W)["mf"] == pytest.approx(1.0)
    # untracked steps (NaN) count as disagreement, not as agreement
    gap = right.copy()
    gap[0, 3] = np.nan
    assert MT.similarity(gap, right, eps)[0, 0] == pytest.approx(5 / 7)


# ----------------------------------------------------------------------------- fake outputs
FAMILIES = ["straight", "accelerating", "curved", "circular", "zigzag", "bouncing"]


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refs")
    out = []
    for i, fam in enumerate(FAMILIES):
        clip, e = clip_entry(fam, 10 + i)
        out.append((gif_roundtrip(clip, tmp, e["name"]), e))
    return out


def test_identity_scores_one(refs):
    """The reference itself as the output: the tracker (run on it) agrees with ground truth."""
    for ref, e in refs:
        r = S.score_pair(ref, ref, e, check_prompt=False)
        assert r["mf"] > 0.97, (e["name"], r["mf"])
        assert r["centroid_err_px"] < 2.5, (e["name"], r["centroid_err_px"])  # shape centroid != centre param
        assert r["tc_stable"] == 1.0


def test_perfect_transfer_scores_one_and_follows_prompt(refs, tmp_path):
    """Target colour/shape/background drawn along the reference trajectory: MF ~ 1 and the
    checker reads the prompt's colour and shape."""
    for ref, e in refs:
        gen = gif_roundtrip(FR.fake_video(e, "ditflow", [e], np.random.default_rng(0)), tmp_path)
        r = S.score_pair(gen, ref, e)
        assert r["mf"] > 0.95, (e["name"], r["mf"])
        assert r["colour_ok"] and r["background_ok"], (e["name"], r["pred_colour"], r["pred_background"])
        assert r["centroid_err_px"] < 2.5


def test_recoloured_copy_keeps_motion(refs):
    """Swapping the colours (object and background) changes nothing in the motion."""
    for ref, e in refs[:3]:
        gen = 255 - ref  # every colour changes, the geometry does not
        assert S.score_pair(gen, ref, e, check_prompt=False)["mf"] > 0.97


def test_static_and_reversed_score_low(refs):
    for ref, e in refs:
        static = np.repeat(ref[:1], len(ref), 0)
        r = S.score_pair(static, ref, e, check_prompt=False)
        assert r["mf"] == 0.0 and r["n_gen_tracks"] == 0
        rev = S.score_pair(ref[::-1].copy(), ref, e, check_prompt=False)["mf"]
        if e["family"] in ("straight", "accelerating", "curved"):
            assert rev < -0.8, (e["name"], rev)
        # others (a bounce or a zigzag reversed) share some steps with the original
        assert rev < 0.75, (e["name"], rev)


def test_unrelated_motion_scores_near_zero(refs):
    """Each output moving along another clip's trajectory: MF far below a transfer's."""
    vals = []
    for i, (ref, e) in enumerate(refs):
        other = refs[(i + 1) % len(refs)][1]
        gen = FR.render(e, np.asarray(other["trajectory"]), other["size"])
        vals.append(S.score_pair(gen, ref, e, check_prompt=False)["mf"])
    assert np.mean(vals) < 0.4, vals


def test_textured_moving_background_reference(tmp_path):
    """Out-of-domain reference (textured object, moving textured background): the tracker,
    run on it as if it were an output, still agrees with its ground truth."""
    clip, e = clip_entry("straight", 2, ood=True)
    assert np.abs(e["reference"]["background_motion"]).min() > 1.0  # the background does move
    ref = gif_roundtrip(clip, tmp_path)
    r = S.score_pair(ref, ref, e, check_prompt=False)
    assert r["mf"] > 0.9, r["mf"]
    # and the tracker can stand in for ground truth on the reference side
    gen = FR.render(e, np.asarray(e["trajectory"]), e["size"])
    assert S.score_pair(gen, ref, None, check_prompt=False)["mf"] > 0.9


def test_gif_merged_frames_are_expanded(tmp_path):
    """Pillow merges identical consecutive frames; the loader restores the frame count."""
    clip, _ = clip_entry("straight", 1)
    p = os.path.join(str(tmp_path), "s.gif")
    D.save_gif(np.repeat(clip[:1], F, 0), p)
    assert S.load_gif(p, 125.0).shape[0] == F
    assert S.load_gif(p).shape[0] == 1  # without the frame duration there is nothing to go by


# ----------------------------------------------------------------------------- clips + runs end to end
def test_make_clips_and_score_runs(tmp_path):
    clips_dir = os.path.join(str(tmp_path), "clips")
    MC.main(["--out", clips_dir, "--count", "3", "--seed", "5", "--bundle", ""])
    entries = json.load(open(os.path.join(clips_dir, "clips.json")))
    assert len(entries) == 3 and sum(e["domain"] == "out_of_domain" for e in entries) == 1
    for e in entries:
        for k in ("name", "gif", "prompt", "reference_caption", "frames", "height", "width", "fps", "trajectory", "target"):
            assert k in e
        v = S.load_gif(os.path.join(clips_dir, e["gif"]))
        assert v.shape == (e["frames"], e["height"], e["width"], 3) == (F, H, W, 3)
        assert len(e["trajectory"]) == e["frames"] and len(e["trajectory"][0]) == 2
        t, ref = e["target"], e["reference"]
        assert t["shape"] != ref["shape"] and t["colour"] != ref["nearest_colour"] and t["background"] != ref["background"]
        assert e["prompt"] == f"a {t['colour']} {t['shape']} on a {t['background']} background"
        assert all(w in D.VOCAB for w in e["prompt"].split())
    # deterministic
    again = os.path.join(str(tmp_path), "again")
    MC.main(["--out", again, "--count", "3", "--seed", "5", "--bundle", ""])
    assert json.load(open(os.path.join(again, "clips.json"))) == entries

    run_dir = os.path.join(str(tmp_path), "runs")
    FR.write_fake_runs(os.path.join(clips_dir, "clips.json"), run_dir, ["none", "ditflow", "fastvmt", "static"])
    runs = json.load(open(os.path.join(run_dir, "runs.json")))
    runs["runs"].append(dict(runs["runs"][0], mode="adaptive", gif="missing.gif"))  # a broken run
    json.dump(runs, open(os.path.join(run_dir, "runs.json"), "w"))
    md, rows, scores = S.score_runs(run_dir, None, quiet=True)   # clips found next to the references
    assert list(rows) == ["none", "ditflow", "fastvmt", "adaptive", "static"]
    assert rows["ditflow"]["mf_mean"] > 0.95 and rows["static"]["mf_mean"] == 0.0
    assert rows["ditflow"]["mf_mean"] > rows["none"]["mf_mean"] + 0.3
    assert rows["ditflow"]["colour"] == 1.0
    assert rows["ditflow"]["speedup_vs_ditflow"] == pytest.approx(1.0)
    assert rows["fastvmt"]["speedup_vs_ditflow"] == pytest.approx(rows["ditflow"]["wall_s"] / rows["fastvmt"]["wall_s"])
    assert rows["adaptive"]["failed"] == 1 and "error" in [s for s in scores if s["mode"] == "adaptive"][0]
    assert os.path.exists(os.path.join(run_dir, "table.md")) and "| ditflow |" in md
    assert "Tracker self-check" in md  # each reference tracked as if it were an output
    doc = json.load(open(os.path.join(run_dir, "scores.json")))
    assert len(doc["runs"]) == 13 and set(doc["per_mode"]) == set(rows)


def test_make_clips_reads_bundle_defaults(tmp_path):
    bundle = os.path.join(str(tmp_path), "bundle")
    os.makedirs(bundle)
    json.dump({"defaults": {"frames": 6, "height": 32, "width": 40, "fps": 10, "steps": 30}},
              open(os.path.join(bundle, "manifest.json"), "w"))
    out = os.path.join(str(tmp_path), "clips")
    MC.main(["--out", out, "--count", "3", "--bundle", bundle])
    for e in json.load(open(os.path.join(out, "clips.json"))):
        assert (e["frames"], e["height"], e["width"], e["fps"]) == (6, 32, 40, 10)
        v = S.load_gif(os.path.join(out, e["gif"]), 100.0)
        assert v.shape == (6, 32, 40, 3)
        c = np.asarray(e["trajectory"])
        assert (c[:, 0] > 0).all() and (c[:, 0] < 40).all() and (c[:, 1] > 0).all() and (c[:, 1] < 32).all()


def test_rust_runs_format(tmp_path):
    """runs.json as plugin/harness-runner writes it: GIF names relative to the run folder,
    absolute reference paths, extra keys, null losses, a NaN-stopped run."""
    clips_dir = os.path.join(str(tmp_path), "clips")
    MC.main(["--out", clips_dir, "--count", "2", "--seed", "1", "--bundle", ""])
    entries = json.load(open(os.path.join(clips_dir, "clips.json")))
    run_dir = os.path.join(str(tmp_path), "runs")
    os.makedirs(run_dir)
    runs = []
    for e in entries:
        for mode, wall in (("ditflow", 4.0), ("fastvmt", 2.0)):
            D.save_gif(FR.fake_video(e, "ditflow", entries, np.random.default_rng(0)),
                       os.path.join(run_dir, f"{e['name']}.{mode}.gif"))
            runs.append({"clip": e["name"], "mode": mode, "gif": f"{e['name']}.{mode}.gif",
                         "reference_gif": os.path.abspath(os.path.join(clips_dir, e["gif"])),
                         "prompt": e["prompt"], "wall_s": wall, "real_forward": 40, "real_backward": 16,
                         "cached_steps": 24, "guided_steps": 6, "denoiser_passes": 60, "first_loss": None,
                         "final_loss": None, "stopped_on_nan": mode == "fastvmt", "seed": 0})
    json.dump({"machine": "test", "model": "tiny-shapes", "device": "cpu", "steps": 30, "runs": runs},
              open(os.path.join(run_dir, "runs.json"), "w"))
    md, rows, scores = S.score_runs(run_dir, clips_dir, quiet=True, selfcheck=False)
    assert all("error" not in s for s in scores)
    assert rows["fastvmt"]["speedup_vs_ditflow"] == pytest.approx(2.0)
    assert rows["fastvmt"]["stopped_on_nan"] == 2 and "NaN-stopped" in md
    assert "device: cpu" in md and rows["ditflow"]["mf_mean"] > 0.95
