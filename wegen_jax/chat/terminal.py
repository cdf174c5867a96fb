"""The terminal front end of a ChatSession: a line of text is a message, `/` lines are commands."""

from __future__ import annotations

import shlex
from typing import Callable, Iterable

from wegen_jax.chat.session import MAX_SAMPLES, ChatError, ChatSession, Reply, read_image

HELP = """commands:
  TEXT                 send a message (with the images attached by /image); the answer's images are saved
  /image PATH [PATH..] attach reference images to the next message
  /refine TEXT         change the last image: it becomes this message's input image
  /pick K              keep sample K of the last answer (what later turns see and refine)
  /psr on|off          prompt self-rewriting: the model writes a detailed prompt before each image
  /samples N           images per message (1-8)
  /seed N              base seed (turn t uses seed + t)
  /new                 a new conversation (same session folder)
  /help, /quit"""


def describe(reply: Reply) -> str:
  lines = [f"[turn {reply.turn}, {reply.seconds:.1f}s]"]
  lines += [f"  prompt {k}: {p}" for k, p in enumerate(reply.prompts)]
  if reply.text and not reply.prompts:
    lines.append(f"  model: {reply.text}")
  for k, (f, source) in enumerate(zip(reply.files, reply.sources or ["generated"] * len(reply.files))):
    note = "" if source == "generated" else f" ({source} from {reply.retrieved_from})"
    lines.append(f"  sample {k}: {f}{note}")
  if not reply.files:
    lines.append("  (no image in this answer)")
  return "\n".join(lines)


def run_terminal(session: ChatSession, lines: Iterable[str], say: Callable[[str], None] = print) -> int:
  """Runs commands and messages from `lines` (stdin in the CLI) until /quit or the end; every
  error is one line and the session goes on. Returns the number of answered messages."""
  pending: list[str] = []
  answered = 0
  say(f"session folder: {session.folder}\n{HELP}")
  for line in lines:
    line = line.strip()
    if not line:
      continue
    try:
      if not line.startswith("/"):
        reply = session.send(line, pending)
        pending, answered = [], answered + 1
        say(describe(reply))
        continue
      cmd, _, rest = line.partition(" ")
      rest = rest.strip()
      if cmd in ("/quit", "/exit"):
        break
      elif cmd == "/help":
        say(HELP)
      elif cmd == "/image":
        paths = shlex.split(rest)
        if not paths:
          raise ChatError("/image needs a path: /image PATH [PATH..]")
        for p in paths:
          read_image(p, session.read_root)  # checked now, read again when sent
        pending += paths
        say(f"attached {len(pending)} image(s) to the next message")
      elif cmd == "/refine":
        reply = session.send(rest, pending, refine=True)
        pending, answered = [], answered + 1
        say(describe(reply))
      elif cmd == "/pick":
        session.pick(_int(rest, "/pick K"))
        say(f"keeping sample {session.kept}")
      elif cmd == "/psr":
        if rest not in ("on", "off"):
          raise ChatError("/psr on|off")
        session.psr = rest == "on"
        say(f"prompt self-rewriting {rest}")
      elif cmd == "/samples":
        n = _int(rest, "/samples N")
        if not 1 <= n <= MAX_SAMPLES:
          raise ChatError(f"/samples {n}: choose 1 to {MAX_SAMPLES}")
        session.num_samples = n
        say(f"{n} sample(s) per message")
      elif cmd == "/seed":
        session.seed = _int(rest, "/seed N")
        say(f"seed {session.seed}")
      elif cmd == "/new":
        session.reset()
        pending = []
        say("new conversation")
      else:
        raise ChatError(f"unknown command {cmd}; /help lists them")
    except ChatError as e:
      say(f"error: {e}")
  say(f"transcript: {session.folder / 'transcript.md'}")
  return answered


def _int(text: str, usage: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise ChatError(f"{usage}: {text!r} is not a number") from None
