"""GILL's released files in and out (github kohjingyu/gill, checkpoints/gill_opt/).

pretrained_ckpt.pth.tar  {'state_dict': {...}} with the trained parts only (main.py drops the
  frozen '.lm' and '.visual_model' tensors): model.visual_embeddings, model.visual_fc,
  model.ret_text_hidden_fcs.0.model (Linear), model.gen_text_hidden_fcs.0.{fc, tfm, model,
  query_embs} (GILLMapper, nn.Transformer), model.logit_scale, and model.input_embeddings.weight
  pruned to the 8 [IMG] rows (scripts/prune_model_ckpt.py), which go to the last 8 rows of our
  LLM vocabulary as load_gill() copies them.
decision_model.pth.tar   {'state_dict': {'1.weight', '1.bias'}}: nn.Sequential(Dropout(0.5), Linear(4096, 2)).
The frozen OPT-6.7B, CLIP ViT-L/14 and SD v1.5 come from their own HF/diffusers folders.
Read with torch.load(weights_only=True) (convert.checkpoint_io; torch is an optional extra).
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from wegen_jax.convert.checkpoint_io import CheckpointError, load_torch_file
from wegen_jax.convert.mapping import LINEAR, Rule, Transform, export_state_dict, load_state_dict, match_rules
from wegen_jax.layers.paths import param_paths

PREFIX = "model."
MAPPER = PREFIX + "gen_text_hidden_fcs.0."
_QKV = ("q", "k", "v")


def mapper_rules(prefix: str = MAPPER) -> list[Rule]:
  """GILLMapper path -> release key (in_proj split into virtual {q,k,v}_proj keys: split_in_proj)."""
  p, t = prefix, prefix + "tfm."
  queries = Transform(lambda x: x.reshape(x.shape[-2:]), lambda x: x[None], "[1, Q, D] -> [Q, D]")
  out = [
    Rule("fc.kernel", p + "fc.weight", LINEAR),
    Rule("fc.bias", p + "fc.bias"),
    Rule("out.kernel", p + "model.weight", LINEAR),
    Rule("out.bias", p + "model.bias"),
    Rule("queries", p + "query_embs", queries),
  ]
  for side, attns, norms in (
    ("encoder", (("self_attn", "self_attn"),), 2),
    ("decoder", (("self_attn", "self_attn"), ("cross_attn", "multihead_attn")), 3),
  ):
    ours, theirs = f"{side}.{{i}}.", f"{t}{side}.layers.{{i}}."
    for a, b in attns:
      for x in _QKV:
        out += [Rule(ours + f"{a}.{x}.kernel", theirs + f"{b}.{x}_proj.weight", LINEAR)]
        out += [Rule(ours + f"{a}.{x}.bias", theirs + f"{b}.{x}_proj.bias")]
      out += [Rule(ours + f"{a}.o.kernel", theirs + f"{b}.out_proj.weight", LINEAR)]
      out += [Rule(ours + f"{a}.o.bias", theirs + f"{b}.out_proj.bias")]
    for n in range(1, norms + 1):
      out += [
        Rule(ours + f"norm{n}.scale", theirs + f"norm{n}.weight"),
        Rule(ours + f"norm{n}.bias", theirs + f"norm{n}.bias"),
      ]
    for a, b in (("fc1", "linear1"), ("fc2", "linear2")):
      out += [
        Rule(ours + f"mlp.{a}.kernel", theirs + f"{b}.weight", LINEAR),
        Rule(ours + f"mlp.{a}.bias", theirs + f"{b}.bias"),
      ]
    out += [Rule(f"{side}_norm.scale", f"{t}{side}.norm.weight"), Rule(f"{side}_norm.bias", f"{t}{side}.norm.bias")]
  return out


def _linear_rules(theirs: str) -> list[Rule]:
  return [Rule("kernel", theirs + ".weight", LINEAR), Rule("bias", theirs + ".bias")]


# our attribute -> (its rules relative to it); logit_scale and the [IMG] rows are set directly
PARTS = {
  "visual_embeddings": _linear_rules(PREFIX + "visual_embeddings"),
  "visual_fc": _linear_rules(PREFIX + "visual_fc"),
  "ret_text_fc": _linear_rules(PREFIX + "ret_text_hidden_fcs.0.model"),
  "gen_text_fc": mapper_rules(),
}
DECISION = {"decision": _linear_rules("1")}


def split_in_proj(state_dict) -> dict:
  """nn.MultiheadAttention's fused in_proj_{weight,bias} [3D, ...] -> {q,k,v}_proj.{weight,bias}."""
  out = {}
  for k, v in state_dict.items():
    if k.endswith(("in_proj_weight", "in_proj_bias")):
      base, kind = k.rsplit(".in_proj_", 1)
      for x, part in zip(_QKV, np.split(np.asarray(v), 3, axis=0)):
        out[f"{base}.{x}_proj.{kind}"] = part
    else:
      out[k] = v
  return out


