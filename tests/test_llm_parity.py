"""LLM family vs transformers: logits, export round trip, greedy generation."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from tests.llm_refs import hf_models, random_ids  # noqa: E402
from wegen_jax import convert  # noqa: E402
from wegen_jax.generation import SamplingConfig, generate  # noqa: E402

NAMES = sorted(hf_models())


@pytest.fixture(scope="module", params=NAMES)
def pair(request, tmp_path_factory):
  """(HF model, its saved directory, our converted model)."""
  torch.manual_seed(0)
  hf = hf_models()[request.param]().eval()
  path = tmp_path_factory.mktemp(request.param)
  hf.save_pretrained(path)
  return hf, path, convert.load_hf_llm(path)


def hf_logits(hf, ids, mask=None):
  with torch.no_grad():
    kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
    return hf(torch.tensor(ids), **kw).logits.numpy()


def test_logits_match(pair):
  hf, _, model = pair
  ids = random_ids((2, 16))
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_export_round_trip(pair, tmp_path):
  hf, _, model = pair
  convert.save_hf_llm(model, tmp_path)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
  ids = random_ids((2, 11), seed=1)
  np.testing.assert_allclose(hf_logits(reloaded, ids), hf_logits(hf, ids), atol=1e-5, rtol=0)
  again = convert.load_hf_llm(tmp_path)
  np.testing.assert_array_equal(np.asarray(again(jnp.asarray(ids))), np.asarray(model(jnp.asarray(ids))))


def test_greedy_generation_matches_hf(pair):
  hf, _, model = pair
  ids = random_ids((3, 9), seed=2)
  mask = np.ones_like(ids)
  mask[1, :4] = 0  # left padding, as HF batches prompts for generation
  ids[1, :4] = 0
  with torch.no_grad():
    ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=20, do_sample=False).numpy()[
      :, ids.shape[1] :
    ]
  out = generate(model, ids, attention_mask=mask, sampling=SamplingConfig(max_new_tokens=20))
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)


def test_qwen2_5_vl_text_model(tmp_path):
  """The text model of a Qwen2.5-VL checkpoint (M-RoPE, nested config, nested keys)."""
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

  torch.manual_seed(0)
  cfg = Qwen2_5_VLConfig(
    text_config=dict(
      vocab_size=96,
      hidden_size=64,
      intermediate_size=112,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
    ),
    vision_config=dict(
      depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, fullatt_block_indexes=[0]
    ),
    image_token_id=90,
    video_token_id=91,
    vision_start_token_id=92,
  )
  hf = Qwen2_5_VLForConditionalGeneration(cfg).eval()
  hf.save_pretrained(tmp_path)
  model = convert.load_hf_llm(tmp_path)
  assert model.cfg.mrope_section == (2, 3, 3)
  ids = random_ids((2, 12), seed=3) % 80
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_mrope_tables_match_hf_with_distinct_axes():
  """M-RoPE with different temporal/height/width positions (image tokens), vs HF's rotary."""
  from transformers import Qwen2_5_VLConfig
  from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding
  from wegen_jax.layers import RopeConfig, cos_sin

  cfg = Qwen2_5_VLConfig(
    text_config=dict(hidden_size=64, num_attention_heads=2, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]})
  ).text_config
  positions = np.random.RandomState(0).randint(0, 50, (3, 2, 7))
  ref_cos, ref_sin = Qwen2_5_VLRotaryEmbedding(cfg)(torch.zeros(1, dtype=torch.float32), torch.tensor(positions))
  cos, sin = cos_sin(RopeConfig(32, cfg.rope_parameters["rope_theta"], None, (4, 6, 6)), jnp.asarray(positions))
  np.testing.assert_allclose(np.asarray(cos), ref_cos.numpy(), atol=1e-5)
  np.testing.assert_allclose(np.asarray(sin), ref_sin.numpy(), atol=1e-5)
