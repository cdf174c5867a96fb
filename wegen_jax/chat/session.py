"""A design-copilot chat with a trained system: one library for the terminal chat and the web UI.

A `ChatSession` keeps the conversation (earlier turns with the image the user kept), turns each
message into a `systems.base.Request`, and saves every input and generated image and the
transcript in its session folder:
  turnNNN_input{j}.png     images the user attached (references)
  turnNNN_sample{k}.png    the k-th generated sample
  transcript.jsonl         one JSON line per turn (texts, options, files, rewritten prompts, each
                           image's source: generated, or retrieved and from where; time)
  transcript.md            the same, readable, images linked
Bad input (an empty prompt, an unreadable, too large or wrongly typed image, nothing to refine, a
request while one runs) raises `ChatError` with a one-line message before anything changes, so the
session and its history are kept.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from wegen_jax.systems.base import Request, Turn
from wegen_jax.systems.wegen.psr import psr_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_IMAGE_BYTES = 8 << 20  # 8 MiB
MAX_IMAGE_SIDE = 4096
MAX_SAMPLES = 8


class ChatError(ValueError):
  """A message for the user; nothing in the session changed."""


def load_system(run: str | Path, step: int | None = None, config: str | None = None):
  """The system of a training run (RUN/config.json) or of released weights imported as a run
  (`python -m wegen_jax.convert import`); `config` (a config file[:arg]) replaces the run's config."""
  from wegen_jax.systems.base import get_system

  run = Path(run)
  if config:
    from wegen_jax.config_utils import load_config

    cfg = load_config(config)
  else:
    from wegen_jax.systems.runs import run_config

    cfg = run_config(run)
  if not (run / "checkpoints").is_dir():
    raise ChatError(f"{run} has no checkpoints/: pass a training run's --workdir (e.g. WORKDIR/stage2 of `make demo`)")
  return get_system(cfg).from_run(cfg, run, step=step)


def read_image(source, root: Path | None = None) -> np.ndarray:
  """uint8 [H, W, 3] from a path, bytes or an array; `root`: paths must lie inside it."""
  if isinstance(source, np.ndarray):
    array = source
  else:
    if isinstance(source, (bytes, bytearray)):
      data, name = bytes(source), "the upload"
    else:
      path = Path(source).expanduser()
      name = str(path)
      if root is not None and not path.resolve().is_relative_to(Path(root).resolve()):
        raise ChatError(f"{name} is outside the session folder {root}: attach images through the upload box")
      if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ChatError(f"{name}: not an image file; attach one of {', '.join(IMAGE_SUFFIXES)}")
      if not path.is_file():
        raise ChatError(f"no image at {name}")
      if path.stat().st_size > MAX_IMAGE_BYTES:
        raise ChatError(f"{name} is {path.stat().st_size >> 20} MiB; attach an image under {MAX_IMAGE_BYTES >> 20} MiB")
      data = path.read_bytes()
    if len(data) > MAX_IMAGE_BYTES:
      raise ChatError(f"{name} is {len(data) >> 20} MiB; attach an image under {MAX_IMAGE_BYTES >> 20} MiB")
    try:
      with Image.open(io.BytesIO(data)) as im:
        if max(im.size) > MAX_IMAGE_SIDE:
          raise ChatError(f"{name} is {im.size[0]}x{im.size[1]} px; attach one at most {MAX_IMAGE_SIDE} px a side")
        array = np.asarray(im.convert("RGB"))
    except ChatError:
      raise
    except Exception as e:  # PIL raises several types for broken files
      raise ChatError(f"cannot read {name} as an image ({type(e).__name__}); attach a PNG or JPEG") from None
  array = np.asarray(array)
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, -1)
  if array.ndim != 3 or array.shape[-1] not in (3, 4) or max(array.shape[:2]) > MAX_IMAGE_SIDE:
    raise ChatError(f"image of shape {array.shape}: expected [H, W, 3] at most {MAX_IMAGE_SIDE} px a side")
  return np.ascontiguousarray(array[..., :3]).astype(np.uint8)


