"""GILLConfig: GILL (and MGCC, its flags `refine` and `grounding`) from `config.model` (configs/gill.py).

The LLM is an LLMConfig (OPT-6.7B for the release), the image encoder a CLIP vision tower and
the SD text encoder a CLIP text tower (CLIPConfig fields), the UNet and VAE diffusers config.json
dicts (Stable Diffusion v1.5), so the same dicts serve conversion and construction.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from wegen_jax.convert.diffusers import unet_config_from_diffusers
from wegen_jax.diffusion.schedulers import scheduler_from_config
from wegen_jax.models.clip import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from wegen_jax.models.llm import LLMConfig
from wegen_jax.models.patch_autoencoder import PatchAutoencoderConfig
from wegen_jax.models.unet import UNetConfig
from wegen_jax.models.vae import VAEConfig
from wegen_jax.systems.wegen.config import _autoencoder_config, _plain

# runwayml/stable-diffusion-v1-5 scheduler_config.json (PNDM there; DDIM on the same betas here).
SD15_SCHEDULER = dict(
  _class_name="DDIMScheduler",
  num_train_timesteps=1000,
  beta_start=0.00085,
  beta_end=0.012,
  beta_schedule="scaled_linear",
  prediction_type="epsilon",
  timestep_spacing="leading",
  steps_offset=1,
  set_alpha_to_one=False,
  clip_sample=False,
)


@dataclasses.dataclass(frozen=True)
class MapperConfig:
  """GILLMapper (gill/layers.py TextFcLayer mode 'gill_mapper'): nn.Transformer, pre-norm, ReLU, no dropout."""

  width: int = 512
  num_heads: int = 4
  encoder_layers: int = 4
  decoder_layers: int = 4
  mlp_dim: int = 2048
  num_queries: int = 77  # SD's text length
  out_dim: int = 768  # SD v1.5's text width


@dataclasses.dataclass(frozen=True)
class GILLConfig:
  llm: LLMConfig
  vision: CLIPConfig  # only .vision is built: CLIP ViT-L/14, pooled output (1024)
  sd_text: CLIPConfig  # only .text is built: SD v1.5's text encoder (the mapper's targets, CFG's empty prompt)
  unet: UNetConfig
  vae: VAEConfig | PatchAutoencoderConfig
  mapper: MapperConfig = MapperConfig()
  num_img_tokens: int = 8  # [IMG0]..[IMG7]: the last rows of the LLM's vocabulary
  num_visual_tokens: int = 4  # CLIP pooled -> Linear(1024 -> 4 * hidden)
  ret_dim: int = 256
  # "module": the CLIP tower's own init (pretrained weights replace it); "fan_in": its kernels redrawn
  # N(0, 1/fan_in), for a random frozen tower that must still tell images apart (tiny configs; model.py)
  vision_init: str = "module"
  # MGCC: the Cross-Modal Refinement Module (refine.py) and box-grounded generation (grounding.py)
  refine: bool = False
  refine_heads: int = 4
  refine_layers: int = 1
  grounding: bool = False
  max_boxes: int = 4
  sample_scheduler: Mapping[str, Any] | tuple = ()
  loss_weights: Mapping[str, float] | tuple = ()  # cap, ce, ret, gen

  def __post_init__(self):
    for name in ("sample_scheduler", "loss_weights"):  # hashable (jit static)
      v = getattr(self, name)
      if isinstance(v, Mapping):
        object.__setattr__(self, name, tuple(sorted(v.items())))
    if self.mapper.out_dim != self.sd_text.text.hidden_size:
      raise ValueError(
        f"mapper out_dim {self.mapper.out_dim} must equal the SD text encoder width {self.sd_text.text.hidden_size}"
      )
    if self.unet.cross_attention_dim[0] != self.mapper.out_dim:
      raise ValueError(
        f"UNet cross_attention_dim {self.unet.cross_attention_dim} must equal the mapper's {self.mapper.out_dim}"
      )
    if self.mapper.num_queries > self.sd_text.text.max_position_embeddings:
      raise ValueError("mapper num_queries exceeds the SD text encoder's length")
    if self.vision_init not in ("module", "fan_in"):
      raise ValueError(f"vision_init={self.vision_init!r}; choose 'module' or 'fan_in'")
    if self.grounding and self.unet.attention_type != "gated":
      raise ValueError("grounding needs a GLIGEN UNet: set the UNet config's attention_type='gated'")

  @property
  def img_token_ids(self) -> tuple[int, ...]:
    v = self.llm.vocab_size
    return tuple(range(v - self.num_img_tokens, v))

  def weight(self, name: str) -> float:
    return dict(self.loss_weights).get(name, 1.0)

  def sampler(self):
    return scheduler_from_config(dict(self.sample_scheduler) or SD15_SCHEDULER)

  @classmethod
  def from_dict(cls, d) -> "GILLConfig":
    d = _plain(d)
    dtype = d.get("dtype", "float32")
    extra = dict(dtype=dtype)
    unet = dict(d["unet"])
    if d.get("grounding"):
      unet["attention_type"] = "gated"
    return cls(
      llm=LLMConfig(**{**d["llm"], **extra}),
      vision=CLIPConfig(vision=CLIPVisionConfig(**d["vision"]), dtype=dtype),
      sd_text=CLIPConfig(text=CLIPTextConfig(**d["sd_text"]), dtype=dtype),
      unet=unet_config_from_diffusers(unet, **extra),
      vae=_autoencoder_config(d["vae"], dtype),
      mapper=MapperConfig(**d.get("mapper", {})),
      **{
        k: d[k]
        for k in (
          "num_img_tokens",
          "num_visual_tokens",
          "ret_dim",
          "vision_init",
          "refine",
          "refine_heads",
          "refine_layers",
          "grounding",
          "max_boxes",
          "sample_scheduler",
          "loss_weights",
        )
        if k in d
      },
    )
