"""Training parity: from the same weights and batches, our train step (the trainer's
build_train_step with LMTask's loss, make_optimizer's AdamW, clipping, schedule, gradient
accumulation) takes the same steps as PyTorch training the transformers model with
torch.optim.AdamW, clip_grad_norm_ and transformers' cosine-with-min-lr schedule, as the
authors' HF Trainer does. Forward parity (test_llm_parity.py) cannot see a wrong gradient, a
decay applied to norms, or a schedule that is off by one step; this can."""

import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from tests.llm_refs import hf_models, random_ids  # noqa: E402
from wegen_jax import convert  # noqa: E402
from wegen_jax.systems.lm.task import LMTask  # noqa: E402
from wegen_jax.training.optim import make_optimizer, make_schedule  # noqa: E402
from wegen_jax.training.trainer import build_train_step  # noqa: E402

STEPS, BATCH, SEQ = 8, 4, 16
OPT = dict(lr=1e-2, total_steps=STEPS, warmup_steps=2, min_lr_ratio=0.1, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.05)
# A bound below the first steps' gradient norms (~0.8), so clipping acts on every step.
CLIP = 0.3


def torch_steps(hf, batches):
  decay = [p for p in hf.parameters() if p.ndim > 1]  # norms and biases undecayed, as HF Trainer
  rest = [p for p in hf.parameters() if p.ndim <= 1]
  opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": OPT["weight_decay"]}, {"params": rest, "weight_decay": 0.0}],
    lr=OPT["lr"],
    betas=(OPT["b1"], OPT["b2"]),
    eps=OPT["eps"],
  )
  sched = transformers.get_cosine_with_min_lr_schedule_with_warmup(
    opt, OPT["warmup_steps"], OPT["total_steps"], min_lr_rate=OPT["min_lr_ratio"]
  )
  losses = []
  for tokens in batches:
    t = torch.tensor(tokens)
    loss = hf(t, labels=t).loss  # HF shifts the labels itself
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(hf.parameters(), CLIP)
    opt.step()
    sched.step()
    losses.append(loss.item())
  return losses


def jax_steps(model, batches, accum):
  task = LMTask(ml_collections.ConfigDict({"model": {}}))
  config = ml_collections.ConfigDict(dict(OPT, grad_clip=CLIP))
  graphdef, params, frozen = nnx.split(model, task.trainable(), ...)
  tx = make_optimizer(config)
  step = jax.jit(build_train_step(task, graphdef, tx, accum, make_schedule(config)))
  opt_state, losses = tx.init(params), []
  for i, tokens in enumerate(batches):
    batch = {"tokens": jnp.asarray(tokens, jnp.int32)}
    params, opt_state, metrics = step(params, frozen, opt_state, batch, jax.random.key(i), jnp.asarray(i))
    losses.append(float(metrics["loss"]))
  return nnx.merge(graphdef, params, frozen), losses


@pytest.mark.parametrize("variant", ["qwen2_tied", "llama3_gqa", "qwen2_tied-scanned-accum2"])
def test_train_steps_match_pytorch(variant, tmp_path):
  name, *options = variant.split("-")
  torch.manual_seed(0)
  hf = hf_models()[name]().train()
  hf.save_pretrained(tmp_path / "init")
  overrides = dict(scan_layers=True, remat="full") if "scanned" in options else {}
  model = convert.load_hf_llm(tmp_path / "init", **overrides)
  batches = [random_ids((BATCH, SEQ), seed=10 + i % 2) for i in range(STEPS)]  # two batches, revisited

  want = torch_steps(hf, batches)
  trained, got = jax_steps(model, batches, accum=2 if "accum2" in options else 1)

  assert want[-1] < want[0] - 0.1  # the steps are large enough to move the loss
  np.testing.assert_allclose(got, want, rtol=2e-5)
  hf.save_pretrained(tmp_path / "torch_trained")
  reference = convert.load_hf_llm(tmp_path / "torch_trained", **overrides)
  ids = jnp.asarray(random_ids((2, SEQ), seed=99))
  np.testing.assert_allclose(np.asarray(trained(ids)), np.asarray(reference(ids)), atol=2e-4, rtol=0)
  for ours, theirs in zip(
    jax.tree.leaves(nnx.state(trained, nnx.Param)), jax.tree.leaves(nnx.state(reference, nnx.Param))
  ):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["sdxl", "wegen"])
