"""Full-size configs (SD1.5, SDXL base, WeGen's 1792-wide SDXL, GoT's 12-channel SDXL) translate to
exactly diffusers' parameter names and shapes (abstract models only: nothing is computed)."""

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from flax import nnx  # noqa: E402

from wegen_jax.convert.diffusers import unet_config_from_diffusers, unet_config_to_diffusers, unet_rules  # noqa: E402
from wegen_jax.convert.mapping import CONV, LINEAR, match_rules  # noqa: E402
from wegen_jax.layers.paths import param_paths  # noqa: E402
from wegen_jax.models.unet import UNet2DConditionModel  # noqa: E402

SD15 = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
SDXL = dict(
  sample_size=128,
  block_out_channels=[320, 640, 1280],
  layers_per_block=2,
  down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  attention_head_dim=[5, 10, 20],
  transformer_layers_per_block=[1, 2, 10],
  use_linear_projection=True,
  cross_attention_dim=2048,
  addition_embed_type="text_time",
  addition_time_embed_dim=256,
  projection_class_embeddings_input_dim=2816,
)
# SDXL base itself differs from WeGen's only in the cross-attention/pooled widths; GoT's only in
# in_channels (covered by the widened-conv_in parity test). Abstract tracing of a 2.6B model is
# slow on a small CPU, so only these two run.
CONFIGS = {
  "sd15": SD15,
  "wegen_sdxl": dict(SDXL, cross_attention_dim=1792, projection_class_embeddings_input_dim=1792 + 6 * 256),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_full_size_config_has_diffusers_names_and_shapes(name):
  with torch.device("meta"):
    ref = diffusers.UNet2DConditionModel(**CONFIGS[name])
  theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
  cfg = unet_config_from_diffusers(dict(ref.config))
  model = nnx.eval_shape(lambda: UNet2DConditionModel(cfg, rngs=nnx.Rngs(0)))
  variables = param_paths(model)
  table = match_rules(variables, unet_rules(cfg))
  ours = {}
  for path, (key, transform) in table.items():
    shape = variables[path].get_value().shape
    ours[key] = (
      tuple(shape[::-1])
      if transform is LINEAR
      else (shape[3], shape[2], shape[0], shape[1])
      if transform is CONV
      else tuple(shape)
    )
  assert ours == theirs
  # and the exported config.json describes the same model
  assert unet_config_from_diffusers(unet_config_to_diffusers(cfg)) == cfg
