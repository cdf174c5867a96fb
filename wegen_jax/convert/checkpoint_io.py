"""Reading and writing PyTorch-side checkpoint files without importing torch.

safetensors is parsed directly (8-byte header size, JSON header, raw little-endian
buffers) and memory-mapped, so a 7B shard is read tensor by tensor and bfloat16 works
(via ml_dtypes). PyTorch pickles (`.bin`, `.pt`) are read only with
`torch.load(weights_only=True)`, never unpickled freely.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Iterator, Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class CheckpointError(ValueError):
  """A checkpoint file or directory is missing, corrupt, or does not fit the model."""


class CheckpointFormatError(CheckpointError):
  """A checkpoint file is malformed: its safetensors header (or shard index) breaks the format.
  The message names the file, the tensor where there is one, and what is wrong."""


class NonFiniteWeightsWarning(UserWarning):
  """Converted weights contain NaN or inf (a diverged or corrupt checkpoint)."""


# safetensors' own reader refuses headers over 100 MB; real ones are a few hundred kB at most
MAX_HEADER_BYTES = 100_000_000


def _is_count(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_entry(path: Path, name: str, e, data_size: int, file_size: int) -> None:
  """Raises CheckpointFormatError unless header entry `e` describes a readable tensor."""

  def bad(what: str) -> CheckpointFormatError:
    return CheckpointFormatError(f"{path}: tensor {name!r}: {what}")

  if not isinstance(e, dict):
    raise bad(f"header entry is a JSON {type(e).__name__}, not an object with dtype, shape and data_offsets")
  for field in ("dtype", "shape", "data_offsets"):
    if field not in e:
      raise bad(f"header entry has no {field!r}")
  dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
  if not isinstance(dtype, str) or dtype not in _DTYPES:
    raise bad(f"unsupported dtype {dtype!r} (supported: {', '.join(_DTYPES)})")
  if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
    raise bad(f"shape {shape!r} is not a list of non-negative integers")
  if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
    raise bad(f"data_offsets {offsets!r} is not a pair of non-negative integers")
  begin, end = offsets
  if begin > end:
    raise bad(f"data_offsets {offsets} begin after they end (begin {begin} > end {end})")
  if end > data_size:
    raise CheckpointFormatError(
      f"{path} is truncated: tensor {name!r} ends at byte {file_size - data_size + end} but the file has "
      f"{file_size} bytes (data_offsets {offsets} run past the {data_size}-byte data section)"
    )
  want = int(np.prod(shape, dtype=object)) * np.dtype(_DTYPES[dtype]).itemsize
  if end - begin != want:
    raise bad(f"data_offsets {offsets} hold {end - begin} bytes but shape {shape} of {dtype} needs {want}")


class SafetensorsFile(Mapping[str, np.ndarray]):
  """Lazy, read-only mapping name -> np.ndarray over one .safetensors file.

  The header is validated when the file is opened (CheckpointFormatError on any violation),
  so a bad file fails before any tensor is read."""

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    if not self.path.is_file():
      raise CheckpointError(f"safetensors file not found: {self.path}")
    size = self.path.stat().st_size

    def bad(what: str) -> CheckpointFormatError:
      return CheckpointFormatError(f"{self.path}: not a valid safetensors file: {what}")

    with open(self.path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise CheckpointFormatError(f"{self.path} is truncated ({size} bytes): not a safetensors file")
      (n,) = struct.unpack("<Q", head)
      if n > size - 8:
        raise bad(
          f"header length {n} is larger than the {size - 8} bytes after the length field (corrupt or truncated)"
        )
      if n < 2 or n > MAX_HEADER_BYTES:
        raise bad(f"header length {n} is outside 2..{MAX_HEADER_BYTES} bytes")
      try:
        header = json.loads(f.read(n))
      except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise bad(f"header is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(header, dict):
      raise bad(f"header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
      metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
      raise bad(f"__metadata__ {str(metadata)[:200]} is not an object of string values")
    self._data_start = 8 + n
    for name, entry in header.items():
      _check_entry(self.path, name, entry, size - self._data_start, size)
    self.metadata = metadata
    self._entries = header
    self._size = size
    self._mmap = None

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self._entries:
      raise KeyError(name)
    e = self._entries[name]
    begin, end = e["data_offsets"]
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
    raw = self._mmap[self._data_start + begin : self._data_start + end]
    if raw.size != end - begin:  # the file shrank after it was opened
      raise CheckpointFormatError(f"{self.path} is truncated: tensor {name!r} ends past the end of the file")
    return raw.view(_DTYPES[e["dtype"]]).reshape(e["shape"])

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._entries[name]["shape"])

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)


def save_safetensors(
  tensors: Mapping[str, np.ndarray], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
  header, offset, arrays = {}, 0, []
  for name in sorted(tensors):
    a = np.asarray(tensors[name])
    a = np.ascontiguousarray(a).reshape(a.shape)  # ascontiguousarray makes 0-d arrays 1-d
    if a.dtype not in _NAMES:
      raise CheckpointError(f"tensor {name!r}: dtype {a.dtype} cannot be written to safetensors")
    header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
    arrays.append(a)
  header["__metadata__"] = dict(metadata or {"format": "pt"})
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  tmp = Path(str(path) + ".tmp")
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for a in arrays:
      f.write(a.tobytes())
  os.replace(tmp, path)


class MergedCheckpoint(Mapping[str, np.ndarray]):
  """Several files seen as one mapping (sharded HF checkpoints)."""

  def __init__(self, files: Mapping[str, Mapping[str, np.ndarray]]):
    self._where = {}
    for f in files.values():
      for k in f:
        self._where[k] = f

  def __getitem__(self, name):
    return self._where[name][name]

  def __iter__(self):
    return iter(self._where)

  def __len__(self):
    return len(self._where)


def load_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A PyTorch state dict as numpy, read with torch.load(weights_only=True)."""
  path = Path(path)
  if not path.is_file():
    raise CheckpointError(f"checkpoint file not found: {path}")
  try:
    import torch
  except ImportError:
    raise CheckpointError(
      f"reading {path} needs PyTorch: pip install 'wegen_jax[torch]' (or convert it to safetensors first)"
    ) from None
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for corrupt pickles
    raise CheckpointError(f"cannot read {path} with torch.load(weights_only=True): {e}") from None
  for key in ("state_dict", "model", "module"):
    if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
      sd = sd[key]
  out = {}
  for k, v in sd.items():
    if hasattr(v, "detach"):
      v = v.detach().cpu()
      out[k] = v.float().numpy().astype(ml_dtypes.bfloat16) if v.dtype == torch.bfloat16 else v.numpy()
  return out


