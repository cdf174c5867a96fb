"""GILLSystem: a trained GILL / MGCC behind the System interface (generate, predict functions, release files)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from wegen_jax.systems import base
from wegen_jax.systems.gill import generate as gen
from wegen_jax.systems.gill import grounding


MODES = ("auto", "generate", "retrieve", "text")


def _candidates(request) -> tuple[list, list[str]]:
  """(images a retrieval picks from, where each came from): options['candidates'], else every image
  of the conversation (earlier turns' inputs and replies, then this request's)."""
  given = request.options.get("candidates")
  if given is not None:
    return list(given), [f"candidate {i}" for i in range(len(given))]
  images, names = [], []
  for t, turn in enumerate(request.history):
    images += [*turn.images, *turn.reply_images]
    names += [f"history turn {t} input {j}" for j in range(len(turn.images))]
    names += [f"history turn {t} reply image {j}" for j in range(len(turn.reply_images))]
  images += list(request.images)
  names += [f"input {j}" for j in range(len(request.images))]
  return images, names


class GILLSystem(base.System):
  export_layouts = ("authors",)

  def __init__(self, config, model):
    super().__init__(config, model)
    from wegen_jax.training.task import get_task

    self.encoder = get_task(config).encoder()
    self.tok = self.encoder.tok
    self.prompts = gen.Prompts(self.encoder, int(config.data.max_images))
    self._uncond = None

  def _option(self, options, name):
    return options.get(name, self.config.sampling.get(name))

  def uncond(self):
    if self._uncond is None:  # SD's empty prompt, CFG's unconditional branch
      self._uncond = gen.sd_text_embeddings(self.model, jnp.asarray(self.encoder.sd_tok("")[None]))
    return self._uncond

  def _gligen(self, texts, layouts):
    """GLIGEN inputs for each prompt: its layout (text in grounding's format, or written by the LLM)."""
    cfg = self.model.cfg
    rows = []
    for text, given in zip(texts, layouts):
      objects = (
        grounding.parse_boxes(given, cfg.max_boxes)
        if given
        else gen.layout(self.model, self.tok, self.prompts, text, cfg.max_boxes)
      )
      rows.append(grounding.box_inputs(objects, cfg.max_boxes, self.encoder.sd_tok))
    stack = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    phrases = gen.phrase_embeddings(self.model, jnp.asarray(stack["phrase_ids"]))
    return {"boxes": jnp.asarray(stack["boxes"]), "masks": jnp.asarray(stack["masks"]), "positive_embeddings": phrases}

  def images_for(self, item_lists, seed: int, options=None, layouts=None):
    """Generated images (uint8) for prompts that end where the image goes; also (retrieval embeddings, decision probs)."""
    options = options or {}
    batch = {k: jnp.asarray(v) for k, v in self.prompts.batch(item_lists).items()}
    embeds, ret, probs = gen.img_outputs(self.model, batch)
    gligen = None
    if self.model.cfg.grounding and self._option(options, "grounded"):
      texts = [" ".join(i for i in items if isinstance(i, str)) for items in item_lists]
      gligen = self._gligen(texts, layouts or [""] * len(item_lists))
    images = gen.draw(
      self.model,
      embeds,
      self.uncond(),
      jax.random.key(seed),
      num_steps=int(self._option(options, "num_steps")),
      guidance_scale=float(self._option(options, "guidance_scale")),
      size=int(self.config.data.image_size),
      gligen=gligen,
      gligen_beta=float(self._option(options, "gligen_beta")),
    )
    return [np.asarray(x) for x in images], np.asarray(ret), np.asarray(probs)

  def _chunked(self, items, fn):
    """fn over fixed-size chunks of items (config.sampling.batch_size; the last one padded with
    copies), results concatenated: one compiled program whatever the number of items."""
    size = int(self.config.sampling.get("batch_size", 1))
    out = []
    for start in range(0, len(items), size):
      chunk = list(items[start : start + size])
      n = len(chunk)
      out.append(np.asarray(fn(chunk + chunk[-1:] * (size - n), start // size))[:n])
    return np.concatenate(out)

  def retrieval_scores(self, item_lists, images) -> np.ndarray:
    """[P, I] similarity of each prompt's [IMG0] retrieval embedding with each image's (temperature-scaled)."""

    def texts(chunk, _):
      return gen.img_outputs(self.model, {k: jnp.asarray(v) for k, v in self.prompts.batch(chunk).items()})[1]

    def pictures(chunk, _):
      pixels = jnp.asarray(np.stack([self.encoder.pixels(np.asarray(im)) for im in chunk]))
      return gen.image_embeddings(self.model, pixels)

    return self._chunked(item_lists, texts) @ self._chunked(list(images), pictures).T

  def generate(self, requests):
    """Per request: text, then (where the model writes [IMG0], or options force it) one image per
    sample, or the one candidate image retrieved when the decision head prefers retrieval.
    options: mode auto|generate|retrieve|text, force_image (auto: an image after the text even where
    the model writes no [IMG0]; what the chat sends), candidates (uint8 images to retrieve from;
    default: the conversation's own images, the ones GILL's decision head learns to hand back),
    max_new_tokens, num_steps, guidance_scale, temperature, layout (MGCC: 'phrase (x0,y0,x1,y1); ...'
    instead of the LLM's own), grounded (bool).
    extras: source 'generated' or 'retrieved' (then retrieved_index, retrieved_from: which
    candidate, scores), decision_probs [retrieve, generate], history_text (the reply's text as a
    later turn's history holds it: before the image, where GILL writes it)."""
    out = []
    for r in requests:
      items = []
      for turn in r.history:  # earlier turns as the model saw and answered them
        items += gen.split_prompt(turn.text, turn.images) + ([turn.reply_text] if turn.reply_text else [])
        items += list(turn.reply_images)
      items += gen.split_prompt(r.text, r.images)
      mode = r.options.get("mode", "auto")
      if mode not in MODES:
        raise ValueError(f"options['mode']={mode!r}; choose one of {', '.join(MODES)}")
      text, want_image = "", mode in ("generate", "retrieve")
      if mode in ("auto", "text"):
        ids = gen.decode_text(
          self.model,
          self.tok,
          items,
          max_new_tokens=int(self._option(r.options, "max_new_tokens")),
          temperature=float(self._option(r.options, "temperature")),
          seed=r.seed,
          prompts=self.prompts,
        )
        ids = list(ids)
        cut = ids.index(self.tok.img_ids[0]) if self.tok.img_ids[0] in ids else len(ids)
        text = self.tok.decode(ids[:cut])
        want_image = mode == "auto" and (cut < len(ids) or bool(r.options.get("force_image", False)))
      extras = {"history_text": text}
      images = []
      if want_image:
        context = items + ([text] if text else [])
        candidates, names = _candidates(r)
        generated, _, probs = self.images_for(
          [context] * r.num_samples, r.seed, r.options, [r.options.get("layout", "")] * r.num_samples
        )
        extras["decision_probs"] = probs[0].tolist()  # [retrieve, generate]
        retrieve = mode == "retrieve" or (mode == "auto" and candidates and probs[0, 0] > probs[0, 1])
        if retrieve and candidates:
          scores = self.retrieval_scores([context], candidates)[0]
          best = int(np.argmax(scores))
          extras.update(source="retrieved", retrieved_index=best, retrieved_from=names[best], scores=scores.tolist())
          images = [np.asarray(candidates[best])]
        else:
          extras["source"] = "generated"
          images = generated
      out.append(base.Response(text=text, images=images, extras=extras))
    return out

  def predict_fns(self):
    def generate_images(prompts, rng_seed=0):
      """prompts: dicts with 'text' (an `<image>` mark per context image, else images first) and
      optional 'images' (uint8, in order), optional 'layout' (MGCC) -> one uint8 image each."""
      pairs = [(gen.split_prompt(p.get("text", ""), p.get("images", ())), p.get("layout", "")) for p in prompts]

      def draw(chunk, index):  # chunk i draws with seed (rng_seed, i)
        seed = int(jax.random.randint(jax.random.fold_in(jax.random.key(rng_seed), index), (), 0, 2**31 - 1))
        return np.stack(self.images_for([c[0] for c in chunk], seed, layouts=[c[1] for c in chunk])[0])

      return list(self._chunked(pairs, draw))

    def retrieval_recall(prompts, images, ks=(1, 5, 10)):
      """Text-to-image retrieval R@k over pairs (prompt i's image is images[i])."""
      items = [gen.split_prompt(p.get("text", ""), p.get("images", ())) for p in prompts]
      return gen.recall_at_k(self.retrieval_scores(items, images), ks)

    return {"generate_images": generate_images, "retrieval_recall": retrieval_recall}

  # ------------------------------------------------------------------------------------ release

  def export_pytorch(self, out: Path, *, layout: str, dtype=None) -> list[str]:
    """The release's pretrained_ckpt.pth.tar and decision_model.pth.tar (the frozen OPT, CLIP and
    SD stay the public ones)."""
    from wegen_jax.systems.gill.convert import save_release

    if layout != "authors":
      raise ValueError(f"GILL exports the authors' layout only (got {layout!r})")
    return save_release(self.model, out)

  @classmethod
  def mapping_tables(cls, config) -> str:
    """The release's tables (pretrained_ckpt.pth.tar parts, then decision_model.pth.tar); in_proj of
    nn.MultiheadAttention is split into the q/k/v_proj rows shown (convert.split_in_proj)."""
    from wegen_jax.convert.mapping import Rule, rules_table
    from wegen_jax.systems.gill.convert import DECISION, PARTS

    rules = [
      Rule(f"{name}.{r.ours}", r.theirs, r.transform) for name, part in {**PARTS, **DECISION}.items() for r in part
    ]
    return rules_table(rules)

  @classmethod
  def import_pytorch(cls, config, src):
    from flax import nnx

    from wegen_jax.systems.gill.convert import load_release
    from wegen_jax.training.task import get_task

    task = get_task(config)
    model = task.build_model(nnx.Rngs(config.get("seed", 0)))
    # the frozen OPT / CLIP / SD come from config.pretrained (the release holds only GILL's own parts)
    task.init_pretrained(model)
    src = Path(src)
    decision = src / "decision_model.pth.tar"
    parts = load_release(model, src / "pretrained_ckpt.pth.tar", decision if decision.is_file() else None)
    return model, parts
