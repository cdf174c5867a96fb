"""Procedural video-dynamics generator: determinism, exact ground truth, sentences, real video files."""

import json
import os

import numpy as np
import pytest

from wegen_jax.data import synthetic as S
from wegen_jax.data import video_io

SPEC = S.ClipSpec(size=64, num_frames=24, fps=12, num_scenes=2)


def test_same_seed_same_clip_other_seed_differs():
  f1, g1 = S.generate_clip(7, SPEC)
  f2, g2 = S.generate_clip(7, SPEC)
  f3, _ = S.generate_clip(8, SPEC)
  np.testing.assert_array_equal(f1, f2)
  assert json.dumps(g1) == json.dumps(g2)
  assert not np.array_equal(f1, f3)


def test_masks_and_boxes_match_pixels():
  frames, gt = S.generate_clip(3, S.ClipSpec(size=64, num_frames=12, max_objects=3))
  checked = 0
  for t, fr in enumerate(gt["frames"]):
    for rec in fr["objects"]:
      if not rec["visible"]:
        continue
      m = S.rle_decode(rec["rle"], gt["size"])
      ys, xs = np.nonzero(m)
      assert rec["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
      if gt["objects"][rec["id"]]["texture"] == "solid":  # the mask holds exactly the object's colour
        np.testing.assert_array_equal(frames[t][m], np.broadcast_to(rec["state"]["rgb"], (m.sum(), 3)))
      checked += 1
  assert checked > 0


def test_rle_round_trip():
  rng = np.random.default_rng(0)
  for m in [rng.random((5, 7)) > 0.5, np.ones((3, 3), bool), np.zeros((2, 4), bool)]:
    np.testing.assert_array_equal(S.rle_decode(S.rle_encode(m), m.shape), m)


def test_cuts_keep_minimum_scene_length():
  for seed in range(30):
    _, gt = S.generate_clip(seed, S.ClipSpec(num_frames=36, num_scenes=3))
    bounds = [0] + gt["cuts"] + [36]
    assert len(gt["cuts"]) == 2 and min(np.diff(bounds)) >= 6
    assert [f["scene"] for f in gt["frames"]] == sum(
      ([k] * (b - a) for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))), []
    )


def _one_object_gt(events, shape="square", colour="red"):
  scene = {
    "background": "gray",
    "texture": "plain",
    "bg_seed": 0,
    "objects": [
      {
        "colour": colour,
        "shape": shape,
        "texture": "solid",
        "x": 0.5,
        "y": 0.5,
        "size": 0.1,
        "angle": 0.0,
        "events": events,
      }
    ],
  }
  frames = []
  for t in range(10):
    st = S._object_state(scene["objects"][0], t)
    frames.append({"scene": 0, "objects": [{"id": "s0o0", "visible": st["visible"], "state": st}]})
  return {
    "objects": {"s0o0": {"scene": 0, "shape": shape, "texture": "solid", "colour": colour}},
    "scenes": [scene],
    "frames": frames,
  }


def test_describe_names_each_dynamic():
  gt = _one_object_gt([{"kind": "move", "t0": 0, "t1": 9, "x": 0.1, "y": 0.1}])
  assert S.describe(gt, 0, 9) == "the red square moves up and left to the top left."
  gt = _one_object_gt([{"kind": "rotate", "t0": 0, "t1": 9, "delta": 30.0}])
  assert S.describe(gt, 0, 9) == "the red square rotates clockwise."
  gt = _one_object_gt([{"kind": "scale", "t0": 0, "t1": 9, "factor": 0.6}])
  assert S.describe(gt, 0, 9) == "the red square shrinks."
  gt = _one_object_gt([{"kind": "colour", "t0": 0, "t1": 9, "to": "blue"}])
  assert S.describe(gt, 0, 9) == "the red square turns blue."
  gt = _one_object_gt([{"kind": "appear", "t0": 5, "t1": 6}], shape="circle", colour="green")
  assert S.describe(gt, 0, 9) == "a green circle appears at the centre."
  assert S.caption(gt, 0) == "an empty scene with a gray background."
  gt = _one_object_gt([{"kind": "disappear", "t0": 5, "t1": 6}])
  assert S.describe(gt, 0, 9) == "the red square disappears."
  assert S.caption(gt, 0) == "a red square at the centre on a gray background."
  assert S.describe(_one_object_gt([]), 0, 9) == "nothing changes."