def fuse_in_proj(state_dict) -> dict:
  out = {k: v for k, v in state_dict.items() if not any(f".{x}_proj." in k for x in _QKV)}
  for k in state_dict:
    if ".q_proj." in k:
      base, kind = k.split(".q_proj.")
      out[f"{base}.in_proj_{kind}"] = np.concatenate([state_dict[f"{base}.{x}_proj.{kind}"] for x in _QKV], axis=0)
  return out


def _strip_ddp(state_dict) -> dict:
  return {k.replace("module.", "", 1) if k.startswith("module.") else k: v for k, v in state_dict.items()}


def load_release(model, ckpt: str | os.PathLike, decision: str | os.PathLike | None = None) -> list[str]:
  """Fills `model` (a GILL) in place from the release's pretrained_ckpt.pth.tar (and
  decision_model.pth.tar); returns the parts read. The LLM, CLIP and SD stay as they are."""
  sd = split_in_proj(_strip_ddp(load_torch_file(ckpt)))
  sd = {k: v for k, v in sd.items() if ".lm." not in k and ".visual_model." not in k}
  source = str(ckpt)
  for name, rules in PARTS.items():
    load_state_dict(getattr(model, name), sd, rules, strict=False, source=source)
  key = PREFIX + "logit_scale"
  if key not in sd:
    raise CheckpointError(f"{source} lacks {key!r}: is it GILL's pretrained_ckpt.pth.tar?")
  model.logit_scale.set_value(jnp.asarray(sd[key], model.logit_scale.get_value().dtype).reshape(()))
  rows_key = PREFIX + "input_embeddings.weight"
  if rows_key not in sd:
    raise CheckpointError(f"{source} lacks {rows_key!r} (the trained [IMG] embedding rows)")
  rows = np.asarray(sd[rows_key])
  n = model.cfg.num_img_tokens
  table = model.llm.embed.embedding
  if rows.shape[0] > n:  # an unpruned checkpoint holds the whole table: its last rows are [IMG]
    rows = rows[-n:]
  if rows.shape != (n, table.shape[1]):
    raise CheckpointError(f"{source}: {rows_key} is {rows.shape}; the model needs ({n}, {table.shape[1]})")
  table.set_value(table.get_value().at[-n:].set(jnp.asarray(rows, table.get_value().dtype)))
  used = {k for name, rules in PARTS.items() for k, _ in match_rules(param_paths(getattr(model, name)), rules).values()}
  used |= {key, rows_key}
  unused = sorted(k for k in sd if k not in used)
  if unused:
    raise CheckpointError(f"{source} has tensors GILL does not use, e.g. {unused[:5]}: is the config the release's?")
  parts = ["pretrained_ckpt"]
  if decision:
    load_state_dict(model.decision, load_torch_file(decision), DECISION["decision"], source=str(decision))
    parts.append("decision_model")
  return parts


def export_release(model, dtype=None) -> tuple[dict, dict]:
  """(pretrained_ckpt state dict, decision_model state dict) as numpy in the release layout."""
  sd = {}
  for name, rules in PARTS.items():
    sd.update(export_state_dict(getattr(model, name), rules, dtype))
  sd = fuse_in_proj(sd)
  sd[PREFIX + "logit_scale"] = np.asarray(model.logit_scale.get_value(), dtype or np.float32)
  rows = np.asarray(model.llm.embed.embedding.get_value()[-model.cfg.num_img_tokens :])
  sd[PREFIX + "input_embeddings.weight"] = rows.astype(dtype or rows.dtype)
  return sd, export_state_dict(model.decision, DECISION["decision"], dtype)


def save_release(model, out_dir: str | os.PathLike) -> list[str]:
  """Writes pretrained_ckpt.pth.tar and decision_model.pth.tar (torch.save) into out_dir."""
  import torch

  from pathlib import Path

  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  sd, dec = export_release(model)
  as_torch = lambda d: {k: torch.from_numpy(np.array(v, copy=True)) for k, v in d.items()}
  torch.save({"state_dict": as_torch(sd)}, out / "pretrained_ckpt.pth.tar")
  torch.save({"state_dict": as_torch(dec)}, out / "decision_model.pth.tar")
  return ["pretrained_ckpt", "decision_model"]
