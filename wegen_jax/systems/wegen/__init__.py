"""WeGen (arXiv 2503.01115): EVA-CLIP -> avg-pool -> Llama-2 -> output projector -> SDXL UNet.

config     WeGenConfig from `config.model` (sub-configs for LLM, vision tower, UNet, VAE)
model      the WeGen module: frozen vision tower, projectors, LLM, UNet detokenizer, VAE
tokenizer  offline tokenizers with WeGen's special tokens (`<img>`, `<img_00000>`..)
sequences  the SEED-X chat format: turns -> token ids, labels, image positions
pipeline   the Grain pipeline: curated dynamics records -> fixed-shape batches
loss       stage 1 (detokenizer) and stage 2/3 (CE + MSE + cosine + diffusion) losses
generate   text and images, multi-turn, VAR CFG, UNet sampling and VAE decode
convert    the authors' released checkpoint layout (SEED-X / WeGen) in and out
pretrained local released weights for a fresh run (config.pretrained)
task       WeGenTask for the shared trainer (`Task`)
system     WeGenSystem for inference entry points (`System`)
"""

from wegen_jax.systems.wegen.config import WeGenConfig
from wegen_jax.systems.wegen.model import WeGen
from wegen_jax.systems.wegen.system import WeGenSystem as System
from wegen_jax.systems.wegen.task import WeGenTask as Task
