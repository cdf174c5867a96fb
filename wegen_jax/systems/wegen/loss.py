"""WeGen's training losses (SYSTEMS.md §1; the authors' wegen_mllm_var.forward and
SDXLAdapter.train_pipeline).

Batches have fixed shapes: every image slot [B, N] is computed and the losses are masked
means over the valid (target) slots, so one compiled step serves every batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wegen_jax.diffusion.losses import diffusion_loss, min_snr_weights
from wegen_jax.training.losses import cross_entropy


def _masked_mean(values, mask):
  mask = mask.astype(jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cosine_distance(pred, target):
  """1 - cos(pred, target) per token [..., Q] (the authors' get_cosine_loss before its mean).
  Vectors are normalised as F.normalize does (norm floored at 1e-12): an all-zero slot gives 1,
  not NaN, so masking it out works (the floor is on the squared norm, so its gradient is 0, not NaN)."""
  unit = lambda x: x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), 1e-24))  # noqa: E731
  return 1.0 - jnp.sum(unit(pred) * unit(target), axis=-1)


def token_weights(cfg, base, target):
  """Per-token regression weights [M, Q], mean 1 per image: 1 + cfg.changed_token_weight where
  the target differs from the edit base by more than cfg.changed_token_threshold (mean square)."""
  changed = jnp.mean(jnp.square(target - base), axis=-1) > cfg.changed_token_threshold
  w = 1.0 + cfg.changed_token_weight * changed.astype(jnp.float32)
  return w / jnp.mean(w, axis=-1, keepdims=True)


def image_diffusion_loss(model, features, vae_pixels, mask, key):
  """Min-SNR-weighted epsilon loss of the UNet conditioned on `features` [M, Q, C] for the images
  [M, 3, V, V], averaged over `mask` [M]. The condition is not stopped: in stage 2 the gradient
  flows through the frozen UNet into the LLM."""
  k_vae, k_noise = jax.random.split(key)
  latents = model.latents(vae_pixels, k_vae)
  cond, added = model.condition(features)
  sched = model.cfg.train_noise_scheduler()
  _, aux = diffusion_loss(
    model.unet,
    sched,
    latents,
    cond,
    k_noise,
    added_cond_kwargs=added,
    concat_latents=model.spatial_condition(features, latents.shape[-2:]),
    snr_gamma=model.cfg.snr_gamma,
    t_range=model.cfg.train_timesteps or None,
    return_aux=True,
  )
  per_image = aux["mse"] * min_snr_weights(sched, aux["t"], model.cfg.snr_gamma)
  return _masked_mean(per_image, mask)


def _flat(x):
  return x.reshape((-1,) + x.shape[2:])


def select_slots(mask: jax.Array, k: int):
  """The first `k` True slots of each row of `mask` [B, N] (in slot order): indices [B, k] and
  whether each picked slot is real [B, k]. k=0 keeps all N slots."""
  if not k or k >= mask.shape[1]:
    return jnp.broadcast_to(jnp.arange(mask.shape[1]), mask.shape), mask
  order = jnp.argsort(~mask, axis=1, stable=True)[:, :k]
  return order, jnp.take_along_axis(mask, order, axis=1)


def _take_slots(x, idx):
  """x [B, N, ...] -> x[b, idx[b, j], ...] [B, k, ...]."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def diffusion_on_slots(model, features, vae_pixels, mask, key):
  """image_diffusion_loss over at most `cfg.diffusion_images_per_example` slots of each row: the
  UNet and the VAE encoder run on [B, k] gathered images instead of every [B, N] slot (at 7B a
  1024-px SDXL pass per slot), gathered within each row so the batch sharding is kept.
  features [B, N, Q, C], vae_pixels [B, N, 3, V, V], mask [B, N]. Also returns how many masked
  slots did not fit (to log: raise the limit if it is not 0)."""
  idx, picked = select_slots(mask, model.cfg.diffusion_images_per_example)
  loss = image_diffusion_loss(
    model, _flat(_take_slots(features, idx)), _flat(_take_slots(vae_pixels, idx)), picked.reshape(-1), key
  )
  return loss, (jnp.sum(mask) - jnp.sum(picked)).astype(jnp.float32)


def detokenizer_loss(model, batch, rng):
  """Stage 1: the UNet learns to draw each valid image from its own avg-pooled vision features
  (and the tower learns to keep what the UNet needs, with cfg.detokenizer_trains_vision)."""
  features = model.image_features(batch["pixel_values"], frozen=not model.cfg.detokenizer_trains_vision)
  loss, skipped = diffusion_on_slots(model, features, batch["vae_pixels"], batch["image_valid"], rng)
  return loss, {"loss_diffusion": loss, "diffusion_images_skipped": skipped}


def image_predictions(model, batch):
  """The teacher-forced forward of stages 2/3: (LLM output, predicted features [B, N, Q, C],
  the slots' avg-pooled features, their edit bases, is_target [B, N]).

  Every valid image (input or target) is teacher-forced into its `<img_i>` embeddings (targets
  keep the query embeddings with cfg.image_output "queries"); for every slot the hidden states
  one position earlier (`<img>`..`<img_00062>`) go through the output projector, plus the
  previous image's features with cfg.image_residual (the edit base)."""
  cfg = model.cfg
  features = model.image_features(batch["pixel_values"])  # [B, N, Q, C], no gradient
  is_target = batch["image_valid"] & batch["image_is_target"]  # [B, N]
  fed = batch["image_valid"] if cfg.image_output == "autoregressive" else batch["image_valid"] & ~is_target
  embeds = model.embed_inputs(batch["input_ids"], features, batch["image_token_positions"], fed)
  slot_segments = jnp.take_along_axis(batch["segment_ids"], batch["image_token_positions"][..., 0], axis=1)
  bases = model.edit_base(features, batch["image_valid"], slot_segments)
  embeds = model.embed_edit_bases(embeds, bases, batch["image_token_positions"], is_target)
  out = model.llm.forward(inputs_embeds=embeds, positions=batch["positions"], segment_ids=batch["segment_ids"])
  b = embeds.shape[0]
  prev = jnp.maximum(batch["image_token_positions"] - 1, 0)
  hidden = out.hidden_states[jnp.arange(b)[:, None, None], prev]  # [B, N, Q, E]
  pred = model.output_proj(hidden).astype(jnp.float32) + bases  # [B, N, Q, C]
  return out, pred, features, bases, is_target


def mllm_loss(model, batch, rng):
  """Stages 2/3: next-token CE + (MSE + cosine + diffusion) on the generated images' features:
  `image_predictions` of the target slots regressed onto their stop-gradient features."""
  cfg = model.cfg
  out, pred, features, bases, is_target = image_predictions(model, batch)
  ce, _ = cross_entropy(out.logits, batch["labels"])
  flat_pred, flat_target, flat_mask = _flat(pred), _flat(features), is_target.reshape(-1)
  w = token_weights(cfg, _flat(bases), flat_target)  # all 1 unless cfg.changed_token_weight
  mse = _masked_mean(jnp.mean(jnp.mean(jnp.square(flat_pred - flat_target), axis=-1) * w, axis=1), flat_mask)
  cos = _masked_mean(jnp.mean(cosine_distance(flat_pred, flat_target) * w, axis=1), flat_mask)
  if cfg.weight("diffusion"):
    diff, skipped = diffusion_on_slots(model, pred, batch["vae_pixels"], is_target, rng)
  else:  # no UNet/VAE pass at all (the tiny stage 2: ~85% of its step)
    diff = skipped = jnp.zeros((), jnp.float32)
  loss = cfg.weight("ce") * ce + cfg.weight("mse") * mse + cfg.weight("cos") * cos + cfg.weight("diffusion") * diff
  return loss, {
    "loss_ce": ce,
    "loss_mse": mse,
    "loss_cos": cos,
    "loss_diffusion": diff,
    "diffusion_images_skipped": skipped,
  }


def wegen_loss(model, batch, rng, stage: int):
  if stage == 1:
    return detokenizer_loss(model, batch, rng)
  if stage in (2, 3):
    return mllm_loss(model, batch, rng)
  raise ValueError(f"WeGen stage {stage!r}: choose 1 (detokenizer), 2 or 3 (MLLM)")
