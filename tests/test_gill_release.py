"""GILL's mapper equals a PyTorch reference of the release layout (gill/layers.py TextFcLayer
'gill_mapper': nn.Transformer) within 1e-4, and the release files (pretrained_ckpt.pth.tar,
decision_model.pth.tar, written here in the release's key layout) import and export exactly."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from gill_support import random_gill, tiny_config  # noqa: E402
from wegen_jax.convert.checkpoint_io import CheckpointError  # noqa: E402
from wegen_jax.systems.gill import GILLConfig  # noqa: E402
from wegen_jax.systems.gill.convert import export_release, load_release  # noqa: E402

E, W, Q, OUT, RET, V = 24, 32, 7, 16, 12, 20  # LLM width, mapper width, queries, SD width, retrieval dim, CLIP width


class TextFcLayer(nn.Module):
  """The release's module layout (same attribute names), written from its description."""

  def __init__(self, in_dim, out_dim, mode):
    super().__init__()
    self.mode = mode
    if mode == "linear":
      self.model = nn.Linear(in_dim, out_dim)
    else:
      self.fc = nn.Linear(in_dim, W)
      self.tfm = nn.Transformer(
        batch_first=True, norm_first=True, d_model=W, num_encoder_layers=2, num_decoder_layers=3,
        dim_feedforward=4 * W, dropout=0.0, nhead=4,
      )  # fmt: skip
      self.model = nn.Linear(W, out_dim)
      self.query_embs = nn.Parameter(torch.randn(1, Q, W))

  def forward(self, x, input_embs):
    if self.mode == "gill_mapper":
      x = self.fc(x + input_embs)
      x = self.tfm(x, self.query_embs.repeat(x.shape[0], 1, 1))
    return self.model(x)


class Release(nn.Module):
  def __init__(self):
    super().__init__()
    self.visual_embeddings = nn.Linear(V, 4 * E)
    self.visual_fc = nn.Linear(V, RET)
    self.ret_text_hidden_fcs = nn.ModuleList([TextFcLayer(E, RET, "linear")])
    self.gen_text_hidden_fcs = nn.ModuleList([TextFcLayer(E, OUT, "gill_mapper")])
    self.logit_scale = nn.Parameter(torch.tensor(2.5))


def _perturbed(module, seed=0):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(torch.randn(p.shape, generator=g) * 0.1)
  return module.eval()


def _cfg():
  c = tiny_config()
  c.model.llm.hidden_size, c.model.llm.num_heads, c.model.llm.intermediate_size = E, 4, 48
  c.model.vision.hidden_size = V
  c.model.sd_text.hidden_size = OUT
  c.model.unet.cross_attention_dim = OUT
  c.model.mapper = dict(
    width=W, num_heads=4, encoder_layers=2, decoder_layers=3, mlp_dim=4 * W, num_queries=Q, out_dim=OUT
  )
  c.model.ret_dim = RET
  return c


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  torch.manual_seed(0)
  ref = _perturbed(Release())
  img_rows = torch.randn(8, E)
  sd = {f"module.model.{k}": v for k, v in ref.state_dict().items()}  # DDP prefix, as main.py saves it
  sd["module.model.input_embeddings.weight"] = img_rows
  root = tmp_path_factory.mktemp("gill_release")
  torch.save({"state_dict": sd, "epoch": 3}, root / "pretrained_ckpt.pth.tar")
  decision = _perturbed(nn.Sequential(nn.Dropout(0.5), nn.Linear(E, 2)), seed=1)
  torch.save({"state_dict": decision.state_dict()}, root / "decision_model.pth.tar")
  c = _cfg()
  model = random_gill(GILLConfig.from_dict(c.model))
  parts = load_release(model, root / "pretrained_ckpt.pth.tar", root / "decision_model.pth.tar")
  return ref, decision, img_rows, model, parts


def test_mapper_matches_the_release_layout(release):
  ref, _, _, model, _ = release
  rng = np.random.default_rng(0)
  h, e = rng.normal(size=(2, 8, E)).astype(np.float32), rng.normal(size=(2, 8, E)).astype(np.float32)
  with torch.no_grad():
    want = ref.gen_text_hidden_fcs[0](torch.from_numpy(h), torch.from_numpy(e)).numpy()
  got = np.asarray(nnx.jit(lambda m, a, b: m.sd_embeddings(a, b))(model, jnp.asarray(h), jnp.asarray(e)))
  assert want.shape == (2, Q, OUT) and np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_release_heads_import(release):
  ref, decision, img_rows, model, parts = release
  assert parts == ["pretrained_ckpt", "decision_model"]
  rng = np.random.default_rng(1)
  h = rng.normal(size=(3, 8, E)).astype(np.float32)
  pooled = rng.normal(size=(3, V)).astype(np.float32)
  with torch.no_grad():
    ret = ref.ret_text_hidden_fcs[0](torch.from_numpy(h), None)[:, 0]
    ret = (ret / ret.norm(dim=-1, keepdim=True)).numpy()
    vis = ref.visual_fc(torch.from_numpy(pooled))
    vis = (vis / vis.norm(dim=-1, keepdim=True)).numpy()
    tokens = ref.visual_embeddings(torch.from_numpy(pooled)).reshape(3, 4, E).numpy()
    dec = decision(torch.from_numpy(h[:, 0])).numpy()
  np.testing.assert_allclose(np.asarray(model.text_retrieval_embedding(jnp.asarray(h))), ret, atol=1e-5)
  np.testing.assert_allclose(np.asarray(model.image_retrieval_embedding(jnp.asarray(pooled))), vis, atol=1e-5)
  np.testing.assert_allclose(np.asarray(model.visual_tokens(jnp.asarray(pooled))), tokens, atol=1e-5)
  np.testing.assert_allclose(np.asarray(model.decide(jnp.asarray(h))), dec, atol=1e-5)
  np.testing.assert_allclose(float(model.logit_scale[...]), float(ref.logit_scale.detach()), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(model.llm.embed.embedding[...][-8:]), img_rows.numpy())


def test_release_export_round_trip(release, tmp_path):
  ref, decision, img_rows, model, _ = release
  sd, dec = export_release(model)
  want = {f"model.{k}": v.numpy() for k, v in ref.state_dict().items()}
  want["model.input_embeddings.weight"] = img_rows.numpy()
  assert sorted(sd) == sorted(want)
  for k, v in want.items():
    np.testing.assert_array_equal(np.asarray(sd[k]).reshape(v.shape), v, err_msg=k)
  assert sorted(dec) == ["1.bias", "1.weight"]
  # a release with a wrong width is a one-line error naming the tensor
  torch.save({"state_dict": {"model.visual_fc.weight": torch.zeros(3, 3)}}, tmp_path / "bad.pth.tar")
  with pytest.raises(CheckpointError, match="lacks"):
    load_release(model, tmp_path / "bad.pth.tar")