def test_describe_refuses_cross_cut_pairs():
  _, gt = S.generate_clip(1, SPEC)
  c = gt["cuts"][0]
  with pytest.raises(ValueError, match="different scenes"):
    S.describe(gt, c - 1, c)


def test_static_clip_has_no_dynamics():
  frames, gt = S.generate_clip(5, S.ClipSpec(num_frames=12, static=True))
  assert np.all(frames == frames[0])
  assert S.describe(gt, 0, 11) == "nothing changes."


@pytest.mark.parametrize("codec", sorted(S.CODECS))
def test_written_video_decodes_close_to_source(tmp_path, codec):
  frames, gt = S.generate_clip(11, S.ClipSpec(size=64, num_frames=12))
  path = S.write_clip(str(tmp_path / "clip"), frames, gt, codec)
  assert path.endswith("." + S.CODECS[codec][0])
  with open(tmp_path / "clip.json") as f:
    side = json.load(f)
  assert side["video"] == os.path.basename(path) and side["codec"] == codec
  dec = video_io.decode_sampled(path, fps=0, size=64, max_pixels=10**6)
  assert dec.frames.shape == frames.shape and dec.source_index.tolist() == list(range(12))
  assert dec.probe.codec in (codec, S.CODECS[codec][1].replace("lib", "").replace("-", ""), "vp9", "h264")
  assert np.abs(dec.frames.astype(int) - frames).mean() < 6  # lossy codecs stay close


def test_corpus_plan_is_deterministic_and_mixes_codecs(tmp_path):
  cfg = S.default_corpus_config()
  plans = [S.clip_plan(i, 0, cfg) for i in range(8)]
  assert plans == [S.clip_plan(i, 0, cfg) for i in range(8)]
  assert {p[2] for p in plans} == set(cfg.codecs)
  paths = S.write_corpus(str(tmp_path), 4, 0, cfg)
  assert sorted(os.listdir(tmp_path)) == sorted(
    [os.path.basename(p) for p in paths] + [f"clip_{i:05d}.json" for i in range(4)]
  )


def test_clip_spec_textures_restrict_the_grammar():
  spec = S.ClipSpec(num_frames=6, bg_textures=("plain",), object_textures=("solid",))
  for seed in range(12):
    _, gt = S.generate_clip(seed, spec)
    assert {sc["texture"] for sc in gt["scenes"]} == {"plain"}
    assert {o["texture"] for o in gt["objects"].values()} == {"solid"}
  textures = {
    sc["texture"] for seed in range(40) for sc in S.generate_clip(seed, S.ClipSpec(num_frames=6))[1]["scenes"]
  }
  assert textures == set(S.BG_TEXTURES)  # the default grammar draws them all


def _event_kinds(spec, seeds=range(30)):
  return {
    ev["kind"]
    for seed in seeds
    for sc in S.generate_clip(seed, spec)[1]["scenes"]
    for obj in sc["objects"]
    for ev in obj["events"]
  }


def test_clip_spec_event_kinds_restrict_the_dynamics():
  assert _event_kinds(S.ClipSpec(num_frames=6, event_kinds=("move",))) == {"move"}
  assert _event_kinds(S.ClipSpec(num_frames=6)) == set(S.EVENT_KINDS)
  with pytest.raises(ValueError, match="event_kinds"):
    S.ClipSpec(event_kinds=("teleport",))


def test_clip_spec_moves_by_a_fixed_step_in_one_frame():
  spec = S.ClipSpec(num_frames=12, event_kinds=("move",), max_events_per_object=1, move_step=0.25, move_frames=1)
  for seed in range(10):
    _, gt = S.generate_clip(seed, spec)
    for oid in range(len(gt["objects"])):
      xy = np.array([[fr["objects"][oid]["state"][k] for k in ("x", "y")] for fr in gt["frames"]])
      steps = np.linalg.norm(np.diff(xy, axis=0), axis=1)
      assert np.sum(steps > 1e-9) <= 1  # a jump: no frame shows the object half way
      assert np.allclose(steps[steps > 1e-9], 0.25) and np.all((xy >= 0.1) & (xy <= 0.9))
    # a jump between the two frames is named like any move
    moved = [s for i in range(11) if "moves" in (s := S.describe(gt, i, i + 1))]
    assert moved and all(" to the " in s for s in moved)
  with pytest.raises(ValueError, match="move_step"):
    S.ClipSpec(move_step=0.5)
