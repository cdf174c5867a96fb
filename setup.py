"""wegen_jax: unified multimodal generation (WeGen, GoT, MGCC/GILL) in JAX.

The top-level kernels/ folder installs as `wegen_jax.kernels`.
Extras: `torch` (PyTorch references and conversion: install torch==2.13.0 CPU first, see
the Makefile), `dev` (tests), `tpu` (libtpu: the TPU runtime on TPU VMs, and ahead-of-time
TPU compilation on any host for `python -m wegen_jax.tools.aot`), `gpu` (CUDA 12 plugin).
"""

from setuptools import find_packages, setup

JAX_STACK = [
  "jax==0.10.2",
  "jaxlib==0.10.2",
  "flax==0.12.8",
  "optax==0.2.8",
  "orbax-checkpoint==0.12.8",
  "grain==0.2.18",
  "tensorflow-datasets==4.9.10",
  "array-record==0.8.6",
  "ml-collections==1.1.0",
  "ml-dtypes>=0.5",
  "numpy>=2.0",
  "av==18.1.0",
  "pillow>=10",
  "tqdm>=4.66",
  "tensorboardX==2.6.5",
  "tokenizers>=0.21",
  "absl-py>=2.1",
]

TORCH = [
  "torch==2.13.0",
  "transformers==5.23.0",
  "diffusers==0.42.1",
  "safetensors==0.8.0",
  # timm needs torchvision, which has no CPU wheel here; the Makefile installs timm with
  # --no-deps and wegen_jax's timm tests stub the few torchvision names timm imports.
]

setup(
  name="wegen_jax",
  version="0.1.0",
  description="JAX/TPU-native unified multimodal generation: WeGen, GoT, MGCC/GILL",
  python_requires=">=3.11",
  packages=find_packages(include=["wegen_jax", "wegen_jax.*"]) + ["wegen_jax.kernels"],
  package_dir={"wegen_jax.kernels": "kernels"},
  install_requires=JAX_STACK,
  extras_require={
    "torch": TORCH,
    "dev": ["pytest==9.2.0", "pytest-xdist==3.8.0", "ruff==0.17.6"],
    # jax's own extras, so libtpu / the CUDA plugin match the pinned jaxlib (libtpu 0.0.42.1)
    "tpu": ["jax[tpu]==0.10.2"],
    "gpu": ["jax[cuda12]==0.10.2"],
  },
)