@dataclasses.dataclass
class Reply:
  turn: int
  text: str
  images: list[np.ndarray]
  files: list[Path]
  prompts: list[str]  # the rewritten prompts when PSR was on
  seconds: float
  sources: list[str] = dataclasses.field(default_factory=list)  # per image: generated | retrieved
  retrieved_from: str = ""  # the system's note of which candidate a retrieved image is


class ChatSession:
  """The conversation with one system, saved in `folder`.

  send(text, images): the next turn, with the conversation so far (earlier turns and the image
    kept from each) as the model's history; refine=True edits the last kept image instead: it
    becomes this turn's input image (`[INST] <image> {text} [/INST]`, the editing format WeGen
    trains on) and the turns before it are left out.
  pick(k): keep sample k of the last turn (what later turns see and refine).
  reset(): a new conversation in the same folder.
  `read_root`: attached image paths must lie inside it (the web UI passes the session folder).
  `options`: the system's own request options for every turn (e.g. GILL's mode=retrieve, MGCC's layout).
  """

  def __init__(
    self,
    system,
    folder: str | Path,
    *,
    psr: bool = False,
    num_samples: int = 1,
    seed: int = 0,
    read_root: str | Path | None = None,
    force_image: bool = True,
    options: dict | None = None,
  ):
    self.system = system
    self.folder = Path(folder).absolute()
    self.folder.mkdir(parents=True, exist_ok=True)
    self.psr, self.num_samples, self.seed, self.force_image = psr, num_samples, seed, force_image
    self.read_root = None if read_root is None else Path(read_root)
    self.options = dict(options or {})
    self.history: list[Turn] = []
    self.last: Reply | None = None
    self.kept = 0
    self.turns = self._count_turns()
    self._lock = threading.Lock()
    data = getattr(system.config, "data", None)
    self.max_images = int(data.get("max_images", 3)) if data is not None else 3

  def _count_turns(self) -> int:
    path = self.folder / "transcript.jsonl"
    if not path.is_file():
      return 0
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return max((e["turn"] for e in entries if "text" in e), default=0)

  @property
  def busy(self) -> bool:
    return self._lock.locked()

  @property
  def last_image(self) -> np.ndarray | None:
    return self.last.images[self.kept] if self.last and self.last.images else None

  def send(
    self,
    text: str,
    images: Sequence = (),
    *,
    refine: bool = False,
    psr: bool | None = None,
    num_samples: int | None = None,
    seed: int | None = None,
  ) -> Reply:
    text = (text or "").strip()
    if not text:
      raise ChatError("empty prompt: type what to draw, or how to change the last image")
    psr = self.psr if psr is None else bool(psr)
    n = int(self.num_samples if num_samples is None else num_samples)
    if not 1 <= n <= MAX_SAMPLES:
      raise ChatError(f"number of samples {n}: choose 1 to {MAX_SAMPLES}")
    if refine and self.last_image is None:
      raise ChatError("nothing to refine yet: ask for an image first")
    refs = [read_image(im, self.read_root) for im in images]
    if len(refs) + refine >= self.max_images:
      raise ChatError(f"{len(refs)} images attached; this model takes at most {self.max_images - 1 - refine} per turn")
    if not self._lock.acquire(blocking=False):
      raise ChatError("busy: the previous request is still running; wait for it to finish")
    try:
      return self._send(text, refs, refine, psr, n, seed)
    finally:
      self._lock.release()

  def _context(self, new_images: int) -> list[Turn]:
    """The most recent turns whose images, with this turn's inputs and answer, fit the model's
    image slots (config.data.max_images)."""
    kept, room = [], self.max_images - new_images - 1
    for turn in reversed(self.history):
      room -= len(turn.images) + len(turn.reply_images)
      if room < 0:
        break
      kept.insert(0, turn)
    return kept

  def _send(self, text, refs, refine, psr, n, seed) -> Reply:
    start = time.perf_counter()
    turn = self.turns + 1
    inputs = ([self.last_image] if refine else []) + refs
    history = [] if refine else self._context(len(inputs))
    seed = self.seed + turn if seed is None else int(seed)
    options = {"psr": psr, "force_image": self.force_image, **self.options}
    request = Request(text=text, images=inputs, history=history, num_samples=n, seed=seed, options=options)
    (response,) = self.system.generate([request])
    input_files = [self._save(im, f"turn{turn:03d}_input{j}.png") for j, im in enumerate(inputs)]
    files = [self._save(im, f"turn{turn:03d}_sample{k}.png") for k, im in enumerate(response.images)]
    prompts = list(response.extras.get("prompts", []))
    sources = [response.extras.get("source", "generated")] * len(files)
    retrieved_from = str(response.extras.get("retrieved_from", ""))
    seconds = time.perf_counter() - start
    reply = Reply(turn, response.text, list(response.images), files, prompts, seconds, sources, retrieved_from)
    # the history holds the turn as the model saw it: PSR's instruction with its rewrite as the answer,
    # or the answer's text where the system writes it before the image (extras['history_text'], GILL)
    seen = psr_text(text) if psr and prompts else text
    answer = prompts[0] if prompts else response.extras.get("history_text", "")
    self.history = history + [Turn(seen, inputs, answer, response.images[:1])]
    self.last, self.kept, self.turns = reply, 0, turn
    self._log(
      dict(
        turn=turn,
        time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        text=text,
        refine=refine,
        psr=psr,
        num_samples=n,
        seed=seed,
        inputs=[f.name for f in input_files],
        reply=response.text,
        prompts=prompts,
        images=[f.name for f in files],
        sources=sources,
        **({"retrieved_from": retrieved_from} if retrieved_from else {}),
        seconds=round(reply.seconds, 2),
      )
    )
    return reply

  def pick(self, k: int) -> None:
    if self.last is None or not 0 <= k < len(self.last.images):
      count = len(self.last.images) if self.last else 0
      raise ChatError(f"no sample {k}: the last turn has {count} (numbered from 0)")
    self.kept = k
    if self.history:
      self.history[-1] = dataclasses.replace(self.history[-1], reply_images=[self.last.images[k]])
    self._log(dict(event="pick", turn=self.turns, kept=k))

  def reset(self) -> None:
    self.history, self.last, self.kept = [], None, 0
    self._log(dict(event="new conversation", turn=self.turns))

  def _save(self, image: np.ndarray, name: str) -> Path:
    path = self.folder / name
    tmp = path.with_suffix(".tmp")
    Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
    tmp.replace(path)
    return path

  def _log(self, entry: dict) -> None:
    with open(self.folder / "transcript.jsonl", "a") as f:
      f.write(json.dumps(entry) + "\n")
    with open(self.folder / "transcript.md", "a") as f:
      f.write(_markdown(entry))


def _markdown(e: dict) -> str:
  if "event" in e:
    return f"*{e['event']}*" + (f" (sample {e['kept']} kept)" if "kept" in e else "") + "\n\n"
  mode = ", ".join(m for m, on in (("refine", e["refine"]), ("PSR", e["psr"])) if on)
  lines = [f"**you** (turn {e['turn']}{', ' + mode if mode else ''}): {e['text']}"]
  lines += [f"![input]({f})" for f in e["inputs"]]
  lines += [f"> rewritten prompt {k}: {p}" for k, p in enumerate(e["prompts"])]
  lines += [f"**model**: {e['reply']}"] if e["reply"] else []
  sources = e.get("sources") or ["generated"] * len(e["images"])
  lines += [" ".join(f"![{_label(k, s, e)}]({f})" for k, (f, s) in enumerate(zip(e["images"], sources)))]
  return "\n\n".join(lines) + "\n\n"


def _label(k: int, source: str, e: dict) -> str:
  return f"sample {k}" if source == "generated" else f"sample {k}, {source} from {e.get('retrieved_from', '?')}"
