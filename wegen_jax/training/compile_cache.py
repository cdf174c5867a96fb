"""The persistent compilation cache (`config.compilation_cache_dir`, as MaxText's jax_cache_dir).

A run that restarts (resume after preemption, the next stage of a staged run, the same
model's initialiser in every stage) loads its compiled programs instead of compiling them
again: on CPU the tiny WeGen's jitted initialiser alone takes ~45 s to compile.
"""

from __future__ import annotations

from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache


def use_compilation_cache(directory: str | Path | None) -> None:
  """Caches compiled programs in `directory` from the next compilation on (None or "": leave
  jax's setting, e.g. JAX_COMPILATION_CACHE_DIR, as it is)."""
  if not directory:
    return
  directory = str(Path(directory).expanduser().absolute())
  if jax.config.jax_compilation_cache_dir == directory:
    return
  Path(directory).mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  compilation_cache.reset_cache()  # the cache binds its directory on first use: rebind it
