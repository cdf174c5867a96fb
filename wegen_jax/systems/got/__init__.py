"""GoT (arXiv 2503.10639): Qwen2.5-VL writes a grounded reasoning chain, SSGM turns its 64
image-token hidden states and the chain's boxes into SDXL conditioning (SYSTEMS.md §2).

tokenizer  Qwen's chat format plus `<|im_gen_start|>`, `<|im_gen_end|>`, `<|im_gen_0000|>`..
chain      the chain as editable objects (phrase, box, colour), box canvases, box IoU
config     GoTConfig from `config.model` (guidance scales per mode)
model      the GoT module: MLLM with LoRA, SSGM projectors, 12-channel UNet, VAE
data       synthetic scenes as T2I and editing examples (the embedded default)
loss       chain CE + diffusion MSE with conditioning drop
generate   chain -> hidden states -> 4-branch guided sampling
pretrained local released weights (Qwen2.5-VL HF dir, SDXL UNet/VAE diffusers dirs)
task       GoTTask for the shared trainer (`Task`)
system     GoTSystem for inference entry points (`System`); CLI: python -m wegen_jax.systems.got
"""

from wegen_jax.systems.got.config import GoTConfig
from wegen_jax.systems.got.model import GoT
from wegen_jax.systems.got.system import GoTSystem as System
from wegen_jax.systems.got.task import GoTTask as Task
