"""GILL from captioned images in TFDS: a JSONL of PNGs (one corrupt) -> the array_record dataset
(the corrupt image skipped and counted) -> GILL's Grain pipeline -> a few trainer steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from gill_support import random_gill, tiny_config
from wegen_jax.parallel import make_mesh
from wegen_jax.systems.gill import tfds_captions
from wegen_jax.training.task import get_task
from wegen_jax.training.trainer import make_train_step

COLOURS = ((255, 0, 0), (0, 0, 255), (0, 200, 0), (240, 240, 0))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("captions")
  lines = []
  for i, colour in enumerate(COLOURS):
    Image.new("RGB", (40, 40), colour).save(root / f"{i}.png")
    lines.append(f'{{"image": "{i}.png", "caption": "a picture {i}"}}')
  (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
  lines.append('{"image": "bad.png", "caption": "a broken picture"}')
  (root / "c.jsonl").write_text("\n".join(lines))
  out = root / "tfds"
  stats = tfds_captions.build(str(root / "c.jsonl"), str(out), validation_fraction=0.0)
  return root, out, stats


def test_build_skips_and_counts_corrupt_images(built, capsys):
  root, out, stats = built
  assert stats["splits"] == {"train": 4}
  assert [p for p, _ in stats["skipped"]] == [str(root / "bad.png")]
  source = tfds_captions.TFDSCaptions(str(out), "train")
  records = [source[i] for i in range(len(source))]
  by_caption = {r["steps"][0][0]: r["steps"][0][1] for r in records}
  assert sorted(by_caption) == [f"a picture {i}" for i in range(4)]
  for i, colour in enumerate(COLOURS):  # the PNG bytes as written, decoded
    np.testing.assert_array_equal(by_caption[f"a picture {i}"], np.full((40, 40, 3), colour, np.uint8))
  with pytest.raises(ValueError, match="cannot read split 'validation'"):
    tfds_captions.TFDSCaptions(str(out), "validation")
  # the CLI: one line per skipped image (a warning) and a summary with the count
  tfds_captions.main(["--captions", str(root / "c.jsonl"), "--out", str(root / "cli"), "--validation_fraction", "0"])
  assert "records: {'train': 4}  skipped (missing/corrupt): 1" in capsys.readouterr().out


def test_gill_trains_from_tfds(built):
  _, out, _ = built
  config = tiny_config(source="tfds", dir=str(out), validation_split="train")
  config.optimizer.update(lr=3e-3, warmup_steps=0, total_steps=100)
  task = get_task(config)
  task.check_config()
  model = random_gill(task.model_config)
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  graphdef, params, frozen = nnx.split(model, task.trainable(), ...)
  step = make_train_step(task, config, mesh, graphdef, params)
  opt = step.tx.init(params)
  batches = iter(task.dataset("train", seed=0, global_batch=4))
  losses = []
  for i in range(3):
    batch = jax.tree.map(jnp.asarray, next(batches))
    assert sorted(np.asarray(batch["record_id"]).tolist()) == [0, 1, 2, 3]  # every record, once per batch
    params, opt, metrics = step.step_fn(params, frozen, opt, batch, jax.random.key(i), jnp.int32(i))
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
