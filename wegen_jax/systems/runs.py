"""Whole training runs <-> PyTorch folders (`python -m wegen_jax.convert export|import`).

export: RUN/config.json names the system; its System builds the model abstractly, the newest
(or the given) checkpoint fills it on this host whatever mesh trained it, and the system's
`export_pytorch` writes the parts (its tables live in its package). import: the system's
`import_pytorch` fills a model from released or exported files, written as a run directory with
every parameter at step 0 (RUN/checkpoints/0, RUN/config.json, RUN/IMPORTED.json) that
`--config.init_from`, `wegen_jax.eval --workdir` and the chat entry point read. It holds no
optimizer state, so the trainer refuses it as its own --workdir (start a run from it instead).

Both write into a temporary folder beside OUT and rename it at the end: a failure leaves nothing
at OUT. Every output gets MANIFEST.json: sha256 and size of each file, the source and step.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import ml_collections
import numpy as np

from wegen_jax.config_utils import load_config
from wegen_jax.convert.checkpoint_io import CheckpointError
from wegen_jax.convert.cli import command
from wegen_jax.systems.base import get_system
from wegen_jax.training.checkpointing import IMPORTED_FILE, Checkpointer, file_sha256

MANIFEST = "MANIFEST.json"
RUN_CONFIG = "run_config.json"  # the exported run's config: what import builds the model from
DTYPES = ("float32", "bfloat16")


def run_config(run_dir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a training run was trained with (RUN/config.json, written by the trainer)."""
  run_dir = Path(run_dir)
  path = run_dir / "config.json"
  if not path.is_file():
    raise CheckpointError(f"{run_dir} is not a training run: it has no config.json (pass the trainer's --workdir)")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path} is not valid JSON ({e}); it is written by the trainer, do not edit it") from None


def parse_dtype(name: str | None):
  """None (keep each tensor's dtype) or one of DTYPES as a numpy dtype."""
  if name is None:
    return None
  if name not in DTYPES:
    raise CheckpointError(f"--dtype {name!r}: choose one of {', '.join(DTYPES)}")
  import ml_dtypes

  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


@contextlib.contextmanager
def staged_output(out: str | os.PathLike) -> Iterator[Path]:
  """A fresh temporary folder beside `out`, renamed to `out` when the block succeeds and
  removed when it fails. `out` must not exist yet (nothing is overwritten)."""
  out = Path(out).absolute()
  if out.exists():
    raise CheckpointError(f"{out} already exists: choose a new output path (nothing is overwritten)")
  parent = out.parent
  try:
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
  except OSError as e:
    raise CheckpointError(f"cannot write {out}: {parent} is not writable ({e.strerror})") from None
  try:
    yield tmp
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def write_manifest(directory: Path, **info) -> dict:
  """MANIFEST.json: what was written (sha256 and bytes per file) and from what."""
  files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
  manifest = {
    **info,
    "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "files": {str(p.relative_to(directory)): {"sha256": file_sha256(p), "bytes": p.stat().st_size} for p in files},
  }
  (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
  return manifest


def _system_of(config):
  try:
    return get_system(config)
  except (ValueError, ModuleNotFoundError) as e:
    raise CheckpointError(str(e)) from None


def export_run(
  run_dir: str | os.PathLike, out: str | os.PathLike, *, step: int | None = None, layout: str = "hf", dtype=None
) -> dict:
  """Writes every component of a training run's checkpoint as PyTorch files; returns the manifest."""
  run_dir = Path(run_dir).absolute()
  config = run_config(run_dir)
  system_cls = _system_of(config)
  if layout not in system_cls.export_layouts:
    raise CheckpointError(
      f"--layout {layout!r}: system {config.task!r} exports {', '.join(system_cls.export_layouts) or 'nothing'}"
    )
  system = _from_run(system_cls, config, run_dir, step)
  with staged_output(out) as tmp:
    parts = system.export_pytorch(tmp, layout=layout, dtype=parse_dtype(dtype))
    (tmp / RUN_CONFIG).write_text(json.dumps(config.to_dict(), indent=2, default=str))
    manifest = write_manifest(
      tmp, system=config.task, layout=layout, dtype=dtype or "as trained", source=str(run_dir), step=system.step,
      parts=parts,
    )  # fmt: skip
  return manifest


def _from_run(system_cls, config, run_dir: Path, step: int | None):
  try:
    return system_cls.from_run(config, run_dir, step=step)
  except FileNotFoundError as e:
    raise CheckpointError(str(e)) from None
  except (KeyError, ValueError) as e:  # a parameter the config builds is not in the checkpoint
    raise CheckpointError(f"{run_dir}: its checkpoint does not match its config.json ({e})") from None


def import_run(
  src: str | os.PathLike, out: str | os.PathLike, *, system: str, config: ml_collections.ConfigDict | None = None
) -> dict:
  """A run directory at `out` holding the weights of `src` (released or exported files)."""
  src = Path(src).absolute()
  if not src.exists():
    raise CheckpointError(f"--from {src} does not exist")
  if config is None:
    stored = src / RUN_CONFIG  # written by export
    if not stored.is_file():
      raise CheckpointError(
        f"{src} has no {RUN_CONFIG} (it was not written by `export`): pass --config with the config "
        f"these weights belong to, e.g. --config configs/{system}.py:size=7b,stage=2"
      )
    config = ml_collections.ConfigDict(json.loads(stored.read_text()))
  if config.get("task") != system:
    raise CheckpointError(f"--system {system} but the config is of system {config.get('task')!r}")
  system_cls = _system_of(config)
  model, parts = system_cls.import_pytorch(config, src)
  with staged_output(out) as tmp:
    save_weights_run(model, config, tmp)
    info = {"system": system, "source": str(src), "parts": parts}
    (tmp / IMPORTED_FILE).write_text(json.dumps(info, indent=2))
    manifest = write_manifest(tmp, **info, step=0)
  return manifest


def save_weights_run(model, config, run_dir: Path) -> None:
  """RUN/checkpoints/0 with every parameter of `model` (no optimizer state) and RUN/config.json:
  what load_run_parameters reads (init_from, eval, chat)."""
  from flax import nnx

  params = nnx.state(model, nnx.Param)
  abstract = [p for p, v in nnx.to_flat_state(params) if not hasattr(v.get_value(), "__array__")]
  if abstract:
    names = [".".join(map(str, p)) for p in abstract[:5]]
    raise CheckpointError(f"{len(abstract)} parameter(s) got no weights from the source files, e.g. {names}")
  ckpt = Checkpointer(run_dir / "checkpoints", keep=1, async_save=False)
  ckpt.save(0, {"params": nnx.to_pure_dict(params), "frozen": {}}, config=config.to_dict())
  ckpt.close()
  (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))


