"""GILL's training losses (github kohjingyu/gill main.py), from one batch in one step.

  cap  captioning: CE of the caption after the target image's 4 visual tokens
  ce   CE of the story's captions and of [IMG0] after the last caption (labels stop at [IMG1])
  ret  symmetric InfoNCE between the [IMG0] retrieval embedding and the target's CLIP one,
       over the global batch, with the learned temperature exp(logit_scale)
  gen  per-token Euclidean distance between the mapper's output and the SD text encoder's
       embedding of the caption, averaged (GILL's l2_loss, then .mean())
With config.train_decision, decision_loss trains the decision head alone (labels: data.py).
The release alternates captioning / retrieval / generation modes over the same batch and
weights their CE by 1 / 0.5 / 0.5; here retrieval and generation share one LLM pass, so their
CE is counted once (loss_weights scales each term).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from wegen_jax.training.losses import cross_entropy


def contrastive(logits):
  """Symmetric InfoNCE of a [B, B] logit matrix with matches on the diagonal."""
  labels = jnp.arange(logits.shape[0])
  a = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  b = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
  return (a + b) / 2


def forward_img_states(model, batch, pooled_ctx):
  """The story's LLM pass -> (outputs, [IMG] states, their input embeddings)."""
  embeds = model.embed_inputs(batch["input_ids"], pooled_ctx, batch["image_positions"], batch["image_valid"])
  out = model.llm.forward(inputs_embeds=embeds, segment_ids=batch["segment_ids"])
  t = batch["input_ids"].shape[1]
  context = (jnp.arange(t)[None] < batch["img_start"][:, None]) & (batch["segment_ids"] > 0)
  h, e = model.img_states(out.hidden_states, embeds, batch["img_start"], context)
  return out, h, e


def gill_loss(model, batch, rng):
  cfg = model.cfg
  ctx, target = batch["context_pixels"], batch["target_pixels"]
  b, n = ctx.shape[:2]
  # one CLIP pass over context and target images
  pooled_all = model.image_pooled(jnp.concatenate([ctx.reshape((b * n,) + ctx.shape[2:]), target], axis=0))
  pooled_ctx, pooled = pooled_all[: b * n].reshape(b, n, -1), pooled_all[b * n :]
  out, h, e = forward_img_states(model, batch, pooled_ctx)
  ce, _ = cross_entropy(out.logits, batch["labels"])
  image = model.image_retrieval_embedding(pooled)
  text = model.text_retrieval_embedding(h)
  scale = jnp.exp(model.logit_scale[...].astype(jnp.float32))
  logits = scale * image @ text.T  # logits_per_image
  ret = contrastive(logits)
  pred = model.sd_embeddings(h, e).astype(jnp.float32)
  target = model.sd_text_embeddings(batch["sd_ids"])
  gen = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(pred - target), axis=-1) + 1e-12))
  nv = cfg.num_visual_tokens
  positions = jnp.broadcast_to(jnp.arange(nv)[None, None], (b, 1, nv))
  cap_embeds = model.embed_inputs(batch["cap_input_ids"], pooled[:, None], positions, jnp.ones((b, 1), bool))
  cap_logits = model.llm.forward(inputs_embeds=cap_embeds, segment_ids=batch["cap_segment_ids"]).logits
  cap, _ = cross_entropy(cap_logits, batch["cap_labels"])
  loss = cfg.weight("cap") * cap + cfg.weight("ce") * ce + cfg.weight("ret") * ret + cfg.weight("gen") * gen
  acc = jnp.mean(jnp.argmax(logits, axis=1) == jnp.arange(b))
  metrics = dict(loss_cap=cap, loss_ce=ce, loss_ret=ret, loss_gen=gen, ret_acc1=acc, logit_scale=scale)
  return loss, jax.tree.map(jnp.asarray, metrics)


def decision_loss(model, batch, rng):
  """The decision head alone (config.train_decision): CE of retrieve / generate (data.decision_label)
  from the [IMG0] state through Dropout(0.5) -> Linear, as the release's separate decision model."""
  _, h, _ = forward_img_states(model, batch, model.image_pooled(batch["context_pixels"]))
  logits = model.decide(jax.lax.stop_gradient(h), rng)
  labels = batch["decision_label"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  acc = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
  return loss, dict(loss_decision=loss, decision_acc=acc, retrieve_share=jnp.mean(labels == 0))
