"""The package's import graph follows its layers; a forbidden edge fails here (static, no imports run).

  layers (+ kernels) <- models <- diffusion / generation <- training <- systems <- entry points
with parallel and config_utils at the bottom, data generic (no model code), convert beside training
(weights in and out; training never needs it, systems and curation use it), and evaluators and
curation above what they run. Lazy imports inside functions count too.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE = {"config_utils", "parallel"}
LOW = BASE | {"layers", "kernels"}
MODELS = LOW | {"models"}
BELOW_TRAINING = MODELS | {"diffusion", "generation", "data"}
# group -> the groups it may import (besides itself)
ALLOWED = {
  "config_utils": set(),
  "parallel": {"config_utils"},
  "layers": BASE,
  "kernels": BASE | {"layers"},
  "models": LOW,
  "diffusion": MODELS,
  "generation": MODELS,
  "convert": MODELS | {"diffusion"},
  "data": BASE,
  # metric networks (FID Inception, CLIP) load their released weights through convert, whose own
  # imports are all below training, so this adds no cycle
  "evaluators": BELOW_TRAINING | {"convert"},
  "training": BELOW_TRAINING | {"evaluators"},
  "systems": BELOW_TRAINING | {"convert", "training", "evaluators"},
  "curation": BELOW_TRAINING | {"convert", "training", "evaluators", "systems"},
}
# may import anything; "__main__" is every package's `python -m` module (run, never imported)
ENTRY_POINTS = {"wegen_jax", "tools", "demo", "train", "sample", "generate", "eval", "chat", "__main__"}


def _group(path: Path) -> str:
  rel = path.relative_to(ROOT)
  if rel.parts[0] == "kernels":
    return "kernels"
  if rel.name == "__main__.py":
    return "__main__"
  return rel.parts[1] if len(rel.parts) > 2 else rel.stem.replace("__init__", "wegen_jax")


def _imports(path: Path):
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      yield node.lineno, node.module
    elif isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name


def _edges():
  for path in sorted([*(ROOT / "wegen_jax").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]):
    src = _group(path)
    for line, module in _imports(path):
      parts = module.split(".")
      if parts[0] == "configs" or parts[:2] == ["wegen_jax", "configs"]:
        yield path, line, src, "configs"
      elif parts[0] == "wegen_jax" and len(parts) > 1:
        yield path, line, src, parts[1]


def test_every_group_has_a_layer():
  groups = {_group(p) for p in (ROOT / "wegen_jax").rglob("*.py")}
  unplaced = groups - set(ALLOWED) - ENTRY_POINTS
  assert not unplaced, f"place these in tests/test_layering.py ALLOWED or ENTRY_POINTS: {sorted(unplaced)}"


def test_no_upward_imports():
  bad = [
    f"{path.relative_to(ROOT)}:{line}: {src} -> {dst}"
    for path, line, src, dst in _edges()
    if dst != src and src not in ENTRY_POINTS and (dst == "configs" or dst not in ALLOWED.get(src, set()))
  ]
  assert not bad, "imports against the layering (tests/test_layering.py):\n" + "\n".join(bad)


def test_the_package_never_imports_configs():
  bad = [f"{p.relative_to(ROOT)}:{line}" for p, line, _, dst in _edges() if dst == "configs"]
  assert not bad, f"configs/ files are loaded by path (config_utils.load_config), not imported: {bad}"


@pytest.mark.parametrize("src,dst", [("data", "training"), ("layers", "kernels"), ("training", "convert")])
def test_the_checker_sees_a_forbidden_edge(src, dst):
  assert dst not in ALLOWED[src]


def _module_name(path: Path) -> str:
  return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _defines_flags(tree: ast.Module) -> bool:
  """Module-level `X = flags.DEFINE_...(...)` / `config_flags.DEFINE_config_file(...)`."""
  for node in tree.body:
    value = node.value if isinstance(node, (ast.Assign, ast.Expr)) else None
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr.startswith("DEFINE"):
      return True
  return False


def test_flag_defining_modules_are_only_run_never_imported():
  """absl flags are global: two command-line modules imported into one process (a test worker,
  a notebook) collide on --config. So a module that defines flags is an entry point run with
  `python -m`; what others need from it lives in a library module."""
  sources = {
    p: ast.parse(p.read_text()) for d in ("wegen_jax", "tests", "bench", "launch") for p in (ROOT / d).rglob("*.py")
  }
  cli = {
    _module_name(p) for p, tree in sources.items() if p.is_relative_to(ROOT / "wegen_jax") and _defines_flags(tree)
  }
  assert "wegen_jax.train" in cli  # the detector sees the trainer's flags
  bad = []
  for path, tree in sources.items():
    for node in ast.walk(tree):
      names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names if n in cli]
  assert not bad, (
    "these import a module that defines absl flags (move what they need to a library module):\n" + "\n".join(bad)
  )
