"""Generated evaluation images kept as PNGs in RUN/eval/<step>/<evaluator>/: people can look at
them, and a killed evaluation reuses those already written (nothing is generated twice)."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image


def image_path(out_dir: str | Path, i: int) -> Path:
  return Path(out_dir) / f"{i:03d}.png"


def read_image(path: Path) -> np.ndarray | None:
  """uint8 [H, W, 3] from a complete PNG, None when absent; a torn file is removed (made again)."""
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except FileNotFoundError:
    return None
  except OSError:
    path.unlink()
    return None


def _write(path: Path, image: np.ndarray) -> None:
  tmp = path.with_suffix(".png.tmp")
  Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
  tmp.replace(path)


def process_slice(count: int, process_index: int, process_count: int) -> range:
  """The contiguous block of image indices process `process_index` of `process_count` generates."""
  return range(count * process_index // process_count, count * (process_index + 1) // process_count)


def ensure_images(
  out_dir: str | Path,
  count: int,
  generate_batch: Callable[[list[int]], list[np.ndarray]],
  *,
  batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> int:
  """Makes out_dir/NNN.png for i < count: this process generates the missing ones of its slice
  (`process_slice`, by jax.process_index) in batches of at most `batch_size` consecutive indices
  (so prompt i keeps seed + i however the batches fall), each written as soon as it is made;
  then waits for every process. Returns how many images this process generated."""
  import jax

  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  # writes are atomic, so a file under its final name is complete: no need to decode 30k PNGs here
  todo = [i for i in process_slice(count, pi, pc) if not image_path(out_dir, i).is_file()]
  batches, made = [], 0
  for i in todo:  # runs of consecutive missing indices, at most batch_size long
    if batches and batches[-1][-1] == i - 1 and len(batches[-1]) < batch_size:
      batches[-1].append(i)
    else:
      batches.append([i])
  for batch in batches:
    images = generate_batch(batch)
    if len(images) != len(batch):
      raise ValueError(f"generate_images returned {len(images)} images for {len(batch)} prompts")
    for i, image in zip(batch, images):
      _write(image_path(out_dir, i), image)
    made += len(batch)
  if process_count is None:  # every slice must be on the (shared) disk before scoring
    _barrier(f"eval images {out_dir}")
  return made


def _barrier(name: str) -> None:
  import jax

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


class Generated:
  """An evaluation's generated images (out_dir/NNN.png): `self(i)` reads image i; `scored`
  computes per-chunk results from them once (resumable, split over processes)."""

  def __init__(self, out_dir: str | Path, count: int):
    self.out_dir, self.count = Path(out_dir), count

  def __call__(self, i: int) -> np.ndarray:
    image = read_image(image_path(self.out_dir, i))
    if image is None:
      raise FileNotFoundError(
        f"{image_path(self.out_dir, i)} is missing or unreadable: rerun the evaluation to draw it"
      )
    return image

  def scored(self, tag: str, compute: Callable[[range], np.ndarray], chunk: int = 256) -> np.ndarray:
    """compute(indices) over chunks of the images, concatenated. Chunk k is computed by process
    k % process_count and kept in out_dir/scores/, keyed by `tag` (what computes it) and the
    chunk's files (name, size, mtime): a resumed evaluation computes only chunks whose images it
    has not scored (a regenerated image invalidates its chunk). Every process returns them all."""
    import jax

    folder = self.out_dir / "scores"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, start in enumerate(range(0, self.count, chunk)):
      idx = range(start, min(self.count, start + chunk))
      files = [image_path(self.out_dir, i) for i in idx]
      key = hashlib.sha1(repr((tag, [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files])).encode())
      paths.append(folder / f"{start:06d}-{key.hexdigest()[:16]}.npy")
      if k % jax.process_count() == jax.process_index() and not paths[-1].is_file():
        tmp = paths[-1].with_suffix(".tmp.npy")
        np.save(tmp, np.asarray(compute(idx)))
        tmp.replace(paths[-1])
    _barrier(f"eval scores {self.out_dir} {tag}")
    return np.concatenate([np.load(p) for p in paths])


@contextlib.contextmanager
def generated_images(
  generate_images: Callable,
  prompts: Sequence[dict],
  out_dir: str | Path | None,
  *,
  seed: int = 0,
  batch_size: int | None = None,
) -> Iterator[Generated]:
  """Generates (sharded over processes, resumable: `ensure_images`) image i of prompt i with
  seed + i, then yields them as a `Generated`. batch_size: prompts per generate_images call
  (default: the local device count, one prompt per device). out_dir None: a temporary folder."""
  import jax

  batch_size = batch_size or jax.local_device_count()
  with contextlib.ExitStack() as stack:
    if out_dir is None:
      if jax.process_count() > 1:
        raise ValueError("evaluating on several processes needs an out_dir on a disk they share")
      out_dir = stack.enter_context(tempfile.TemporaryDirectory())
    ensure_images(
      out_dir,
      len(prompts),
      lambda idx: generate_images([prompts[i] for i in idx], rng_seed=seed + idx[0]),
      batch_size=batch_size,
    )
    yield Generated(out_dir, len(prompts))
