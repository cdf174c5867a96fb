"""Local released weights for a fresh GILL/MGCC run (config.pretrained), each part optional:

llm      HF OPT folder (facebook/opt-6.7b); its 50272 rows fill the vocabulary's first rows
clip     HF CLIP folder (openai/clip-vit-large-patch14): the vision tower
sd       diffusers SD v1.5 pipeline folder: text_encoder/, unet/, vae/
gligen   a diffusers GLIGEN UNet folder (MGCC grounding; e.g. gligen-1-4-generation-text-box/unet)
release  GILL's checkpoints/gill_opt folder (pretrained_ckpt.pth.tar, decision_model.pth.tar)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wegen_jax.convert.checkpoint_io import CheckpointError, read_state_dict
from wegen_jax.convert.diffusers import fill_diffusers_unet, fill_diffusers_vae
from wegen_jax.convert.hf_clip import rules as clip_rules
from wegen_jax.convert.hf_llm import fill_hf_llm
from wegen_jax.convert.mapping import Rule, load_state_dict


def _tower_rules(prefix: str) -> list[Rule]:
  return [Rule(r.ours[len(prefix) :], r.theirs, r.transform) for r in clip_rules() if r.ours.startswith(prefix)]


def _need(path: Path, what: str) -> Path:
  if not path.exists():
    raise CheckpointError(f"{what} not found: {path}")
  return path


def load_pretrained(model, paths: dict) -> list[str]:
  done = []
  if paths.get("llm"):
    fill_hf_llm(model.llm, str(_need(Path(paths["llm"]), "OPT folder")), grow_vocab=True)
    done.append("llm")
  if paths.get("clip"):
    sd = read_state_dict(_need(Path(paths["clip"]), "CLIP folder"))
    load_state_dict(model.vision, sd, _tower_rules("vision_model."), strict=False, source=paths["clip"])
    done.append("vision")
  if paths.get("sd"):
    root = _need(Path(paths["sd"]), "Stable Diffusion folder")
    sd = read_state_dict(_need(root / "text_encoder", "SD text encoder"))
    load_state_dict(model.sd_text, sd, _tower_rules("text_model."), strict=False, source=str(root / "text_encoder"))
    if not paths.get("gligen"):
      fill_diffusers_unet(model.unet, _need(root / "unet", "SD UNet"), dtype=np.dtype(model.cfg.unet.param_dtype))
    fill_diffusers_vae(model.vae, _need(root / "vae", "SD VAE"))
    done += ["sd_text", "unet", "vae"]
  if paths.get("gligen"):
    fill_diffusers_unet(model.unet, _need(Path(paths["gligen"]), "GLIGEN UNet folder"))
    done.append("gligen")
  if paths.get("release"):
    from wegen_jax.systems.gill.convert import load_release

    root = _need(Path(paths["release"]), "GILL release folder")
    decision = root / "decision_model.pth.tar"
    done += load_release(
      model, _need(root / "pretrained_ckpt.pth.tar", "GILL pretrained_ckpt"), decision if decision.is_file() else None
    )
  return done
