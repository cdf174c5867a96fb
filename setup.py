"""wegen_jax: unified multimodal generation (WeGen, GoT, MGCC/GILL) in JAX.

The top-level kernels/ and configs/ folders install as `wegen_jax.kernels` and `wegen_jax.configs`.
Extras: `torch` (PyTorch references and conversion: install torch==2.13.0 CPU first, see
the Makefile), `dev` (tests), `chat` (the Gradio web UI and its Selenium test), `tpu` (libtpu: the TPU runtime on TPU VMs, and ahead-of-time
TPU compilation on any host for `python -m wegen_jax.tools.aot`), `gpu` (CUDA 12 plugin).
"""

import os

from setuptools import find_packages, setup


def _subpackages(folder: str, name: str) -> dict[str, str]:
  """{package name: folder} for `folder` and each of its subfolders with an __init__.py."""
  return {
    name + dirpath[len(folder) :].replace(os.sep, "."): dirpath
    for dirpath, _, files in os.walk(folder)
    if "__init__.py" in files
  }


# The top-level kernels/ and configs/ folders install inside the package, so that
# `wegen_jax.kernels` imports and `--config configs/x.py` resolves from any directory.
PACKAGE_DIRS = {**_subpackages("kernels", "wegen_jax.kernels"), **_subpackages("configs", "wegen_jax.configs")}

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
  "pyspng==0.1.4",  # libspng: decodes the records' PNG frames in half PIL's time (same pixels)
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
  packages=find_packages(include=["wegen_jax", "wegen_jax.*"]) + sorted(PACKAGE_DIRS),
  package_dir=PACKAGE_DIRS,
  install_requires=JAX_STACK,
  extras_require={
    "torch": TORCH,
    "dev": ["pytest==9.2.0", "pytest-xdist==3.8.0", "ruff==0.17.6"],
    # the chat's web UI (python -m wegen_jax.chat --web) and its browser test (Selenium drives
    # the system's Chromium; selenium 4.51+ needs a certifi newer than the registry here has)
    "chat": ["gradio==6.31.0", "selenium==4.50.0"],
    # jax's own extras, so libtpu / the CUDA plugin match the pinned jaxlib (libtpu 0.0.42.1)
    "tpu": ["jax[tpu]==0.10.2"],
    "gpu": ["jax[cuda12]==0.10.2"],
  },
)
