"""Eval generation over two real JAX processes (localhost, CPU): each generates only its slice of
the prompts, then both wait and read every image from the shared folder."""

import json
import subprocess
import sys

from test_multiprocess import REPO, free_port

SCRIPT = """
import json, sys
import numpy as np
from wegen_jax.parallel.distributed import initialize

initialize(sys.argv[1], 2, int(sys.argv[2]))
from wegen_jax.evaluators.image_cache import generated_images

made = []

def generate_images(prompts, rng_seed=0):
  made.extend(range(rng_seed, rng_seed + len(prompts)))
  return [np.full((4, 4, 3), rng_seed + k, np.uint8) for k in range(len(prompts))]

with generated_images(generate_images, [{"text": str(i)} for i in range(7)], sys.argv[3], batch_size=2) as read:
  seen = [int(read(i)[0, 0, 0]) for i in range(7)]
print("RESULT", json.dumps({"made": made, "seen": seen}))
"""


def test_two_processes_split_the_prompts(tmp_path):
  address = f"localhost:{free_port()}"
  env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", SCRIPT, address, str(i), str(tmp_path)],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=180)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outs)
  results = [json.loads(o.split("RESULT ", 1)[1]) for o in outs]
  assert [r["made"] for r in results] == [[0, 1, 2], [3, 4, 5, 6]]
  assert all(r["seen"] == list(range(7)) for r in results)
