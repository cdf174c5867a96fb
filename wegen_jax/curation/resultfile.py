"""Data-only files for the per-video curation results (no pickle: reading a file never runs code from it).

One result is one numpy `.npz` archive (an uncompressed zip of `.npy` arrays), read with allow_pickle=False:
  __meta__     uint8 [n]   UTF-8 JSON: {"format": FORMAT, "version": VERSION, "result": tree}
  a<i>         any numeric/bool/str dtype, never object: the i-th ndarray of the result
  b<i>         uint8 [n]   the i-th bytes value of the result (the PNG frames of the records)
The tree is the result with each ndarray replaced by {"__nd__": "a<i>"} and each bytes value by
{"__bytes__": "b<i>"}; numpy scalars become Python numbers and tuples become lists. Anything else (sets,
objects, non-str dict keys) cannot be written. `load` raises BadResultFile for every file that is not such an
archive: a planted pickle, a truncated or foreign file, an object array, a missing member, a wrong tree.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

FORMAT = "wegen_jax.curation.result"
VERSION = 1
SUFFIX = ".npz"
META = "__meta__"
_REFS = ("__nd__", "__bytes__")


class BadResultFile(ValueError):
  """A result file that is unreadable, not ours, or not in this format; str(err) names file and reason."""


def _encode(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
  if isinstance(obj, np.ndarray):
    if obj.dtype.hasobject:
      raise TypeError(f"object arrays cannot be stored without pickle (dtype {obj.dtype})")
    name = f"a{len(arrays)}"
    arrays[name] = obj
    return {"__nd__": name}
  if isinstance(obj, (bytes, bytearray, memoryview)):
    name = f"b{len(arrays)}"
    arrays[name] = np.frombuffer(bytes(obj), np.uint8)
    return {"__bytes__": name}
  if isinstance(obj, dict):
    out = {}
    for k, v in obj.items():
      if not isinstance(k, str) or k in _REFS:
        raise TypeError(f"dict key {k!r} cannot be stored")
      out[k] = _encode(v, arrays)
    return out
  if isinstance(obj, (list, tuple)):
    return [_encode(v, arrays) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  raise TypeError(f"{type(obj).__name__} cannot be stored without pickle")


def dump(f, obj: Any) -> None:
  """Writes obj to the open binary file f (np.savez on a path would append '.npz' to a temp name)."""
  arrays: dict[str, np.ndarray] = {}
  tree = _encode(obj, arrays)
  meta = json.dumps({"format": FORMAT, "version": VERSION, "result": tree}, allow_nan=True).encode()
  np.savez(f, **{META: np.frombuffer(meta, np.uint8)}, **arrays)


def _decode(obj: Any, z, used: set[str]) -> Any:
  if isinstance(obj, dict):
    if len(obj) == 1 and next(iter(obj)) in _REFS:
      kind, name = next(iter(obj.items()))
      if not isinstance(name, str) or name == META or name in used or name not in z.files:
        raise BadResultFile(f"bad array reference {name!r}")
      used.add(name)
      arr = z[name]  # allow_pickle=False: an object array raises ValueError here, it is never unpickled
      if kind == "__nd__":
        return arr
      if arr.dtype != np.uint8 or arr.ndim != 1:
        raise BadResultFile(f"bytes member {name} has dtype {arr.dtype} and shape {arr.shape}")
      return arr.tobytes()
    return {k: _decode(v, z, used) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_decode(v, z, used) for v in obj]
  return obj


def load(path: str) -> Any:
  """Reads a file written by `dump`; raises FileNotFoundError when there is none and BadResultFile for any
  other file."""
  try:
    with open(path, "rb") as f:
      z = np.load(f, allow_pickle=False)  # a pickle stream raises ValueError here instead of running
      if not isinstance(z, np.lib.npyio.NpzFile):
        raise BadResultFile("a single .npy array, not a result archive")
      with z:
        if META not in z.files:
          raise BadResultFile("no metadata member")
        raw = z[META]
        if raw.dtype != np.uint8 or raw.ndim != 1:
          raise BadResultFile(f"metadata member has dtype {raw.dtype} and shape {raw.shape}")
        meta = json.loads(raw.tobytes().decode("utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
          raise BadResultFile("not a curation result file")
        if meta.get("version") != VERSION:
          raise BadResultFile(f"format version {meta.get('version')!r}, this code reads {VERSION}")
        return _decode(meta.get("result"), z, set())
  except FileNotFoundError:
    raise
  except BadResultFile as e:
    raise BadResultFile(f"{path}: {e}") from None
  except Exception as e:  # noqa: BLE001  whatever a planted or broken file makes the parsers raise
    if isinstance(e, ValueError) and ("pickle" in str(e) or "Object arrays" in str(e)):
      raise BadResultFile(f"{path}: holds pickled data, which is never loaded (a pickle can run code)") from None
    raise BadResultFile(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def write_atomic(path: str, obj: Any) -> None:
  """Writes through a per-process temp file and renames: readers see the old file or the whole new one."""
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    with open(tmp, "wb") as f:
      dump(f, obj)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
