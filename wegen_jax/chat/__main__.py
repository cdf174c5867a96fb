"""Chat with a trained run (WeGen, GILL/MGCC): `python -m wegen_jax.chat --run WORKDIR/stage2` (terminal)
or add `--web` for the Gradio UI at http://127.0.0.1:7860. docs/CHAT.md describes both.

  python -m wegen_jax.chat --run RUN [--step N] [--config CFG] [--session DIR]
      [--psr on|off] [--num-samples N] [--seed S] [--option KEY=VALUE ...]
      [--web [--host 127.0.0.1] [--port 7860]]

Every image and the transcript go to the session folder (default RUN/chat/<UTC time>). Released
weights: import them as a run first (`python -m wegen_jax.convert import --from DIR --system wegen
--out RUN`), then pass --run RUN.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--run", required=True, help="training run directory (or a run imported from released weights)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
  p.add_argument("--config", default=None, help="config file[:arg] instead of RUN/config.json")
  p.add_argument("--session", default=None, help="session folder (default: RUN/chat/<UTC time>)")
  p.add_argument("--psr", choices=("on", "off"), default="off", help="prompt self-rewriting")
  p.add_argument("--num-samples", type=int, default=1, help="images per message (1-8)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--option",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="a request option of the system for every turn, e.g. mode=retrieve (GILL); VALUE is JSON or a string",
  )
  p.add_argument("--web", action="store_true", help="serve the Gradio web UI instead of the terminal chat")
  p.add_argument("--host", default="127.0.0.1", help="web UI address (default: this machine only)")
  p.add_argument("--port", type=int, default=7860)
  args = p.parse_args(argv)

  from wegen_jax.chat.session import MAX_SAMPLES, ChatError, ChatSession, load_system

  if not 1 <= args.num_samples <= MAX_SAMPLES:
    print(f"error: --num-samples {args.num_samples}: choose 1 to {MAX_SAMPLES}", file=sys.stderr)
    return 2
  try:
    options = parse_options(args.option)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  run = Path(args.run)
  if not run.is_dir():
    print(f"error: --run {run} does not exist (a training run's --workdir, e.g. WORKDIR/stage2)", file=sys.stderr)
    return 2
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
  folder = Path(args.session) if args.session else run / "chat" / stamp
  try:
    print(f"loading {run} ...", flush=True)
    system = load_system(run, step=args.step, config=args.config)
  except (ChatError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  session = ChatSession(
    system,
    folder,
    psr=args.psr == "on",
    num_samples=args.num_samples,
    seed=args.seed,
    read_root=folder if args.web else None,
    options=options,
  )
  if args.web:
    from wegen_jax.chat.webui import serve

    serve(session, host=args.host, port=args.port, title=f"{run} (step {system.step})")
    return 0
  from wegen_jax.chat.terminal import run_terminal

  def lines():
    while True:
      try:
        yield input("you> ")
      except EOFError:
        return

  run_terminal(session, lines() if sys.stdin.isatty() else sys.stdin)
  return 0


def parse_options(pairs) -> dict:
  """['mode=retrieve', 'num_steps=4'] -> {'mode': 'retrieve', 'num_steps': 4} (values as JSON, else strings)."""
  options = {}
  for pair in pairs:
    key, eq, value = pair.partition("=")
    if not eq or not key.strip():
      raise ValueError(f"--option {pair!r}: write KEY=VALUE, e.g. --option mode=retrieve")
    try:
      options[key.strip()] = json.loads(value)
    except json.JSONDecodeError:
      options[key.strip()] = value
  return options


if __name__ == "__main__":
  sys.exit(main())
