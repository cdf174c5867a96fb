"""EVA-CLIP tower and WeGen projectors against their PyTorch references (timm `Eva`, WeGen's
AvgPoolQuery/AvgPoolProjector semantics), in float32 on random tiny configs."""

import functools

import numpy as np
import pytest

from _timm import import_timm

torch = pytest.importorskip("torch")
timm = import_timm()
Eva = timm.models.eva.Eva

import jax.numpy as jnp  # noqa: E402

from wegen_jax import convert  # noqa: E402
from wegen_jax.convert.checkpoint_io import CheckpointError  # noqa: E402
from wegen_jax.models.eva import EVAConfig  # noqa: E402
from wegen_jax.models.projectors import InputProjector, avg_pool_tokens  # noqa: E402
from wegen_jax.models.vit import resample_pos_embed  # noqa: E402

# WeGen's tower in miniature (post-norm, q/v bias, no final norm), and two timm variants.
WEGEN_TINY = dict(
  img_size=28,
  patch_size=7,
  embed_dim=32,
  depth=2,
  num_heads=4,
  mlp_ratio=3.0,
  use_post_norm=True,
  num_classes=0,
  global_pool="",
  use_post_transformer_norm=False,
)
CONFIGS = {
  "wegen_postnorm": WEGEN_TINY,
  "prenorm_layerscale_finalnorm": dict(
    img_size=30,
    patch_size=5,
    embed_dim=24,
    depth=3,
    num_heads=2,
    mlp_ratio=2.5,
    init_values=0.1,
    num_classes=0,
    global_pool="token",
  ),
  "no_qkv_bias_unfused": dict(
    img_size=24,
    patch_size=6,
    embed_dim=16,
    depth=1,
    num_heads=4,
    qkv_bias=False,
    qkv_fused=False,
    use_post_norm=True,
    num_classes=0,
    global_pool="",
    use_post_transformer_norm=False,
  ),
  "no_cls_avgpool": dict(
    img_size=20, patch_size=4, embed_dim=16, depth=2, num_heads=2, class_token=False, global_pool="avg", num_classes=0
  ),
  "no_embed_class_torch_ln": dict(
    img_size=16,
    patch_size=4,
    embed_dim=16,
    depth=1,
    num_heads=2,
    num_classes=0,
    no_embed_class=True,
    norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-5),
    global_pool="token",
  ),
}


def timm_eva(kwargs, seed=0):
  torch.manual_seed(seed)
  model = Eva(**kwargs).eval()
  with torch.no_grad():  # non-trivial values for every tensor (biases and gammas start at 0/const)
    for p in model.parameters():
      p.normal_(0.0, 0.2)
  return model