def test_unet_gradients_match_pytorch(name, tmp_path):
  """The diffusion loss's gradients, into the UNet's weights and into the conditioning (through
  which it trains the MLLM in WeGen and GoT), equal diffusers' autograd."""
  from tests.test_diffusion_refs import diffusers_unet, unet_inputs

  ref = diffusers_unet(name)
  ref.save_pretrained(tmp_path / "init")
  x, t, ctx, added = unet_inputs(ref)
  target = np.random.RandomState(1).randn(*x.shape).astype(np.float32)

  ctx_t = torch.tensor(ctx, requires_grad=True)
  kw = {} if added is None else {"added_cond_kwargs": {k: torch.tensor(v) for k, v in added.items()}}
  out = ref(torch.tensor(x), torch.tensor(t), ctx_t, **kw).sample
  torch.mean((out - torch.tensor(target)) ** 2).backward()
  with torch.no_grad():  # one SGD step of size 1: the weights move by minus their gradient
    for p in ref.parameters():
      p.sub_(p.grad)
  ref.save_pretrained(tmp_path / "stepped")

  unet = convert.load_diffusers_unet(tmp_path / "init")
  graphdef, params = nnx.split(unet, nnx.Param)
  added_j = None if added is None else {k: jnp.asarray(v) for k, v in added.items()}

  def loss(params, ctx):
    pred = nnx.merge(graphdef, params)(jnp.asarray(x), jnp.asarray(t), ctx, added_j)
    return jnp.mean((pred - target) ** 2)

  grads, ctx_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(ctx))
  np.testing.assert_allclose(np.asarray(ctx_grad), ctx_t.grad.numpy(), atol=1e-6, rtol=1e-3)
  assert np.abs(ctx_t.grad.numpy()).max() > 1e-5  # the conditioning does reach the loss
  stepped = nnx.state(convert.load_diffusers_unet(tmp_path / "stepped"), nnx.Param)
  before, after = jax.tree.leaves(params), jax.tree.leaves(stepped)
  for (path, g), b, a in zip(jax.tree_util.tree_leaves_with_path(grads), before, after, strict=True):
    theirs = np.asarray(b) - np.asarray(a)
    np.testing.assert_allclose(np.asarray(g), theirs, atol=1e-6, rtol=1e-3, err_msg=jax.tree_util.keystr(path))


def test_qwen2_5_vl_gradients_match_pytorch(tmp_path):
  """GoT's MLLM: the chain CE's gradients through M-RoPE, the spliced image features and the
  windowed vision tower equal transformers' autograd (a padded batch with several images)."""
  from tests.test_qwen2_5_vl import CFG, _batch, _hf_inputs
  from wegen_jax.convert.hf_qwen2_5_vl import hf_config
  from wegen_jax.training.losses import cross_entropy, next_token_labels

  torch.manual_seed(0)
  config = transformers.Qwen2_5_VLConfig(**{k: v for k, v in hf_config(CFG).items() if k != "architectures"})
  ref = transformers.Qwen2_5_VLForConditionalGeneration(config)
  with torch.no_grad():
    for p in ref.parameters():
      p.add_(torch.randn_like(p) * 0.2)
  ref.save_pretrained(tmp_path / "init")
  ids, mask, pixels, grids = _batch(CFG)
  # text tokens with a real token before them (what the chain CE trains; the first token after
  # left padding would be predicted from a padding position, whose output neither side defines)
  supervised = (mask == 1) & (ids != CFG.image_token_id) & (np.roll(mask, 1, axis=1) == 1)
  supervised[:, 0] = False

  labels = torch.from_numpy(np.where(supervised, ids, -100))
  ref(**_hf_inputs(ids, mask, pixels, grids), labels=labels).loss.backward()
  with torch.no_grad():  # one SGD step of size 1: the weights move by minus their gradient
    for p in ref.parameters():
      if p.grad is not None:
        p.sub_(p.grad)
  ref.save_pretrained(tmp_path / "stepped")

  model = convert.load_hf_qwen2_5_vl(tmp_path / "init")
  graphdef, params = nnx.split(model, nnx.Param)
  grid = tuple(map(tuple, grids))

  def loss(params):
    logits = nnx.merge(graphdef, params).forward(
      jnp.asarray(ids),
      pixel_values=jnp.asarray(pixels),
      image_grid_thw=np.asarray(grid),
      attention_mask=jnp.asarray(mask),
    )[0]
    return cross_entropy(logits, next_token_labels(jnp.asarray(ids), jnp.asarray(supervised)))[0]

  grads = jax.jit(jax.grad(loss))(params)
  stepped = nnx.state(convert.load_hf_qwen2_5_vl(tmp_path / "stepped"), nnx.Param)
  before, after = jax.tree.leaves(params), jax.tree.leaves(stepped)
  visual = 0.0
  for (path, g), b, a in zip(jax.tree_util.tree_leaves_with_path(grads), before, after, strict=True):
    theirs = np.asarray(b) - np.asarray(a)
    np.testing.assert_allclose(np.asarray(g), theirs, atol=2e-6, rtol=1e-3, err_msg=jax.tree_util.keystr(path))
    if "visual" in jax.tree_util.keystr(path):
      visual = max(visual, float(np.abs(theirs).max()))
  assert visual > 1e-4  # the loss does reach the vision tower through the spliced features
