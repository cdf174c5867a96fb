"""Model dimension tables of the LLM family: the real models' sizes for pods, tiny variants for CPU.

Configs build `config.model` as dict(LLM_DEFAULTS, **LLM_PRESETS[name]); the keys are LLMConfig fields.
"""

_LLAMA2_7B = dict(
  family="llama",
  vocab_size=32000,
  hidden_size=4096,
  intermediate_size=11008,
  num_layers=32,
  num_heads=32,
  num_kv_heads=32,
  norm_eps=1e-5,
  max_position_embeddings=4096,
)
LLM_PRESETS = {
  "llama2_7b": _LLAMA2_7B,
  # WeGen's LLM: Llama-2-7B-chat with the SEED-X vocabulary (32000 + image/location tokens).
  "wegen_llama2_7b": dict(_LLAMA2_7B, vocab_size=32330),
  "llama3_8b": dict(
    family="llama",
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
    norm_eps=1e-5,
    rope_theta=500000.0,
    max_position_embeddings=131072,
    rope_scaling=dict(
      rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
    ),
  ),
  # GoT's MLLM text model (Qwen2.5-VL-3B-Instruct).
  "qwen2_5_vl_3b": dict(
    family="qwen2",
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=11008,
    num_layers=36,
    num_heads=16,
    num_kv_heads=2,
    norm_eps=1e-6,
    rope_theta=1e6,
    qkv_bias=True,
    tie_word_embeddings=True,
    mrope_section=(16, 24, 24),
    max_position_embeddings=128000,
  ),
  # GILL / MGCC's frozen LLM.
  "opt_6_7b": dict(
    family="opt",
    vocab_size=50272,
    hidden_size=4096,
    intermediate_size=16384,
    num_layers=32,
    num_heads=32,
    norm="layer",
    norm_eps=1e-5,
    norm_bias=True,
    activation="relu",
    gated_mlp=False,
    qkv_bias=True,
    out_bias=True,
    mlp_bias=True,
    position_embedding="learned",
    max_position_embeddings=2048,
    tie_word_embeddings=True,
  ),
  "tiny_llama": dict(
    family="llama",
    vocab_size=256,
    hidden_size=64,
    intermediate_size=176,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_position_embeddings=512,
  ),
  "tiny_qwen": dict(
    family="qwen2",
    vocab_size=256,
    hidden_size=64,
    intermediate_size=176,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    qkv_bias=True,
    tie_word_embeddings=True,
    rope_theta=1e6,
    max_position_embeddings=512,
  ),
  "tiny_opt": dict(
    family="opt",
    vocab_size=256,
    hidden_size=64,
    intermediate_size=256,
    num_layers=2,
    num_heads=4,
    norm="layer",
    norm_eps=1e-5,
    norm_bias=True,
    activation="relu",
    gated_mlp=False,
    qkv_bias=True,
    out_bias=True,
    mlp_bias=True,
    position_embedding="learned",
    max_position_embeddings=512,
    tie_word_embeddings=True,
  ),
}
# A tiny M-RoPE text model for Qwen2.5-VL tests (head_dim 16: mrope_section sums to 8).
LLM_PRESETS["tiny_qwen_vl"] = dict(LLM_PRESETS["tiny_qwen"], mrope_section=(2, 3, 3))

# Qwen2.5-VL vision towers (QwenVisionConfig fields), keyed like their text model in LLM_PRESETS.
QWEN_VISION_PRESETS = {
  "qwen2_5_vl_3b": dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=2048,
    patch_size=14,
    temporal_patch_size=2,
    spatial_merge_size=2,
    window_size=112,
    fullatt_block_indexes=(7, 15, 23, 31),
  ),
  # windows of 2x2 merged patches, so small images already split into several windows
  "tiny_qwen_vl": dict(
    depth=4,
    hidden_size=32,
    intermediate_size=48,
    num_heads=2,
    out_hidden_size=64,
    patch_size=2,
    temporal_patch_size=2,
    spatial_merge_size=2,
    window_size=8,
    fullatt_block_indexes=(1, 3),
  ),
}

# Defaults every preset gets, so overrides like --config.model.dtype=bfloat16 always work.
LLM_DEFAULTS = dict(
  dtype="float32", param_dtype="float32", remat="none", attention_impl="xla", scan_layers=False, short_conv=0
)

# stabilityai/stable-diffusion-xl-base-1.0 unet/ and vae/ config.json (diffusers names): the
# detokenizers of WeGen and GoT start from these and change their conditioning widths.
SDXL_UNET = dict(
  block_out_channels=[320, 640, 1280],
  down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  layers_per_block=2,
  transformer_layers_per_block=[1, 2, 10],
  attention_head_dim=[5, 10, 20],
  use_linear_projection=True,
  cross_attention_dim=2048,
  addition_embed_type="text_time",
  addition_time_embed_dim=256,
  projection_class_embeddings_input_dim=1280 + 6 * 256,
  norm_num_groups=32,
  sample_size=128,
)
SDXL_VAE = dict(
  block_out_channels=[128, 256, 512, 512],
  layers_per_block=2,
  latent_channels=4,
  norm_num_groups=32,
  scaling_factor=0.13025,
  sample_size=1024,
  force_upcast=True,
)
# The tiny detokenizer UNet of the embedded defaults (32-px frames as 16x16x12 folded latents);
# each system sets its conditioning widths and input channels.
TINY_UNET = dict(
  block_out_channels=[32, 64],
  down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
  up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
  layers_per_block=1,
  attention_head_dim=[2, 4],
  use_linear_projection=True,
  addition_embed_type="text_time",
  addition_time_embed_dim=8,
  projection_class_embeddings_input_dim=32 + 6 * 8,
  norm_num_groups=8,
  out_channels=12,
  sample_size=16,
)
