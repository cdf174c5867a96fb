"""FID, CLIP-T and CLIP-I evaluators, the eval-set readers and sharded, resumable eval generation,
on tiny fixtures the tests write (random tiny CLIP, a cheap stand-in for the Inception)."""

import json

import numpy as np
import pytest
from PIL import Image

from wegen_jax.data import eval_sets
from wegen_jax.evaluators import clip_i, clip_t, fid
from wegen_jax.evaluators.image_cache import ensure_images, image_path, process_slice
from wegen_jax.evaluators.image_features import clean_resize

RNG = np.random.default_rng(0)
WORDS = "a red blue green circle square cat dog on the left right of and sky".split()


def _png(path, seed):
  img = np.random.default_rng(seed).integers(0, 256, (40 + seed % 3 * 8, 48, 3), np.uint8)
  Image.fromarray(img).save(path)
  return img


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
  root = tmp_path_factory.mktemp("coco")
  (root / "val2014").mkdir()
  images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in range(1, 7)]
  for im in images:
    _png(root / "val2014" / im["file_name"], im["id"])
  anns = [
    {"id": 10 * i + k, "image_id": i, "caption": f" {WORDS[i]} {WORDS[k + 3]} "} for i in range(1, 7) for k in range(2)
  ]
  (root / "captions.json").write_text(
    json.dumps({"images": images + [{"id": 99, "file_name": "x.jpg"}], "annotations": anns})
  )
  return dict(kind="coco_captions", annotations=str(root / "captions.json"), images_dir=str(root / "val2014"))


def test_coco_captions_reader(coco):
  items = eval_sets.load_eval_set(dict(coco, num=4, seed=3))
  assert len(items) == 4 and items == eval_sets.load_eval_set(dict(coco, num=4, seed=3))  # deterministic
  for it in items:  # one of the image's own captions, stripped; its file
    assert it.text.split()[0] == WORDS[int(it.key)] and it.target.is_file()
  assert len(eval_sets.load_eval_set(coco)) == 6  # the uncaptioned image is left out
  with pytest.raises(FileNotFoundError, match=r"nope\.json.*cocodataset\.org"):
    eval_sets.load_eval_set(dict(coco, annotations="nope.json"))


def test_vist_and_visdial_readers_follow_gill(tmp_path):
  (tmp_path / "vist").mkdir()
  anns = [[{"story_id": "s1", "photo_flickr_id": f"p{k}", "text": f"caption {k}"}] for k in range(5)]
  anns += [[{"story_id": "s2", "photo_flickr_id": f"q{k}", "text": "x"}] for k in range(5)]  # q4 has no image
  for k in range(5):
    _png(tmp_path / "vist" / f"p{k}.png", k)
  for k in range(4):
    _png(tmp_path / "vist" / f"q{k}.jpg", k)
  (tmp_path / "sis.json").write_text(json.dumps({"annotations": anns}))
  (story,) = eval_sets.vist_stories(tmp_path / "sis.json", tmp_path / "vist")
  prompt = story.prompt()
  assert prompt["text"] == "<image>".join(f"caption {k}" for k in range(5)) and len(prompt["images"]) == 4
  np.testing.assert_array_equal(prompt["images"][1], np.asarray(Image.open(tmp_path / "vist" / "p1.png")))
  assert story.key == "p4" and story.target.name == "p4.png"
  (tmp_path / "vd").mkdir()
  _png(tmp_path / "vd" / "VisualDialog_val2018_000000000042.jpg", 1)
  dialogs = [
    {"image_id": 42, "dialog": [{"question": 0, "answer": 1}, {"question": 1, "answer": 0}]},
    {"image_id": 7, "dialog": []},
  ]
  data = {"data": {"dialogs": dialogs, "questions": ["is it red", "any dogs"], "answers": ["no", "yes, two"]}}
  (tmp_path / "vd.json").write_text(json.dumps(data))
  (item,) = eval_sets.visdial_dialogs(tmp_path / "vd.json", tmp_path / "vd")  # image 7 is absent: skipped
  assert item.text == "Q: is it red?\nA: yes, two\nQ: any dogs?\nA: no" and item.key == "000000000042"
  with pytest.raises(FileNotFoundError, match="visualdialog.org"):
    eval_sets.visdial_dialogs(tmp_path / "vd.json", tmp_path / "missing")


