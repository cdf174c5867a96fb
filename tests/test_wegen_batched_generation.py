"""WeGen's eval generation in batches: a chunk of prompts is decoded and drawn together, sharded
over the local devices, and each prompt gets exactly the image it gets alone; the evaluators
hand prompts over in chunks and a killed evaluation generates only the images still missing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from test_dynamics_metrics import boxes_of, pair_with_motion
from wegen_jax.evaluators import dynamics
from wegen_jax.evaluators.image_cache import image_path

REPO = Path(__file__).resolve().parents[1]

# Runs on 8 virtual CPU devices: 5 prompts (two option groups, one prompt with an input image)
# as one generate_images call, then each alone; the decoder's prompt rows and the sampler's
# initial latents are recorded to show how they are sharded.
_SCRIPT = r"""
import json
import jax
import numpy as np
from wegen_batches import random_model, tiny_config
import wegen_jax.systems.wegen.generate as G
from wegen_jax.systems.wegen import WeGenConfig
from wegen_jax.systems.wegen.system import WeGenSystem

config = tiny_config(stage=2)
config.sampling.update(max_new_tokens=72)
system = WeGenSystem(config, random_model(WeGenConfig.from_dict(config.model)))
seen = []

def recording(name, fn, rows):
  def wrapped(*args, **kwargs):
    x = rows(*args, **kwargs)
    seen.append(dict(fn=name, rows=int(x.shape[0]), devices=len(x.sharding.device_set),
                     shard_rows=sorted({int(s.data.shape[0]) for s in x.addressable_shards})))
    return fn(*args, **kwargs)
  return wrapped

G.decode = recording("decode", G.decode, lambda model, ids, **kw: model.prompt[...])
G.sample_latents = recording("sample_latents", G.sample_latents, lambda *a, latents, **kw: latents)
rng = np.random.default_rng(0)
picture = rng.integers(0, 256, (24, 24, 3), np.uint8)
draw = {"force_image": True}
prompts = [
  {"text": "a red circle", "options": draw},
  {"text": "a blue square", "options": dict(draw, guidance_scale=2.0)},
  {"text": "move the red circle left", "images": [picture], "options": draw},
  {"text": "a green cross at the top left of the frame", "options": dict(draw, guidance_scale=2.0)},
  {"text": "a red circle", "options": draw},
]
generate_images = system.predict_fns()["generate_images"]
batched = generate_images(prompts, rng_seed=3)
batched_calls = list(seen)
alone = [generate_images([p], rng_seed=3 + i)[0] for i, p in enumerate(prompts)]
print(json.dumps(dict(
  calls=batched_calls,
  alone_calls=seen[len(batched_calls):],
  max_diff=[int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(batched, alone)],
  shapes=[list(a.shape) for a in batched],
  std=[float(a.std()) for a in batched],
  same_text_seeds_differ=bool((batched[0] != batched[4]).any()),
)))
"""


def test_a_chunk_is_sharded_over_8_devices_and_each_prompt_gets_its_alone_image():
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}",
  )
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  # the same image, to the uint8 value, as each prompt alone with seed 3 + i
  assert got["max_diff"] == [0] * 5, got["max_diff"]
  assert all(s == [16, 16, 3] for s in got["shapes"]) and min(got["std"]) > 0  # drawn, not the black fallback
  assert got["same_text_seeds_differ"]  # row keys: the same prompt with another seed draws another image
  # two option groups (guidance 1 and 2): 3 and 2 rows padded to 8, one row per device
  assert [c["fn"] for c in got["calls"]] == ["decode", "sample_latents"] * 2
  assert all(c["rows"] == 8 and c["devices"] == 8 and c["shard_rows"] == [1] for c in got["calls"]), got["calls"]
  # alone: one row, not padded (a single prompt is not split over devices)
  assert len(got["alone_calls"]) == 10 and all(c["rows"] == 1 for c in got["alone_calls"]), got["alone_calls"]


def _pairs(n):
  frames, gt = pair_with_motion()
  boxes, frame_of, labels = boxes_of(gt, (0, 20))
  pair = dict(source=frames[0], target=frames[20], boxes=boxes, box_frame=frame_of, box_label=labels)
  return [dict(pair, text=f"object {i} moves") for i in range(n)]


def test_the_evaluator_asks_in_chunks_and_a_killed_run_makes_only_the_missing_images(tmp_path):
  pairs, calls = _pairs(5), []

  def generate_images(prompts, rng_seed=0):  # prompt i is asked with seed i: its image encodes both
    calls.append((rng_seed, [p["text"] for p in prompts]))
    return [np.full((16, 16, 3), 10 * (rng_seed + k), np.uint8) for k in range(len(prompts))]

  fns = {"validation_pairs": lambda n: pairs[:n], "generate_images": generate_images}
  ev, out = dynamics.Evaluator(num_samples=5, batch_size=2), tmp_path / "eval" / "3" / "dynamics"
  first = ev.run(fns, 3, out_dir=out)
  assert [c[0] for c in calls] == [0, 2, 4] and calls[1][1] == ["object 2 moves", "object 3 moves"]
  made = {i: image_path(out, i).read_bytes() for i in range(5)}
  # killed while drawing images 1, 3 and 4 (one left as a half-written temporary)
  for i in (1, 3, 4):
    image_path(out, i).unlink()
  image_path(out, 3).with_suffix(".png.tmp").write_bytes(b"torn")
  calls.clear()
  again = ev.run(fns, 3, out_dir=out)
  assert calls == [(1, ["object 1 moves"]), (3, ["object 3 moves", "object 4 moves"])]
  assert again == first
  for i in range(5):  # every image as the first run made it (seed i)
    assert image_path(out, i).read_bytes() == made[i]
  calls.clear()
  assert ev.run(fns, 3, out_dir=out) == first and calls == []  # nothing left to make