def pixels(kwargs, batch=2, seed=1):
  size = kwargs["img_size"]
  return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def reference(model, x):
  with torch.no_grad():
    return model.forward_features(x).numpy()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_timm_eva(name):
  kwargs = CONFIGS[name]
  ref = timm_eva(kwargs)
  x = pixels(kwargs)
  want = reference(ref, x)
  tower = convert.load_timm_eva(ref.state_dict(), kwargs)
  got = np.asarray(tower.forward_features(jnp.asarray(x.numpy())))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  patches = np.asarray(tower(x))  # torch tensors are accepted too
  prefix = 0 if kwargs.get("class_token") is False else 1
  np.testing.assert_allclose(patches, want[:, prefix:], atol=1e-4, rtol=0)
  assert patches.shape == (2, (kwargs["img_size"] // kwargs["patch_size"]) ** 2, kwargs["embed_dim"])


def test_eva_clip_visual_pt_and_wegen_layouts(tmp_path):
  """EVA-CLIP's visual.pt (prefix, q_bias/v_bias, final norm + head to skip) read through
  torch.load(weights_only=True), and WeGen's fused qkv.bias with a non-zero k third."""
  ref = timm_eva(WEGEN_TINY)
  x = pixels(WEGEN_TINY)
  want = reference(ref, x)[:, 1:]
  sd = {f"visual.{k}": v for k, v in ref.state_dict().items()}
  sd.update(
    {
      "visual.norm.weight": torch.ones(32),
      "visual.norm.bias": torch.zeros(32),
      "visual.head.weight": torch.randn(16, 32),
      "visual.head.bias": torch.zeros(16),
    }
  )
  torch.save(sd, tmp_path / "visual.pt")
  cfg = EVAConfig(image_size=28, patch_size=7, width=32, depth=2, num_heads=4, mlp_dim=96)
  tower = convert.load_timm_eva(tmp_path / "visual.pt", cfg)
  np.testing.assert_allclose(np.asarray(tower(x.numpy())), want, atol=1e-4, rtol=0)

  wegen = {k: v for k, v in ref.state_dict().items() if not k.endswith(("q_bias", "v_bias"))}
  for i in range(2):
    a = f"blocks.{i}.attn."
    k_bias = torch.randn(32)  # softmax is invariant to it: dropping it must not change outputs
    wegen[a + "qkv.bias"] = torch.cat([ref.state_dict()[a + "q_bias"], k_bias, ref.state_dict()[a + "v_bias"]])
  tower = convert.load_timm_eva(
    wegen,
    {"width": 32, "layers": 2, "head_width": 8, "mlp_ratio": 3.0, "patch_size": 7, "image_size": 28, "postnorm": True},
  )
  np.testing.assert_allclose(np.asarray(tower(x.numpy())), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("old,new", [((4, 4), (6, 6)), ((6, 6), (3, 3)), ((4, 4), (5, 7))])
def test_resample_pos_embed_matches_torch_bicubic(old, new):
  rng = np.random.default_rng(0)
  table = rng.normal(size=(1 + old[0] * old[1], 8)).astype(np.float32)
  grid = torch.from_numpy(table[1:]).reshape(1, *old, 8).permute(0, 3, 1, 2)
  want = torch.nn.functional.interpolate(grid, size=new, mode="bicubic", align_corners=False)
  want = want.permute(0, 2, 3, 1).reshape(-1, 8).numpy()
  got = resample_pos_embed(table, new, old_grid=old)
  np.testing.assert_allclose(got[0], table[0])
  np.testing.assert_allclose(got[1:], want, atol=1e-5, rtol=0)


def test_checkpoint_grid_is_resampled_to_config_grid():
  """A checkpoint trained on a 4x4 grid (EVA-CLIP-E at 224) loaded for a 6x6 grid (448)
  equals timm at the larger size with torch-interpolated position embeddings."""
  small = timm_eva(WEGEN_TINY)
  big_kwargs = dict(WEGEN_TINY, img_size=42)
  big = Eva(**big_kwargs).eval()
  sd = small.state_dict()
  cls, grid = sd["pos_embed"][:, :1], sd["pos_embed"][:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
  grid = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
  big.load_state_dict({**sd, "pos_embed": torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, 36, 32)], 1)})
  x = pixels(big_kwargs)
  tower = convert.load_timm_eva(sd, big_kwargs)
  np.testing.assert_allclose(np.asarray(tower.forward_features(x.numpy())), reference(big, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("layout", ["timm", "wegen"])
def test_export_round_trip(layout):
  kwargs = CONFIGS["prenorm_layerscale_finalnorm"] if layout == "timm" else WEGEN_TINY
  ref = timm_eva(kwargs)
  tower = convert.load_timm_eva(ref.state_dict(), kwargs)
  exported = convert.export_timm_eva(tower, layout=layout)
  x = pixels(kwargs)
  if layout == "timm":
    back = Eva(**kwargs).eval()
    back.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in exported.items()}, strict=True)
    np.testing.assert_allclose(reference(back, x), reference(ref, x), atol=1e-6, rtol=0)
  else:
    assert "blocks.0.attn.qkv.bias" in exported and "blocks.0.attn.q_bias" not in exported
    np.testing.assert_array_equal(exported["blocks.0.attn.qkv.bias"][32:64], 0)
    again = convert.load_timm_eva(exported, kwargs)
    np.testing.assert_array_equal(np.asarray(again(x.numpy())), np.asarray(tower(x.numpy())))


def test_bfloat16_torch_state_dict():
  sd = timm_eva(WEGEN_TINY).state_dict()
  x = pixels(WEGEN_TINY).numpy()
  from_bf16 = convert.load_timm_eva({k: v.bfloat16() for k, v in sd.items()}, WEGEN_TINY)
  from_f32 = convert.load_timm_eva({k: v.bfloat16().float() for k, v in sd.items()}, WEGEN_TINY)
  np.testing.assert_array_equal(np.asarray(from_bf16(x)), np.asarray(from_f32(x)))


def test_load_errors_name_the_tensor():
  sd = timm_eva(WEGEN_TINY).state_dict()
  del sd["blocks.1.mlp.fc1.bias"]
  with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc1\.bias"):
    convert.load_timm_eva(sd, WEGEN_TINY)
  with pytest.raises(CheckpointError, match="patch_embed"):
    convert.load_timm_eva({"foo": np.zeros(3)}, WEGEN_TINY)
  with pytest.raises(CheckpointError, match="use_rot_pos_emb"):
    convert.load_timm_eva(sd, dict(WEGEN_TINY, use_rot_pos_emb=True))


def test_avg_pool_and_projectors_match_wegen():
  """WeGen: AvgPoolQuery (avg_pool2d over the sqrt(N) grid) + Linear(no bias); output
  projector Linear(no bias); weights read from `input_resampler.`/`output_resampler.` keys."""
  torch.manual_seed(0)
  b, side, c, llm = 2, 8, 12, 20
  tokens = torch.randn(b, side * side, c)
  grid = tokens.permute(0, 2, 1).reshape(b, c, side, side)
  pooled = torch.nn.functional.avg_pool2d(grid, kernel_size=2, stride=2).reshape(b, c, -1).permute(0, 2, 1)
  np.testing.assert_allclose(np.asarray(avg_pool_tokens(jnp.asarray(tokens.numpy()), 16)), pooled.numpy(), atol=1e-6)
  # ragged grid (torch drops the border) and the no-pooling case
  odd = torch.randn(1, 81, c)
  want = torch.nn.functional.avg_pool2d(odd.permute(0, 2, 1).reshape(1, c, 9, 9), 2, 2)
  np.testing.assert_allclose(
    np.asarray(avg_pool_tokens(jnp.asarray(odd.numpy()), 16)),
    want.reshape(1, c, -1).permute(0, 2, 1).numpy(),
    atol=1e-6,
  )
  np.testing.assert_array_equal(np.asarray(avg_pool_tokens(jnp.asarray(tokens.numpy()), 64)), tokens.numpy())

  w_in, w_out = torch.randn(llm, c), torch.randn(c, llm)
  sd = {
    "input_resampler.proj.weight": w_in,
    "input_resampler.avgpoolquery.scale": torch.tensor(1.0),
    "output_resampler.proj.weight": w_out,
    "llm.model.embed_tokens.weight": torch.zeros(3, 4),
  }
  inp, out = convert.load_wegen_projectors(sd, num_queries=16)
  assert isinstance(inp, InputProjector)
  np.testing.assert_allclose(np.asarray(inp(jnp.asarray(tokens.numpy()))), (pooled @ w_in.T).numpy(), atol=1e-5)
  h = torch.randn(b, 16, llm)
  np.testing.assert_allclose(np.asarray(out(jnp.asarray(h.numpy()))), (h @ w_out.T).numpy(), atol=1e-5)
  exported = convert.export_wegen_projectors(inp, out)
  np.testing.assert_array_equal(exported["input_resampler.proj.weight"], w_in.numpy())
  np.testing.assert_array_equal(exported["output_resampler.proj.weight"], w_out.numpy())
  with pytest.raises(CheckpointError, match="output_resampler"):
    convert.load_wegen_projectors({"input_resampler.proj.weight": w_in})


def test_wegen_eva_clip_e_shapes():
  """WeGen's sizes, abstractly (one of the 64 blocks): 448 px -> 32x32 = 1024 tokens of 1792,
  4x4 pooled -> 64 tokens -> 4096, and 67.9M parameters per block (4.35B for the tower)."""
  import jax
  from flax import nnx

  from wegen_jax.models.eva import EVA_CLIP_E_14_PLUS_448, EVAVisionTower
  from wegen_jax.models.projectors import InputProjector, OutputProjector

  cfg = EVA_CLIP_E_14_PLUS_448
  assert (cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.grid) == (1792, 64, 16, 15360, (32, 32))
  wegen_yaml = dict(
    drop_path_rate=0,
    eva_model_name="eva-clip-E-14-plus",
    head_width=112,
    image_size=448,
    intermediate_size=15360,
    layer_norm_eps=1e-06,
    layers=64,
    mlp_ratio=8.571428571428571,
    n_query=64,
    patch_size=14,
    postnorm=True,
    qkv_bias=True,
    v_query=64,
    width=1792,
    xattn=False,
  )
  from wegen_jax.convert.timm_eva import config_from_timm

  assert config_from_timm(wegen_yaml) == cfg  # configs/visual_encoder/eva_vision.yaml
  one_block = cfg.replace(depth=1)
  tower = nnx.eval_shape(lambda: EVAVisionTower(one_block, rngs=nnx.Rngs(0)))
  inp = nnx.eval_shape(lambda: InputProjector(rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda: OutputProjector(rngs=nnx.Rngs(0)))
  block_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(tower.blocks[0])))
  assert block_params == 4 * 1792 * 1792 + 2 * 1792 + 1792 + 2 * 1792 * 15360 + 15360 + 1792 + 4 * 1792

  def apply(module, x):
    graphdef, state = nnx.split(module)
    return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)

  tokens = apply(tower, jax.ShapeDtypeStruct((2, 3, 448, 448), np.float32))
  assert tokens.shape == (2, 1024, 1792)
  assert apply(inp, tokens).shape == (2, 64, 4096)
  assert apply(out, jax.ShapeDtypeStruct((2, 64, 4096), np.float32)).shape == (2, 64, 1792)
