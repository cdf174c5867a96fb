"""Pluggable labellers: fill in the caption of the first frame and one dynamics text per step of a record.

  synthetic  exact ground truth from the generator's sidecar JSON (`<video stem>.json`, synthetic.py)
  hf_vlm     a PyTorch vision-language model from a local Hugging Face directory via transformers
             (imported lazily; prompts come from config.labeller.hf_vlm)

A labeller gets a `LabelRequest` (decoded record frames plus where they came from) and returns a `Label`.
It raises `LabelError` for a record it cannot label; the record then stays unlabelled and is counted.
(There is no WeGen labeller: WeGen's sequences put a step's dynamics text before the frame it
leads to, so the model never learns to describe a change it has seen; a VLM does that.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Protocol, Sequence

import numpy as np


class LabelError(Exception):
  """This record cannot be labelled by this labeller (the reason goes to the stats)."""


class NotAvailableError(RuntimeError):
  """The labeller exists as an interface but cannot run in this installation."""


@dataclasses.dataclass
class LabelRequest:
  video_path: str
  video_id: str
  frame_indices: Sequence[int]  # source frame indices
  frames: np.ndarray  # uint8 [K, H, W, 3] as stored in the record (empty if not needed)
  crop: Sequence[float]  # source window kept in the record, (x0, y0, x1, y1) normalised


@dataclasses.dataclass
class Label:
  caption: str
  dynamics: list[str]
  boxes: list[tuple[int, str, tuple[float, float, float, float]]] = dataclasses.field(default_factory=list)


class Labeller(Protocol):
  name: str
  needs_frames: bool  # False: LabelRequest.frames is left empty (no PNG decoding)

  def __call__(self, req: LabelRequest) -> Label: ...


class GroundTruthLabeller:
  """Texts and boxes from the synthetic generator's ground truth; exact by construction."""

  name = "synthetic"
  needs_frames = False

  def __init__(self, with_boxes: bool = True):
    self.with_boxes = with_boxes
    self._cache: dict[str, dict[str, Any]] = {}

  def _gt(self, video_path: str) -> dict[str, Any]:
    side = os.path.splitext(video_path)[0] + ".json"
    if side not in self._cache:
      if not os.path.isfile(side):
        raise LabelError(f"no ground-truth sidecar {side}")
      with open(side) as f:
        self._cache = {side: json.load(f)}  # records arrive grouped by video: keep one
    return self._cache[side]

  def __call__(self, req: LabelRequest) -> Label:
    from wegen_jax.data import synthetic

    gt = self._gt(req.video_path)
    idx = [int(i) for i in req.frame_indices]
    if max(idx) >= len(gt["frames"]):
      raise LabelError(f"frame {max(idx)} beyond the {len(gt['frames'])} ground-truth frames")
    try:
      dyn = [synthetic.describe(gt, a, b) for a, b in zip(idx[:-1], idx[1:])]
    except ValueError as e:  # the pair crosses a ground-truth cut: curation missed it
      raise LabelError(str(e)) from e
    boxes = []
    if self.with_boxes:
      h, w = gt["size"]
      x0, y0, x1, y1 = req.crop
      for k, i in enumerate(idx):
        for rec in gt["frames"][i]["objects"]:
          if rec["visible"]:
            bx = np.array(rec["box"], np.float64) / [w, h, w, h]  # normalised source coords
            bx = (bx - [x0, y0, x0, y0]) / [x1 - x0, y1 - y0, x1 - x0, y1 - y0]
            bx = np.clip(bx, 0.0, 1.0)
            if bx[2] > bx[0] and bx[3] > bx[1]:
              name = f"{rec['state']['colour']} {gt['objects'][rec['id']]['shape']}"
              boxes.append((k, name, tuple(float(v) for v in bx)))
    return Label(synthetic.caption(gt, idx[0]), dyn, boxes)


class HFVLMLabeller:
  """A transformers image-text-to-text model (e.g. Qwen2.5-VL, LLaVA) from a local directory, on CPU/GPU."""

  name = "hf_vlm"
  needs_frames = True

  def __init__(
    self, path: str, caption_prompt: str, dynamics_prompt: str, max_new_tokens: int = 64, device: str = "cpu"
  ):
    if not os.path.isdir(path):
      raise NotAvailableError(
        f"hf_vlm model directory not found: {path} (download a VLM with "
        "`huggingface-cli download <repo> --local-dir <path>` on a machine with network)"
      )
    try:
      import torch  # noqa: F401  (lazy: library code never imports torch at module level)
      from transformers import AutoModelForImageTextToText, AutoProcessor
    except ImportError as e:
      raise NotAvailableError(f"labeller 'hf_vlm' needs torch and transformers: {e}") from e
    self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).to(device).eval()
    self.caption_prompt, self.dynamics_prompt = caption_prompt, dynamics_prompt
    self.max_new_tokens, self.device = max_new_tokens, device

  def _generate(self, images: list[np.ndarray], prompt: str) -> str:
    import torch
    from PIL import Image

    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
    text = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = self.processor(text=[text], images=[Image.fromarray(i) for i in images], return_tensors="pt")
    inputs = inputs.to(self.device)
    with torch.no_grad():
      out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    return self.processor.batch_decode(new, skip_special_tokens=True)[0].strip()

  def __call__(self, req: LabelRequest) -> Label:
    f = req.frames
    return Label(
      self._generate([f[0]], self.caption_prompt),
      [self._generate([a, b], self.dynamics_prompt) for a, b in zip(f[:-1], f[1:])],
    )


def build_labeller(cfg) -> Labeller:
  """cfg: config.labeller (name plus one sub-config per labeller)."""
  if cfg.name == "synthetic":
    return GroundTruthLabeller(cfg.synthetic.with_boxes)
  if cfg.name == "hf_vlm":
    c = cfg.hf_vlm
    return HFVLMLabeller(c.path, c.caption_prompt, c.dynamics_prompt, c.max_new_tokens, c.device)
  raise ValueError(f"unknown labeller {cfg.name!r} (synthetic, hf_vlm)")