# The CLI modes (`python -m wegen_jax.convert export|import`; convert/__main__.py imports this module).
def _export_args(p):
  p.add_argument("--run", required=True, help="training run directory (the trainer's --workdir)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
  p.add_argument("--out", required=True, help="output directory (must not exist; written atomically)")
  p.add_argument("--layout", default="hf", help="hf (transformers/diffusers/timm folders) or authors (their files)")
  p.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: as trained)")


@command("export", "a training run's checkpoint -> every component as PyTorch files (docs/CONVERT.md)", _export_args)
def _export(args):
  manifest = export_run(args.run, args.out, step=args.step, layout=args.layout, dtype=args.dtype)
  print(f"wrote {args.out}: {', '.join(manifest['parts'])} (step {manifest['step']}, {len(manifest['files'])} files)")


def _import_args(p):
  p.add_argument("--from", dest="src", required=True, help="an export's folder or the authors' released files")
  p.add_argument("--system", required=True, help="the system the weights belong to (wegen, ...)")
  p.add_argument("--out", required=True, help="run directory to create (must not exist)")
  p.add_argument(
    "--config", default=None, help="config file[:arg] of the weights (default: the export's run_config.json)"
  )


@command(
  "import", "PyTorch files -> a run directory that init_from, eval and chat read (docs/CONVERT.md)", _import_args
)
def _import(args):
  config = None
  if args.config:
    try:
      config = load_config(args.config)
    except FileNotFoundError as e:
      raise CheckpointError(str(e)) from None
  manifest = import_run(args.src, args.out, system=args.system, config=config)
  print(f"wrote run {args.out}: {', '.join(manifest['parts'])} at step 0")


@command(
  "tables",
  "print a system's conversion tables as Markdown (docs/CONVERT_TABLES.md is this for WeGen-7B)",
  lambda p: p.add_argument("--config", required=True, help="config file[:arg], e.g. configs/wegen.py:size=7b"),
)
def _tables(args):
  try:
    config = load_config(args.config)
  except FileNotFoundError as e:
    raise CheckpointError(str(e)) from None
  print(_system_of(config).mapping_tables(config), end="")
