"""WeGen (arXiv 2503.01115): EVA-CLIP -> avg-pool -> Llama-2 -> output projector -> SDXL UNet.

config   WeGenConfig from `config.model` (sub-configs for LLM, vision tower, UNet, VAE)
model    the WeGen module: frozen vision tower, projectors, LLM, UNet detokenizer, VAE
loss     stage 1 (detokenizer) and stage 2/3 (CE + MSE + cosine + diffusion) losses
generate text and images, multi-turn, VAR CFG, UNet sampling and VAE decode
convert  the authors' released checkpoint layout (SEED-X / WeGen) in and out
task     WeGenTask for the shared trainer
sample   CLI: continue validation rows with a trained run, write PNGs
"""

from wegen_jax.systems.wegen.config import WeGenConfig
from wegen_jax.systems.wegen.model import WeGen
