"""CLI: python -m wegen_jax.curation --videos DIR --out DATA_DIR [--config configs/curate.py[:arg]] [--label]

Pass 1 (always): select pairs/triples from every video not yet done and write unlabelled records.
Pass 2 (--label): fill in caption/dynamics with config.labeller (or --labeller NAME).
Then merge everything into DATA_DIR/wegen_dynamics (TFDS array_record) and DATA_DIR/curation_stats.json.
With --host-count > 1 each host processes its share; run once more with --merge (any host) when all are done.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def parse(argv):
  p = argparse.ArgumentParser(prog="python -m wegen_jax.curation", description=__doc__.splitlines()[0])
  p.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
  p.add_argument("--out", required=True, help="DATA_DIR for the TFDS dataset, results and stats")
  p.add_argument(
    "--config", default=None, help="config file, e.g. configs/curate.py or configs/curate.py:preset=synthetic"
  )
  p.add_argument("--label", action="store_true", help="run the labelling pass after selection")
  p.add_argument("--labeller", default=None, help="override config.labeller.name (synthetic, hf_vlm)")
  p.add_argument("--workers", type=int, default=None, help="override config.workers (processes)")
  p.add_argument("--seed", type=int, default=None, help="override config.seed")
  p.add_argument(
    "--validation-fraction", type=float, default=None, help="override config.validation_fraction (share of videos)"
  )
  p.add_argument("--host-index", type=int, default=0)
  p.add_argument("--host-count", type=int, default=1)
  p.add_argument("--merge", action="store_true", help="merge into TFDS even when --host-count > 1")
  p.add_argument("--no-progress", action="store_true")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse(argv)
  from wegen_jax.config_utils import load_config
  from wegen_jax.curation import runner

  if args.config:
    cfg = load_config(args.config)
  else:
    from wegen_jax.curation.defaults import get_config

    cfg = get_config()
  with cfg.unlocked():
    if args.labeller:
      cfg.labeller.name = args.labeller
    if args.workers is not None:
      cfg.workers = args.workers
    if args.seed is not None:
      cfg.seed = args.seed
    if args.validation_fraction is not None:
      cfg.validation_fraction = args.validation_fraction
  if not os.path.isdir(args.videos):
    print(f"--videos {args.videos} is not a directory", file=sys.stderr)
    return 2
  progress = not args.no_progress
  sel = runner.run_selection(args.videos, args.out, cfg, args.host_index, args.host_count, progress)
  print(f"selection: {json.dumps(sel)}")
  if args.label:
    lab = runner.run_labelling(args.out, cfg, args.host_index, args.host_count, progress)
    print(f"labelling ({cfg.labeller.name}): {json.dumps(lab)}")
  if args.host_count == 1 or args.merge:
    stats = runner.merge(args.out, cfg)
    v, r = stats["videos"], stats["records"]
    print(
      f"videos seen {v['seen']}, kept {v['kept']}, without pairs {v['no_pairs']}, failed {v['failed']}; "
      f"shots {stats['shots']}; records {stats['splits']} ({r.get('labelled', 0)} labelled)"
    )
    for f in v["failed_files"]:
      print(f"  failed: {f['file']}: {f['reason']}")
    if r.get("unlabelled"):
      print(
        f"{r['unlabelled']} records are unlabelled (no labelling pass ran or some failed); "
        f"run again with --label [--labeller NAME] to fill them in."
      )
    print(f"dataset: {stats['dataset_dir']}\nstats: {os.path.join(args.out, runner.STATS)}")
  else:
    print(f"host {args.host_index}/{args.host_count} done; run with --merge once every host has finished.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
