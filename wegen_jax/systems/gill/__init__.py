"""GILL (github kohjingyu/gill) and MGCC (arXiv 2405.18304) on it: one system, `config.task = "gill"`.

MGCC is GILL plus two modules, so it is two config flags here (configs/mgcc.py sets them), not a
second package: model.refine (the Cross-Modal Refinement Module, refine.py) and model.grounding
(LLM-written boxes drawn by a GLIGEN UNet, grounding.py). Everything else (data, losses,
conversion, generation) is shared, and a GILL release loads into an MGCC model unchanged.

config     GILLConfig from `config.model`
mapper     GILLMapper (the 8 [IMG] states -> 77 x 768 SD text space)
refine     MGCC's Cross-Modal Refinement Module
model      the GILL module: OPT, CLIP, visual/retrieval/decision heads, mapper, SD text encoder, UNet, VAE
tokenizer  the LLM tokenizer with [IMG0..7] and the SD text tokenizer
data       captioned images and synthetic stories -> fixed-shape batches
loss       captioning CE, [IMG0] CE, retrieval InfoNCE, mapper L2
grounding  MGCC's box text format, its parser and the GLIGEN inputs
generate   interleaved text / retrieved / generated images; SD v1.5 sampling (optionally grounded)
convert    the release's pretrained_ckpt.pth.tar / decision_model.pth.tar in and out
pretrained local released weights for a fresh run (config.pretrained)
task       GILLTask for the shared trainer (`Task`)
system     GILLSystem for inference entry points (`System`)
"""

from wegen_jax.systems.gill.config import GILLConfig
from wegen_jax.systems.gill.model import GILL
from wegen_jax.systems.gill.system import GILLSystem as System
from wegen_jax.systems.gill.task import GILLTask as Task
