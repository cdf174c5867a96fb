"""wegen_jax: unified multimodal generation (WeGen, GoT, MGCC/GILL) in JAX/Flax NNX."""

__version__ = "0.1.0"
