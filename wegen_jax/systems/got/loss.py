"""GoT's training loss (SYSTEMS.md §2): next-token CE on the chain + the UNet's noise MSE, weight 1
each; the diffusion loss back-propagates through the SSGM into the MLLM (its LoRA, embeddings,
norms). Conditioning drop, per example: 5% spatial only, 5% text + spatial, 5% everything (the
three partial branches the 4-way guidance uses at sampling); null semantic = projector(zeros),
null latents = zeros, pooled embeds kept. Noise offset 0.1."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wegen_jax.diffusion.losses import diffusion_loss
from wegen_jax.layers.lora import lora_dropout
from wegen_jax.training.losses import cross_entropy


def drop_masks(key, batch: int, p: float):
  """(keep_text, keep_spatial, keep_reference) [B] bool: one of the three partial combinations
  with probability p each, else everything kept."""
  u = jax.random.uniform(key, (batch,))
  drop_all = u < p
  drop_text = u < 2 * p  # text + spatial (reference only)
  drop_spatial = u < 3 * p  # spatial only (text + reference)
  return ~drop_text, ~drop_spatial, ~drop_all


def got_loss(model, batch, rng):
  cfg = model.cfg
  k_drop, k_lora, k_vae, k_noise = jax.random.split(rng, 4)
  with lora_dropout(model.llm, k_lora):
    out = model.mllm(batch["input_ids"], batch["positions"], batch["segment_ids"], batch.get("source_patches"))
  ce, _ = cross_entropy(out.logits, batch["labels"])

  b = batch["input_ids"].shape[0]
  hidden = jnp.take_along_axis(out.hidden_states, batch["gen_positions"][..., None], axis=1)  # [B, 64, E]
  tokens, pooled = model.ssgm(hidden)
  keep_text, keep_spatial, keep_ref = drop_masks(k_drop, b, cfg.cond_drop)
  tokens = jnp.where(keep_text[:, None, None], tokens, model.null_semantic(hidden))
  latents, reference, spatial = model.training_latents(
    batch["target"], batch["source"], batch["canvases"], batch["canvas_valid"], k_vae
  )
  reference = reference * keep_ref[:, None, None, None]
  spatial = spatial * keep_spatial[:, None, None, None]
  v = batch["target"].shape[-1]
  added = {"text_embeds": pooled, "time_ids": model.time_ids(b, v, v)}
  diff = diffusion_loss(
    model.unet,
    cfg.train_noise_scheduler(),
    latents,
    tokens,
    k_noise,
    added_cond_kwargs=added,
    concat_latents=jnp.concatenate([reference, spatial], axis=1),
    snr_gamma=cfg.snr_gamma,
    noise_offset=cfg.noise_offset,
  )
  loss = ce + diff
  return loss, {"loss_ce": ce, "loss_diffusion": diff}
