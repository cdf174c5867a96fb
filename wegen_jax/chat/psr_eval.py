"""PSR on against off on a run: `python -m wegen_jax.chat.psr_eval --run WORKDIR/stage3 [--prompts 8]
[--num-samples 4] [--data DIR]`.

The short prompts are those of the run's held-out captions (`synthetic.short_prompt` of each
validation record's caption, distinct, in order). For each, `num_samples` images with PSR on (the
model writes a detailed prompt, sampled, then draws it) and off (it draws the short prompt
directly) give the measures of `systems/wegen/psr.measure_psr`; the JSON is printed and written
to RUN/psr_eval.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--run", required=True)
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--data", default=None, help="curated data dir (default: the run's config.data.dir)")
  p.add_argument("--prompts", type=int, default=8)
  p.add_argument("--num-samples", type=int, default=4)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)

  from wegen_jax.chat.session import ChatError, load_system
  from wegen_jax.data.synthetic import short_prompt
  from wegen_jax.systems.wegen.psr import measure_psr

  try:
    system = load_system(args.run, step=args.step)
  except (ChatError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.data:
    system.config.data.dir = args.data
  prompts = []
  for pair in system.validation_pairs(10_000):  # every labelled held-out record
    prompt = short_prompt(pair["record"]["caption"]) if pair["record"]["caption"] else ""
    if prompt and prompt not in prompts:
      prompts.append(prompt)
  if not prompts:
    print(f"error: no captioned validation records in {system.config.data.dir}", file=sys.stderr)
    return 2
  scores = measure_psr(system, prompts[: args.prompts], args.num_samples, args.seed)
  scores.update(run=str(args.run), step=system.step, examples=prompts[: args.prompts])
  (Path(args.run) / "psr_eval.json").write_text(json.dumps(scores, indent=2))
  print(json.dumps(scores, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
