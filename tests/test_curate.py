"""DIIC curation end to end on generator videos (several codecs) plus broken files: shots match the ground-truth
cuts, static clips give nothing, bad files are named, the dataset loads through Grain, labelling, resume,
host sharding and determinism."""

import contextlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest

from wegen_jax.curation import labellers
from wegen_jax.data import schema, source, synthetic as S, video_io
from wegen_jax.config_utils import load_config
from wegen_jax.curation import __main__ as cli, encoders, resultfile, runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (seed, spec, codec): two static clips, three with hard cuts, the rest plain; every codec appears.
CLIPS = [
  (1, S.ClipSpec(num_frames=36), "h264"),
  (2, S.ClipSpec(num_frames=36, num_scenes=2), "mpeg4"),
  (3, S.ClipSpec(num_frames=36, static=True), "mjpeg"),
  (4, S.ClipSpec(num_frames=36, num_scenes=3), "vp9"),
  (5, S.ClipSpec(num_frames=36), "ffv1"),
  (6, S.ClipSpec(num_frames=36, static=True), "h264"),
  (7, S.ClipSpec(num_frames=36, num_scenes=2), "mjpeg"),
  (8, S.ClipSpec(num_frames=36), "mpeg4"),
]
BAD = {  # file -> expected words of its reason
  "corrupt.mp4": "unreadable",
  "empty.mp4": "zero-length",
  "trunc_h264.mp4": "unreadable",
  "trunc_mjpeg.mkv": "truncated",
  "audio.wav": "no video stream",
  "huge.avi": "exceeds max_pixels",
  "dangling.mp4": "broken link",
}
CONFIG = f'''
from wegen_jax.config_utils import load_config
def get_config(arg=None):
    c = load_config("{REPO}/configs/curate.py:preset=synthetic")
    c.max_pixels = 1920 * 1080
    c.workers = 1
    c.validation_fraction = 0.3
    return c
'''