def test_frechet_distance_float64_closed_form():
  mu1, mu2 = RNG.normal(size=5), RNG.normal(size=5)
  s1, s2 = RNG.uniform(0.5, 2, 5), RNG.uniform(0.5, 2, 5)
  want = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
  assert fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(want, rel=1e-10)
  f = RNG.normal(size=(50, 5))
  assert abs(fid.frechet_distance(*fid.statistics(f), *fid.statistics(f))) < 1e-8


def test_clean_resize_modes():
  img = RNG.integers(0, 256, (37, 53, 3), np.uint8)
  q, f = clean_resize(img, 29, quantize=True), clean_resize(img, 29, quantize=False)
  assert q.dtype == np.uint8 and f.dtype == np.float32 and q.shape == f.shape == (29, 29, 3)
  assert np.abs(f - q).mean() < 1.0 and f.min() >= 0 and f.max() <= 255
  assert np.any(f != np.round(f))  # the float path keeps fractions (uint8 PIL rounds in each pass)


class MeanColour:
  """Stand-in for the Inception (its parity is tests/test_inception.py): per-image colour moments."""

  name = "mean-colour"
  seen = 0  # images featurised, over all instances

  def __init__(self, weights, batch_size):
    pass

  def __call__(self, images):
    MeanColour.seen += len(images)
    x = np.stack(images).astype(np.float64)
    return np.concatenate([x.mean((1, 2)), x.std((1, 2, 3))[:, None]], -1)  # 4 dims: full-rank covariance


def _fns(items, draw, calls):
  def generate_images(prompts, rng_seed=0):
    calls.append((rng_seed, len(prompts)))
    by_text = {it.text: it for it in items}
    return [draw(by_text[p["text"]], rng_seed + k) for k, p in enumerate(prompts)]

  return {"generate_images": generate_images}


def test_fid_evaluator_resumes_and_caches_reference_stats(coco, tmp_path, monkeypatch):
  monkeypatch.setattr(fid, "InceptionFeatures", MeanColour)
  monkeypatch.setattr(fid, "CHUNK", 4)  # features are kept per chunk of 4 images
  items = eval_sets.load_eval_set(coco)
  ev = fid.Evaluator(
    dataset=coco, inception_weights=str(tmp_path / "w.pth"), image_size=32, batch_size=4, guidance_scale=2
  )
  calls = []
  truth = lambda it, seed: eval_sets.load_rgb(it.target)
  perfect = ev.run(_fns(items, truth, calls), 0, out_dir=tmp_path / "gen")
  assert abs(perfect["fid"]) < 1e-6 and perfect["samples"] == 6 and calls == [(0, 4), (4, 2)]
  assert len(list((tmp_path / "fid_stats").glob("coco_captions-6-32px-*__mean-colour.npz"))) == 1
  assert MeanColour.seen == 12  # the reference set and the generated images
  noise = lambda it, seed: np.random.default_rng(seed).integers(0, 256, (64, 64, 3), np.uint8)
  (tmp_path / "gen" / "001.png").unlink()  # a killed run: only the missing image is drawn again
  calls.clear()
  again = ev.run(_fns(items, noise, calls), 0, out_dir=tmp_path / "gen")
  assert calls == [(1, 1)] and 0 < again["fid"] and MeanColour.seen == 12 + 4  # only its chunk is scored again
  assert ev.run(_fns(items, noise, calls), 0, out_dir=tmp_path / "gen") == again and MeanColour.seen == 16
  assert ev.run(_fns(items, noise, []), 0, out_dir=tmp_path / "noise")["fid"] > 10 * again["fid"]


