"""GenEval-style checks on the synthetic world: the rendered ground truth scores 1, noise 0."""

import numpy as np

from wegen_jax.evaluators import geneval_synthetic


def test_truth_scores_one_and_noise_zero(tmp_path):
  ev = geneval_synthetic.Evaluator(num_per_task=6, batch_size=5)
  items = ev.items()
  assert {t for t, *_ in items} == {"colour", "two_object", "count", "position"} and len(items) == 24
  assert all(p.startswith("a ") for _, p, _, _ in items) and any(
    " at the " in p for t, p, _, _ in items if t == "position"
  )
  frames = {p: f for _, p, f, _ in items}
  seen = []

  def truth(prompts, rng_seed=0):
    seen.extend(prompts)
    return [np.kron(frames[p["text"]], np.ones((2, 2, 1), np.uint8)) for p in prompts]  # 128 px: resized back

  got = ev.run({"generate_images": truth}, 0, out_dir=tmp_path)
  assert got == {"colour": 1.0, "two_object": 1.0, "count": 1.0, "position": 1.0, "overall": 1.0, "samples": 24}
  assert len(seen) == 24
  rng = np.random.default_rng(0)
  noise = lambda prompts, rng_seed=0: [rng.integers(0, 256, (64, 64, 3), np.uint8) for _ in prompts]
  assert ev.run({"generate_images": noise}, 0)["overall"] <= 0.05
  shifted = lambda prompts, rng_seed=0: [np.roll(frames[p["text"]], 32, axis=1) for p in prompts]  # moved half a frame
  moved = ev.run({"generate_images": shifted}, 0)
  assert moved["colour"] == 1.0 and moved["position"] < 0.5


def test_registry_lists_every_evaluator_module():
  import importlib
  import pkgutil

  import wegen_jax.evaluators as pkg

  modules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
  with_evaluator = {m for m in modules if hasattr(importlib.import_module(f"{pkg.__name__}.{m}"), "Evaluator")}
  assert with_evaluator == set(pkg.TYPES)
