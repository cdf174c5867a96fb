"""The tiny MLLM learns to read a caption's places into its image: trained on caption -> image
features (the tiny default's tokenizer, short convolutions and output queries; a random frozen
tower), it predicts the held-out objects' cells nearer than the same model trained on the captions
with their place words removed, which can only learn an object's average position."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from wegen_batches import random_model, tiny_config
from wegen_jax.data import synthetic
from wegen_jax.systems.wegen import WeGenConfig
from wegen_jax.systems.wegen.loss import image_predictions, mllm_loss
from wegen_jax.systems.wegen.pipeline import pack_examples
from wegen_jax.systems.wegen.sequences import Turn, build_sequence
from wegen_jax.systems.wegen.tokenizer import load_tokenizer

STEPS, BATCH = 500, 16
PLACE = re.compile(rf" at the (?:{'|'.join(sorted(synthetic.REGION_NAMES, key=len, reverse=True))})")


def _scenes(first: int, count: int):
  spec = synthetic.ClipSpec(
    num_frames=1, static=True, min_objects=1, max_objects=1, bg_textures=("plain",), object_textures=("solid",)
  )
  out, seed = [], first
  while len(out) < count:  # objects in the four corners: the places lie far apart
    frames, gt = synthetic.generate_clip(seed, spec)
    caption, seed = synthetic.caption(gt, 0), seed + 1
    if re.search(r"at the (top|bottom) (left|right)", caption):
      out.append((caption, frames[0], gt["frames"][0]["objects"][0]["box"]))
  return out


def _rows(config, tok, scenes, strip_places: bool):
  rows = []
  for caption, frame, _ in scenes:
    text = PLACE.sub("", caption) if strip_places else caption
    seq = build_sequence(tok, [Turn(user_text=text, response_images=1)], 64)
    rows.append(pack_examples([(seq, frame[None])], config.data, tok.pad_id))
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _object_cell_error(config, tok, train, held, strip_places: bool) -> float:
  """Trains the LLM, queries and projectors on caption -> features; returns the held-out squared
  error on the grid cells the object covers."""
  model = random_model(WeGenConfig.from_dict(config.model))
  trainable = nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(n) for n in ("llm", "input_proj", "output_proj"))))
  graphdef, params, rest = nnx.split(model, trainable, ...)
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 10, STEPS, 3e-4), b1=0.9, b2=0.95)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, batch):
    grads = jax.grad(lambda p: mllm_loss(nnx.merge(graphdef, p, rest), batch, jax.random.key(0))[0])(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  rows, held_rows = _rows(config, tok, train, strip_places), _rows(config, tok, held, strip_places)
  rng = np.random.default_rng(0)
  for _ in range(STEPS):
    idx = rng.integers(0, len(train), BATCH)
    params, opt = step(params, opt, {k: jnp.asarray(v[idx]) for k, v in rows.items()})
  batch = {k: jnp.asarray(v) for k, v in held_rows.items()}
  _, pred, target, _, _ = jax.jit(lambda p: image_predictions(nnx.merge(graphdef, p, rest), batch))(params)
  error = np.asarray(jnp.mean(jnp.square(pred - target), axis=-1))[:, 0]  # [held, 64]: the one (target) slot
  cells = np.stack([_object_cells(box) for _, _, box in held])
  return float((error * cells).sum() / cells.sum())


def _object_cells(box, size=64, side=8) -> np.ndarray:
  """[side * side] row-major: 1 where the object's box overlaps the cell (the pooled grid's order)."""
  x0, y0, x1, y1 = np.asarray(box, float) * side / size
  cols = (np.arange(side) + 1 > x0) & (np.arange(side) < x1)
  rows = (np.arange(side) + 1 > y0) & (np.arange(side) < y1)
  return (rows[:, None] & cols[None, :]).astype(np.float64).reshape(-1)


def test_text_to_image_reads_the_captions_places():
  config = tiny_config(stage=2, max_len=96, max_images=1)
  tok = load_tokenizer(config.data.tokenizer)
  train, held = _scenes(0, 512), _scenes(10_000, 64)
  assert all(PLACE.search(caption) for caption, _, _ in train)  # every caption names a place
  with_places = _object_cell_error(config, tok, train, held, strip_places=False)
  without = _object_cell_error(config, tok, train, held, strip_places=True)
  print(f"held-out error on the object's cells: with places {with_places:.4f}, without {without:.4f}")
  assert with_places < 0.85 * without
