"""Random tiny diffusers references shared by the UNet / VAE / sampling tests (no tests here).

Configs cover what the systems need (SD1.5-like; SDXL-like text_time with per-layer transformer
depths and per-block heads; WeGen-like 56-wide cross-attention on an odd latent size, with head
counts that do not divide the block width)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

UNET_CONFIGS = {
  "sd15": dict(
    sample_size=16,
    block_out_channels=(32, 32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=2,
    cross_attention_dim=24,
    norm_num_groups=8,
  ),
  "sdxl": dict(
    sample_size=16,
    block_out_channels=(32, 64),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),
    transformer_layers_per_block=[1, [1, 2]],
    reverse_transformer_layers_per_block=[[2, 1, 1], 1],
    use_linear_projection=True,
    cross_attention_dim=32,
    norm_num_groups=8,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=20 + 6 * 8,
  ),
  "wegen": dict(
    sample_size=(10, 14),
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(4, 5, 3),
    use_linear_projection=True,
    cross_attention_dim=56,
    norm_num_groups=16,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=56 + 6 * 8,
  ),
  "tiny": dict(
    sample_size=8,
    block_out_channels=(8, 16),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=2,
    cross_attention_dim=8,
    norm_num_groups=4,
  ),
  "micro": dict(
    sample_size=8,
    block_out_channels=(16,),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D",),
    up_block_types=("CrossAttnUpBlock2D",),
    attention_head_dim=2,
    cross_attention_dim=8,
    norm_num_groups=4,
  ),
}
PARITY_CONFIGS = ("sd15", "sdxl", "wegen")

VAE_CONFIG = dict(
  block_out_channels=(16, 32),
  down_block_types=("DownEncoderBlock2D",) * 2,
  up_block_types=("UpDecoderBlock2D",) * 2,
  layers_per_block=1,
  latent_channels=4,
  norm_num_groups=8,
  sample_size=16,
)


def perturb(module, scale=0.05, seed=0):
  """Random offsets on every parameter, so zero-initialised biases and norms take part too."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(torch.randn(p.shape, generator=g) * scale)
  return module.eval()


def diffusers_unet(name, seed=0):
  torch.manual_seed(seed)
  return perturb(diffusers.UNet2DConditionModel(**UNET_CONFIGS[name]), seed=seed)


def diffusers_vae(seed=0):
  torch.manual_seed(seed)
  return perturb(diffusers.AutoencoderKL(**VAE_CONFIG), seed=seed)


def unet_inputs(model, batch=2, seq=7, seed=0):
  """Numpy (sample, timesteps, encoder_hidden_states, added_cond_kwargs) for a diffusers UNet."""
  cfg = model.config
  rng = np.random.RandomState(seed)
  size = cfg.sample_size if isinstance(cfg.sample_size, (list, tuple)) else (cfg.sample_size,) * 2
  cross = cfg.cross_attention_dim
  cross = cross[0] if isinstance(cross, (list, tuple)) else cross
  x = rng.randn(batch, cfg.in_channels, *size).astype(np.float32)
  t = rng.randint(0, 1000, (batch,))
  ctx = rng.randn(batch, seq, cross).astype(np.float32)
  added = None
  if cfg.addition_embed_type == "text_time":
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    added = {
      "text_embeds": rng.randn(batch, pooled).astype(np.float32),
      "time_ids": np.tile(np.array([[64, 64, 0, 0, 64, 64]], np.float32), (batch, 1)),
    }
  return x, t, ctx, added


def run_diffusers_unet(model, x, t, ctx, added=None):
  kw = {} if added is None else {"added_cond_kwargs": {k: torch.tensor(v) for k, v in added.items()}}
  with torch.no_grad():
    return model(torch.tensor(x), torch.tensor(t), torch.tensor(ctx), **kw).sample.numpy()