def test_generation_is_split_over_processes_with_seeds_kept(tmp_path):
  made = {}

  def batch(idx):
    made.setdefault(tuple(idx), 0)
    return [np.full((4, 4, 3), i, np.uint8) for i in idx]

  assert [list(process_slice(10, p, 3)) for p in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
  image_path(tmp_path, 7).parent.mkdir(exist_ok=True)
  Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(image_path(tmp_path, 7))  # left by a killed run
  counts = [ensure_images(tmp_path, 10, batch, batch_size=2, process_index=p, process_count=3) for p in range(3)]
  assert counts == [3, 3, 3] and set(made) == {(0, 1), (2,), (3, 4), (5,), (6,), (8, 9)}
  for i in range(10):
    assert np.asarray(Image.open(image_path(tmp_path, i)))[0, 0, 0] == i


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  tokenizers = pytest.importorskip("tokenizers")
  path = tmp_path_factory.mktemp("clip")
  vocab = {w: k for k, w in enumerate(["<unk>", "<s>"] + WORDS + ["</s>"])}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
    single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", vocab["</s>"])]
  )
  tok.save(str(path / "tokenizer.json"))
  torch.manual_seed(0)
  text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2)
  config = transformers.CLIPConfig(
    text_config=dict(text, max_position_embeddings=12, eos_token_id=vocab["</s>"]),
    vision_config=dict(
      image_size=32, patch_size=8, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2
    ),
    projection_dim=8,
  )
  ref = transformers.CLIPModel(config).eval()
  ref.save_pretrained(path)
  return path, ref, tok


def test_clip_t_is_the_raw_cosine_of_the_reference_clip(tiny_clip, coco):
  torch = pytest.importorskip("torch")
  from wegen_jax.data.image_preprocess import preprocess_image

  path, ref, tok = tiny_clip
  items = eval_sets.load_eval_set(coco)
  noise = lambda it, seed: np.random.default_rng(seed).integers(0, 256, (20, 30, 3), np.uint8)
  got = clip_t.Evaluator(dataset=coco, clip=str(path)).run(_fns(items, noise, []), 0)
  want = []
  with torch.no_grad():
    for k, it in enumerate(items):
      pixels = torch.from_numpy(preprocess_image(noise(it, k), 32, keep_ratio=True, resample="bicubic"))[None]
      image = ref.get_image_features(pixel_values=pixels).pooler_output
      text = ref.get_text_features(input_ids=torch.tensor([tok.encode(it.text).ids])).pooler_output
      want.append(torch.nn.functional.cosine_similarity(image, text).item())
  assert got["samples"] == 6 and got["clip_t"] == pytest.approx(np.mean(want), abs=1e-5)


def test_clip_i_scores_the_ground_truth_as_one(tiny_clip, coco, tmp_path):
  path, _, _ = tiny_clip
  items = eval_sets.load_eval_set(coco)
  ev = clip_i.Evaluator(dataset=coco, clip=str(path))
  truth = ev.run(_fns(items, lambda it, s: eval_sets.load_rgb(it.target), []), 0, out_dir=tmp_path)
  assert truth["clip_i"] == pytest.approx(1.0, abs=1e-5)
  shuffled = ev.run(_fns(items, lambda it, s: eval_sets.load_rgb(items[(items.index(it) + 1) % 6].target), []), 0)
  assert shuffled["clip_i"] < 0.999


def test_inception_features_preprocess_as_clean_fid():
  from flax import nnx

  from wegen_jax.evaluators.image_features import InceptionFeatures

  class MeanPixel(nnx.Module):  # stand-in network: what reaches it is what is checked
    def __call__(self, x):
      assert x.shape[1:] == (299, 299, 3)
      return x.mean((1, 2))

  images = [RNG.integers(0, 256, (30 + 5 * k, 40, 3), np.uint8) for k in range(3)]
  got = InceptionFeatures(None, batch_size=2, model=MeanPixel())(images)  # a padded second batch
  want = [((clean_resize(im, 299, quantize=False) - 128) / 128).mean((0, 1)) for im in images]
  np.testing.assert_allclose(got, want, atol=1e-5)