def read_state_dict(path: str | os.PathLike) -> Mapping[str, np.ndarray]:
  """Tensors from a file (.safetensors/.bin/.pt) or an HF-style directory (sharded or not)."""
  path = Path(path)
  if path.is_file():
    return SafetensorsFile(path) if path.suffix == ".safetensors" else load_torch_file(path)
  if not path.is_dir():
    raise CheckpointError(f"checkpoint path does not exist: {path}")
  for index_name in ("model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.json"):
    index = path / index_name
    if index.is_file():
      try:
        weight_map = json.loads(index.read_text())["weight_map"]
      except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointFormatError(f"{index}: not a shard index with a weight_map ({type(e).__name__}: {e})") from None
      if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointFormatError(f"{index}: weight_map is not an object of shard file names")
      shards = sorted(set(weight_map.values()))
      return MergedCheckpoint({s: SafetensorsFile(path / s) for s in shards})
  for name in ("model.safetensors", "diffusion_pytorch_model.safetensors"):
    if (path / name).is_file():
      return SafetensorsFile(path / name)
  singles = sorted(path.glob("*.safetensors"))
  if singles:
    return MergedCheckpoint({s.name: SafetensorsFile(s) for s in singles})
  for name in ("pytorch_model.bin", "diffusion_pytorch_model.bin"):
    if (path / name).is_file():
      return load_torch_file(path / name)
  raise CheckpointError(
    f"no weights in {path}: expected model.safetensors (or a sharded "
    "model.safetensors.index.json, or pytorch_model.bin)"
  )


MAX_SHARD_BYTES = 5 * 2**30


def save_state_dict(
  tensors: Mapping[str, np.ndarray],
  directory: str | os.PathLike,
  filename: str = "model.safetensors",
  max_shard_bytes: int | None = None,
) -> None:
  """Writes one safetensors file, or HF-style shards plus an index when over max_shard_bytes
  (default MAX_SHARD_BYTES, HF's 5 GB shards)."""
  max_shard_bytes = max_shard_bytes or MAX_SHARD_BYTES
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  total = sum(np.asarray(t).nbytes for t in tensors.values())
  if total <= max_shard_bytes:
    save_safetensors(tensors, directory / filename)
    return
  shards, current, size = [], {}, 0
  for name in sorted(tensors):
    nbytes = np.asarray(tensors[name]).nbytes
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = tensors[name]
    size += nbytes
  shards.append(current)
  stem = filename[: -len(".safetensors")]
  weight_map = {}
  for i, shard in enumerate(shards):
    shard_name = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_safetensors(shard, directory / shard_name)
    weight_map.update({k: shard_name for k in shard})
  index = {"metadata": {"total_size": total}, "weight_map": weight_map}
  (directory / f"{filename}.index.json").write_text(json.dumps(index, indent=2))


def state_dict_and_source(state_dict_or_path) -> tuple[Mapping[str, Any], str]:
  """(tensors, name for messages) from a state dict or a path read_state_dict reads."""
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    return read_state_dict(state_dict_or_path), str(state_dict_or_path)
  return state_dict_or_path, "state dict"


def read_json_config(directory: str | os.PathLike, expected: str) -> dict:
  """DIRECTORY/config.json as a dict; `expected` says what kind of folder it should be."""
  config_path = Path(directory) / "config.json"
  if not config_path.is_file():
    raise CheckpointError(f"no config.json in {directory}: expected {expected}")
  try:
    return json.loads(config_path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{config_path} is not valid JSON: {e}") from None


def write_json_config(directory: str | os.PathLike, config: Mapping[str, Any]) -> None:
  (Path(directory) / "config.json").write_text(json.dumps(config, indent=2))
