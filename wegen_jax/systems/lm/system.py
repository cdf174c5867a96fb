"""The LLM alone behind the System interface: a run's LLM to an HF folder and back."""

from __future__ import annotations

from wegen_jax.convert.hf_llm import fill_hf_llm, rules, save_hf_llm
from wegen_jax.convert.mapping import rules_table
from wegen_jax.models import LLMConfig
from wegen_jax.systems import base


class LMSystem(base.System):
  export_layouts = ("hf",)

  def export_pytorch(self, out, *, layout: str, dtype=None) -> list[str]:
    """OUT itself is the HF folder (LlamaForCausalLM/AutoModelForCausalLM.from_pretrained(OUT))."""
    save_hf_llm(self.model, out, dtype=dtype)
    return ["llm"]

  @classmethod
  def import_pytorch(cls, config, src):
    model = cls.build_model(config)
    fill_hf_llm(model, src)
    return model, ["llm"]

  @classmethod
  def mapping_tables(cls, config) -> str:
    return rules_table(rules(LLMConfig(**config.model)))