def _write_bad(d):
  (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
  (d / "empty.mp4").write_bytes(b"")
  frames, gt = S.generate_clip(99, S.ClipSpec(num_frames=36))
  for codec, name in [("h264", "trunc_h264"), ("mjpeg", "trunc_mjpeg")]:
    path = S.write_clip(str(d / f"full_{codec}"), frames, gt, codec)
    data = open(path, "rb").read()
    (d / f"{name}.{path.rsplit('.', 1)[1]}").write_bytes(data[: len(data) // 2])
    os.remove(path)
    os.remove(str(d / f"full_{codec}.json"))
  with av.open(str(d / "audio.wav"), "w") as out:
    st = out.add_stream("pcm_s16le", rate=8000)
    fr = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16", layout="mono")
    fr.sample_rate = 8000
    for p in list(st.encode(fr)) + list(st.encode()):
      out.mux(p)
  video_io.write_video(str(d / "huge.avi"), np.zeros((2, 1440, 2560, 3), np.uint8), fps=12, codec="mpeg4")
  os.symlink(str(d / "nowhere.mp4"), str(d / "dangling.mp4"))
  (d / "notes.txt").write_text("not a video; ignored by extension")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("curate")
  vids = root / "videos"
  vids.mkdir()
  for i, (seed, spec, codec) in enumerate(CLIPS):
    frames, gt = S.generate_clip(seed, spec)
    S.write_clip(str(vids / f"clip_{i:02d}"), frames, gt, codec)
  _write_bad(vids)
  cfg_path = root / "cfg.py"
  cfg_path.write_text(CONFIG)
  return root, vids, str(cfg_path)


@pytest.fixture(scope="module")
def curated(corpus, tmp_path_factory):
  root, vids, cfg = corpus
  out = tmp_path_factory.mktemp("out") / "data"
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    assert cli.main(["--videos", str(vids), "--out", str(out), "--config", cfg, "--no-progress"]) == 0
  printed = buf.getvalue()
  assert "records are unlabelled" in printed and "--label" in printed and "failed: corrupt.mp4" in printed
  with open(out / runner.STATS) as f:
    return out, json.load(f)


@pytest.fixture(scope="module")
def labelled(curated, corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("lab") / "data"
  shutil.copytree(curated[0], out, symlinks=True)
  assert (
    cli.main(["--videos", str(corpus[1]), "--out", str(out), "--config", corpus[2], "--no-progress", "--label"]) == 0
  )
  with open(out / runner.STATS) as f:
    return out, json.load(f)


def _results(out):
  return {r["video_id"]: r for r in runner.iter_results(str(out))}


def _gt(vids, video_id):
  with open(vids / (os.path.splitext(video_id)[0] + ".json")) as f:
    return json.load(f)


def test_bad_files_are_skipped_and_named(curated):
  _, stats = curated
  failed = {f["file"]: f["reason"] for f in stats["videos"]["failed_files"]}
  assert set(failed) == set(BAD)
  for name, words in BAD.items():
    assert words in failed[name], (name, failed[name])
  v = stats["videos"]
  assert v["seen"] == len(CLIPS) + len(BAD)  # notes.txt and the .json sidecars are not videos
  assert v["kept"] + v["no_pairs"] == len(CLIPS) and v["failed"] == len(BAD)


def test_shots_match_ground_truth_cuts_and_no_tuple_crosses_one(curated, corpus):
  out, _ = curated
  vids = corpus[1]
  for vid, res in _results(out).items():
    if res["status"] != "ok":
      continue
    gt = _gt(vids, vid)
    starts = [s for s, _ in res["shots"]][1:]
    assert len(starts) == len(gt["cuts"]), (vid, res["shots"], gt["cuts"])
    for s, c in zip(starts, gt["cuts"]):  # a shot starts at the first sampled frame after the cut
      assert 0 <= s - c <= 2, (vid, res["shots"], gt["cuts"])
    scene = [f["scene"] for f in gt["frames"]]
    for rec in res["records"]:
      assert len({scene[i] for i in rec["frame_indices"]}) == 1


def test_static_clips_rejected_moving_clips_kept(curated, corpus):
  out, stats = curated
  for vid, res in _results(out).items():
    if res["status"] != "ok":
      continue
    if _gt(corpus[1], vid)["static"]:
      assert res["records"] == [] and res["funnel"]["k2"]["quality"] > 0
      assert res["funnel"]["k2"]["motion"] == 0 and res["funnel"]["k3"]["motion"] == 0
    else:
      assert len(res["records"]) > 0, vid
  f2 = stats["funnel"]["k2"]
  assert f2["candidates"] >= f2["quality"] >= f2["motion"] >= f2["identity"] >= f2["duplicate"] >= f2["cap"] > 0
  assert stats["records"]["k2"] == f2["cap"] and stats["records"]["k3"] == stats["funnel"]["k3"]["cap"]


def test_records_hold_the_source_frames(curated, corpus):
  """frame_indices point at the generator's frames: the stored PNGs match a fresh render of those frames."""
  out, _ = curated
  for vid, res in _results(out).items():
    if not res["records"]:
      continue
    gt = _gt(corpus[1], vid)
    frames, _ = S.generate_clip(gt["seed"], S.ClipSpec(**gt["spec"]))
    for rec in res["records"][:4]:
      got = np.stack([schema.decode_png(b) for b in rec["frames"]]).astype(int)
      assert np.abs(got - frames[rec["frame_indices"]]).mean() < 6, vid


def test_unlabelled_selection_loads_through_grain(curated):
  out, stats = curated
  assert stats["records"]["unlabelled"] == sum(stats["splits"].values()) > 0
  assert set(stats["splits"]) == {"train", "validation"}
  sizes = set()
  for split, n in stats["splits"].items():
    ds = source.dynamics_dataset(str(out), split)
    assert len(ds) == n
    for i in range(0, n, max(1, n // 5)):
      ex = ds[i]
      k = len(ex["frame_indices"])
      sizes.add(k)
      assert ex["frames"].shape == (k, 64, 64, 3) and ex["frames"].dtype == np.uint8
      assert not ex["labelled"] and ex["dynamics"] == [""] * (k - 1)
  assert sizes == {2, 3}
  import tensorflow_datasets as tfds  # the shards are a regular TFDS dataset directory

  info = tfds.builder_from_directory(stats["dataset_dir"]).info
  assert {k: v.num_examples for k, v in info.splits.items()} == stats["splits"]
  pairs = list(source.dynamics_dataset(str(out), "train", num_frames=2, shard_index=1, shard_count=2))
  triples = list(source.dynamics_dataset(str(out), "train", num_frames=3, shard_index=1, shard_count=2))
  assert all(len(ex["frame_indices"]) == 2 for ex in pairs) and all(len(ex["frame_indices"]) == 3 for ex in triples)
  assert len(pairs) + len(triples) == len(source.dynamics_dataset(str(out), "train", shard_index=1, shard_count=2))


def test_label_pass_fills_ground_truth_texts(labelled, corpus):
  out, stats = labelled
  assert stats["records"].get("unlabelled", 0) == 0 and stats["records"]["labelled"] > 0
  ds = source.dynamics_dataset(str(out), "train", labelled_only=True)
  assert len(ds) == stats["splits"]["train"]
  for i in range(0, len(ds), max(1, len(ds) // 8)):
    ex = ds[i]
    gt = _gt(corpus[1], ex["video_id"])
    idx = ex["frame_indices"].tolist()
    assert ex["labeller"] == "synthetic"
    assert ex["caption"] == S.caption(gt, idx[0])
    assert ex["dynamics"] == [S.describe(gt, a, b) for a, b in zip(idx[:-1], idx[1:])]
    assert len(ex["boxes"]) == len(ex["box_label"]) == len(ex["box_frame"]) > 0
    assert np.all((ex["boxes"] >= 0) & (ex["boxes"] <= 1)) and ex["box_frame"].max() < len(idx)
    for k, name, box in zip(ex["box_frame"], ex["box_label"], ex["boxes"]):  # boxes = ground truth / 64
      want = [
        o["box"]
        for o in gt["frames"][idx[k]]["objects"]
        if o["visible"] and f"{o['state']['colour']} {gt['objects'][o['id']]['shape']}" == name
      ]
      np.testing.assert_allclose(box * 64, want[0], atol=1e-4)


def test_resume_skips_finished_videos(curated, corpus, tmp_path):
  out = tmp_path / "data"
  shutil.copytree(curated[0], out, symlinks=True)
  cfg = load_config(corpus[2])
  again = runner.run_selection(str(corpus[1]), str(out), cfg, progress=False)
  assert again == {"assigned": len(CLIPS) + len(BAD), "skipped_done": len(CLIPS) + len(BAD)}
  # a killed run: one finished result lost, one half-written temp file left behind
  victim = runner.result_path(str(out), "clip_01.avi")
  os.remove(victim)
  open(victim + ".123.tmp", "wb").write(b"partial")
  again = runner.run_selection(str(corpus[1]), str(out), cfg, progress=False)
  assert again["skipped_done"] == len(CLIPS) + len(BAD) - 1 and again["ok"] == 1
  stats = runner.merge(str(out), cfg)
  assert stats["splits"] == curated[1]["splits"]
  # a config change that alters selection invalidates the old results
  cfg.select.max_per_shot = 2
  assert runner.run_selection(str(corpus[1]), str(out), cfg, progress=False)["skipped_done"] == 0


def _record_keys(out):
  return sorted(
    (r["video_id"], tuple(rec["frame_indices"].tolist()), rec["frames"][0])
    for r in runner.iter_results(str(out))
    for rec in r["records"]
  )


def test_parallel_and_sharded_runs_give_the_same_records(curated, corpus, tmp_path):
  cfg = load_config(corpus[2])
  cfg.workers = 2
  for h in range(2):
    runner.run_selection(str(corpus[1]), str(tmp_path), cfg, host_index=h, host_count=2, progress=False)
  stats = runner.merge(str(tmp_path), cfg)
  assert stats["splits"] == curated[1]["splits"]
  assert _record_keys(tmp_path) == _record_keys(curated[0])


def test_other_labellers_fail_clearly(tmp_path):
  with pytest.raises(labellers.NotAvailableError, match="not found: /nope"):
    labellers.HFVLMLabeller("/nope", "caption", "dynamics")
  cfg = load_config(f"{REPO}/configs/curate.py:preset=vlm")
  cfg.labeller.hf_vlm.path = str(tmp_path / "missing")
  with pytest.raises(labellers.NotAvailableError, match="missing"):
    labellers.build_labeller(cfg.labeller)


def test_ground_truth_labeller_needs_its_sidecar(tmp_path):
  lab = labellers.GroundTruthLabeller()
  req = labellers.LabelRequest(str(tmp_path / "v.mp4"), "v.mp4", [0, 1], np.zeros((2, 8, 8, 3), np.uint8), (0, 0, 1, 1))
  with pytest.raises(labellers.LabelError, match="sidecar"):
    lab(req)


def test_builtin_encoder_separates_scenes():
  frames, gt = S.generate_clip(2, S.ClipSpec(num_frames=36, num_scenes=2))
  f = encoders.ThumbHistEncoder()(frames)
  c = gt["cuts"][0]
  assert np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
  assert f[0] @ f[2] > 0.9 and f[c - 1] @ f[c] < f[0] @ f[2]


def test_clip_encoder_adapter_matches_torch(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  try:
    from wegen_jax.convert import load_hf_clip  # noqa: F401
  except ImportError as e:
    pytest.skip(f"wegen_jax.convert.load_hf_clip not importable: {e}")
  cfg = transformers.CLIPConfig(
    text_config=dict(
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=1,
      num_attention_heads=2,
      vocab_size=99,
      max_position_embeddings=16,
    ),
    vision_config=dict(
      hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    ),
    projection_dim=16,
  )
  torch.manual_seed(0)
  transformers.CLIPModel(cfg).eval().save_pretrained(tmp_path)
  enc_cfg = load_config(f"{REPO}/configs/curate.py:preset=clip").encoder
  enc_cfg.clip_dir, enc_cfg.image_size = str(tmp_path), 32
  enc = encoders.build_encoder(enc_cfg)
  frames, _ = S.generate_clip(3, S.ClipSpec(num_frames=4))
  got = enc(frames)
  with torch.no_grad():
    ref = transformers.CLIPModel.from_pretrained(tmp_path).get_image_features(
      pixel_values=torch.from_numpy(enc.preprocess(frames))
    )
  ref = getattr(ref, "pooler_output", ref).numpy()
  ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
  np.testing.assert_allclose(got, ref, atol=1e-4)


def _tiny_llava(path):
  """A random 1-layer LLaVA (CLIP vision + Llama) with a word-level tokenizer, saved as a local HF dir."""
  tr = pytest.importorskip("transformers")
  tokenizers = pytest.importorskip("tokenizers")
  words = ["<unk>", "<s>", "</s>", "<image>", "<pad>"] + [chr(c) for c in range(33, 127)] + ["user", "assistant"]
  vocab = {w: i for i, w in enumerate(words)}
  tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
  tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok = tr.PreTrainedTokenizerFast(
    tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
  )
  tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
  template = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
  )
  proc = tr.LlavaProcessor(
    image_processor=tr.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    tokenizer=tok,
    patch_size=8,
    vision_feature_select_strategy="default",
    chat_template=template,
    num_additional_image_tokens=1,
  )
  cfg = tr.LlavaConfig(
    vision_config=tr.CLIPVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    ),
    text_config=tr.LlamaConfig(
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=1,
      num_attention_heads=2,
      num_key_value_heads=2,
      vocab_size=len(words),
    ),
    image_token_index=vocab["<image>"],
    vision_feature_select_strategy="default",
  )
  tr.LlavaForConditionalGeneration(cfg).save_pretrained(path)
  proc.save_pretrained(path)


def test_hf_vlm_labelling_pass(curated, tmp_path):
  """--label with a transformers VLM from a local dir (random tiny LLaVA: the texts are noise, the plumbing
  is what is checked: every record gets a caption and K-1 dynamics texts and is marked labelled)."""
  pytest.importorskip("torch")
  _tiny_llava(str(tmp_path / "vlm"))
  out = tmp_path / "data"
  os.makedirs(out / runner.WORK / "results")
  src = runner.result_path(str(curated[0]), "clip_00.mp4")
  shutil.copy(src, out / runner.WORK / "results")
  cfg = load_config(f"{REPO}/configs/curate.py:preset=vlm")
  cfg.labeller.hf_vlm.path, cfg.labeller.hf_vlm.max_new_tokens = str(tmp_path / "vlm"), 3
  counts = runner.run_labelling(str(out), cfg, progress=False)
  recs = next(runner.iter_results(str(out)))["records"]
  assert counts == {"labelled": len(recs)} and len(recs) > 0
  for rec in recs:
    assert rec["labelled"] and rec["labeller"] == "hf_vlm" and isinstance(rec["caption"], str)
    assert len(rec["dynamics"]) == len(rec["frame_indices"]) - 1


def test_chunked_decoding_finds_the_same_shots(curated, corpus, tmp_path):
  """Long videos are curated in chunks; with tiny chunks the shots equal the one-chunk run's."""
  cfg = load_config(corpus[2])
  cfg.chunk_frames = 5
  runner.run_selection(str(corpus[1]), str(tmp_path), cfg, progress=False)
  whole, chunked = _results(curated[0]), _results(tmp_path)
  assert set(whole) == set(chunked)
  for vid, res in chunked.items():
    assert res["status"] == whole[vid]["status"] and res["shots"] == whole[vid]["shots"], vid
    assert res.get("num_sampled") == whole[vid].get("num_sampled")
    if res["status"] == "ok":
      scene = [f["scene"] for f in _gt(corpus[1], vid)["frames"]]
      assert all(len({scene[i] for i in rec["frame_indices"]}) == 1 for rec in res["records"])
      assert bool(res["records"]) == bool(whole[vid]["records"]), vid


def test_command_line_entry_points(tmp_path):
  """`python -m wegen_jax.data.synthetic` then `python -m wegen_jax.curation` with 2 worker processes."""
  env = dict(os.environ, PYTHONPATH=REPO)
  run = lambda *a: subprocess.run([sys.executable, "-m", *a], env=env, capture_output=True, text=True, timeout=120)
  gen = run(
    "wegen_jax.data.synthetic", "--out", str(tmp_path / "v"), "--num", "3", "--config", f"{REPO}/configs/synthetic.py"
  )
  assert gen.returncode == 0 and "wrote 3 clips" in gen.stdout, gen.stderr
  cur = run(
    "wegen_jax.curation",
    "--videos",
    str(tmp_path / "v"),
    "--out",
    str(tmp_path / "d"),
    "--config",
    f"{REPO}/configs/curate.py:preset=synthetic",
    "--workers",
    "2",
    "--label",
  )
  assert cur.returncode == 0, cur.stderr
  assert "videos seen 3" in cur.stdout and "labelling (synthetic)" in cur.stdout and "unlabelled" not in cur.stdout


def test_crashing_worker_names_its_file(corpus, tmp_path, monkeypatch):
  """A file that kills its worker process (as a decoder segfault would) is named; the other videos finish."""
  hook = tmp_path / "hook"
  hook.mkdir()
  # imported at start-up by the spawned workers only (they inherit PYTHONPATH): crash.mp4 kills the process
  (hook / "sitecustomize.py").write_text(
    "import os\nimport av\n_open = av.open\n"
    "def _crashing_open(path, *a, **k):\n"
    "    if str(path).endswith('crash.mp4'):\n        os._exit(3)\n    return _open(path, *a, **k)\n"
    "av.open = _crashing_open\n"
  )
  vids = tmp_path / "videos"
  vids.mkdir()
  for name in ["clip_00.mp4", "clip_01.avi", "clip_03.webm"]:
    shutil.copy(corpus[1] / name, vids / name)
  shutil.copy(corpus[1] / "clip_00.mp4", vids / "crash.mp4")
  monkeypatch.setenv("PYTHONPATH", f"{hook}{os.pathsep}{REPO}")
  cfg = load_config(corpus[2])
  cfg.workers = 2
  counts = runner.run_selection(str(vids), str(tmp_path / "d"), cfg, progress=False)
  assert counts["failed"] == 1 and counts["ok"] == 3
  failed = [r for r in runner.iter_results(str(tmp_path / "d")) if r["status"] == "failed"]
  assert [(r["video_id"], "crashed" in r["reason"]) for r in failed] == [("crash.mp4", True)]


class _Planted:
  """Unpickling this creates `marker`: what a file planted in the results folder could do to a pickle reader."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_planted_result_files_are_never_executed(curated, corpus, tmp_path, caplog):
  """Results are data only: a pickle planted where a result is expected (bare, or as an object array inside an
  .npz), a truncated result, a foreign .npz and a legacy .pkl are never unpickled; resume curates those videos
  again, and a planted file no video maps to is skipped and counted by merge and labelling."""
  out = tmp_path / "data"
  shutil.copytree(curated[0], out, symlinks=True)
  marker = tmp_path / "pwned"
  evil = pickle.dumps(_Planted(marker))
  ids = sorted(v for v, r in _results(curated[0]).items() if r["status"] == "ok")
  paths = [runner.result_path(str(out), v) for v in ids[:5]]
  good = open(paths[2], "rb").read()
  open(paths[0], "wb").write(evil)
  with open(paths[1], "wb") as f:  # a well-formed archive whose array member is a pickled object array
    meta = {"format": resultfile.FORMAT, "version": resultfile.VERSION, "result": {"records": {"__nd__": "a0"}}}
    np.savez(f, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), a0=np.array([_Planted(marker)]))
  open(paths[2], "wb").write(good[: len(good) // 2])
  with open(paths[3], "wb") as f:
    np.savez(f, x=np.arange(3))
  open(paths[4][: -len(resultfile.SUFFIX)] + ".pkl", "wb").write(evil)  # old format, next to its new result
  stray = out / runner.WORK / "results" / f"planted{resultfile.SUFFIX}"
  stray.write_bytes(evil)
  cfg = load_config(corpus[2])
  n = len(CLIPS) + len(BAD)
  with caplog.at_level("WARNING", logger=runner.__name__):
    again = runner.run_selection(str(corpus[1]), str(out), cfg, progress=False)
    assert not marker.exists()
    assert again == {"assigned": n, "skipped_done": n - 4, "recomputed_unreadable": 4, "ok": 4}
    for p in paths[:4]:
      assert any(p in r.getMessage() and "not usable" in r.getMessage() for r in caplog.records), p
    assert any("old pickle format" in r.getMessage() for r in caplog.records)
    stats = runner.merge(str(out), cfg)
    counts = runner.run_labelling(str(out), cfg, progress=False)
  assert not marker.exists()
  assert stats["splits"] == curated[1]["splits"] and _record_keys(out) == _record_keys(curated[0])
  assert len(stats["unreadable_results"]) == 1 and str(stray) in stats["unreadable_results"][0]
  assert counts["unreadable"] == 1 and counts["labelled"] > 0
  with pytest.raises(resultfile.BadResultFile, match="pickled data"):
    resultfile.load(str(stray))
  assert not marker.exists()


def _children():
  """pid -> parent pid of every process, from /proc (Linux) or psutil."""
  if os.path.isdir("/proc/self"):
    out = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
      try:
        with open(f"/proc/{p}/stat") as f:
          stat = f.read()
      except (OSError, ValueError):
        continue
      fields = stat.rsplit(")", 1)[1].split()
      if fields[0] != "Z":  # a zombie has exited already
        out[int(p)] = int(fields[1])
    return out
  psutil = pytest.importorskip("psutil")
  return {p.pid: p.ppid() for p in psutil.process_iter() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}


def _descendants(pid):
  procs = _children()
  found, todo = set(), [pid]
  while todo:
    p = todo.pop()
    kids = [c for c, parent in procs.items() if parent == p and c not in found]
    found.update(kids)
    todo += kids
  return found


def _finished(results_dir):
  return [n for n in os.listdir(results_dir) if not n.endswith(".tmp")]


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_killed_curation_takes_its_workers_with_it(corpus, tmp_path, start_method):
  """SIGKILL of the curation process (no clean-up runs in it) ends its pool workers at once instead of leaving
  them decoding and writing results; a re-run then resumes from what they had written."""
  if sys.platform == "win32":
    pytest.skip("no SIGKILL")
  hook = tmp_path / "hook"
  hook.mkdir()
  # imported by every process of the run: in pool workers each video opens slowly, so the run lasts seconds
  (hook / "sitecustomize.py").write_text(
    "import multiprocessing, time\nimport av\n_open = av.open\n"
    "def _slow_open(*a, **k):\n"
    "    if multiprocessing.parent_process() is not None:\n        time.sleep(0.5)\n    return _open(*a, **k)\n"
    "av.open = _slow_open\n"
  )
  vids = tmp_path / "videos"
  vids.mkdir()
  for i in range(8):
    shutil.copy(corpus[1] / "clip_00.mp4", vids / f"copy_{i}.mp4")
  out = tmp_path / "d"
  script = (
    "import sys\nfrom wegen_jax.curation import __main__ as cli, runner\nrunner.START_METHOD = sys.argv[1]\n"
    "sys.exit(cli.main(['--videos', sys.argv[2], '--out', sys.argv[3], '--config', sys.argv[4], "
    "'--workers', '2', '--no-progress']))\n"
  )
  env = dict(os.environ, PYTHONPATH=f"{hook}{os.pathsep}{REPO}")
  with open(tmp_path / "stderr", "wb") as err:
    proc = subprocess.Popen(
      [sys.executable, "-c", script, start_method, str(vids), str(out), corpus[2]],
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=err,
    )
  results = out / runner.WORK / "results"
  workers = set()
  try:
    deadline = time.monotonic() + 60
    while not (results.is_dir() and _finished(results)):
      assert proc.poll() is None, (tmp_path / "stderr").read_text()
      assert time.monotonic() < deadline, "no result written"
      time.sleep(0.05)
    workers = _descendants(proc.pid)  # pool workers (+ resource tracker, forkserver), mid-run
    assert len(workers) >= 2, workers
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while workers & set(_children()) and time.monotonic() < deadline:
      time.sleep(0.1)
    left = workers & set(_children())
    assert not left, f"processes of the killed run still alive: {sorted(left)}"
  finally:
    proc.kill()
    proc.wait()
    for pid in workers & set(_children()):  # only when the test failed: do not leak them
      with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
  done = len(_finished(results))
  assert 0 < done < 8
  cfg = load_config(corpus[2])
  counts = runner.run_selection(str(vids), str(out), cfg, progress=False)
  assert counts == {"assigned": 8, "skipped_done": done, "ok": 8 - done}


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16"])
def test_png_frames_decode_as_pil_does(mode):
  """The libspng fast path gives PIL's pixels for RGB frames; other PNGs go through PIL."""
  from PIL import Image

  rng = np.random.default_rng(0)
  rgb = Image.fromarray(rng.integers(0, 256, (37, 53, 3), np.uint8))
  img = rgb.convert(mode) if mode != "I;16" else Image.fromarray(rng.integers(0, 65536, (37, 53), np.uint16))
  buf = io.BytesIO()
  img.save(buf, format="PNG", compress_level=1)
  got = schema.decode_png(buf.getvalue())
  assert got.dtype == np.uint8 and got.shape == (37, 53, 3)
  np.testing.assert_array_equal(got, np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))


def test_corrupt_png_frame_raises_pil_error():
  from PIL import UnidentifiedImageError

  with pytest.raises(UnidentifiedImageError):
    schema.decode_png(b"not a png at all")
