"""`python -m wegen_jax.convert export|import` on whole training runs: a tiny WeGen run trained a
step on a (2,2,2) mesh exports every part; each loads in PyTorch (transformers, diffusers, timm,
a restated projector and autoencoder) with the JAX run's outputs; imported back it starts
training with the same loss; the one-device run exports the same tensors; bad input is one line
and leaves nothing behind."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wegen_batches import tiny_config
from wegen_jax.convert.checkpoint_io import CheckpointError, read_state_dict
from wegen_jax.systems.runs import export_run, import_run, run_config
from wegen_jax.systems.wegen.system import WeGenSystem
from wegen_jax.systems.wegen.tokenizer import load_tokenizer
from wegen_jax.training.checkpointing import latest_parameters
from wegen_jax.training.trainer import train
from wegen_jax.training.validation import ConfigError
from _timm import import_timm

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

REPO = Path(__file__).resolve().parents[1]
PARTS = ("llm", "vision", "input_proj", "output_proj", "unet", "vae")


def run_config_for(data_dir, cache, **overrides):
  c = tiny_config(stage=2, exports=True, max_len=512)
  c.data.dir = str(data_dir)
  c.total_steps, c.ckpt_every, c.log_every = 1, 1, 1
  c.grad_accum = 1  # 4 rows: one per batch shard of a (2,2,2) mesh
  c.async_checkpoints = False
  c.compilation_cache_dir = str(cache)  # the one-device runs compile once
  c.num_devices, c.mesh = 1, dict(data=1, fsdp=1, tensor=1)
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


@pytest.fixture(scope="module", autouse=True)
def _restore_compilation_cache():
  before = jax.config.jax_compilation_cache_dir
  yield
  jax.config.update("jax_compilation_cache_dir", before)


@pytest.fixture(scope="module")
def runs(curated_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("convert_runs")
  sharded = root / "run_222"
  train(run_config_for(curated_dir, root / "xla", num_devices=8, mesh=dict(data=2, fsdp=2, tensor=2)), sharded)
  return root, sharded


@pytest.fixture(scope="module")
def hf_export(runs):
  root, run = runs
  manifest = export_run(run, root / "hf", dtype="float32")
  return root / "hf", manifest


@pytest.fixture(scope="module")
def system(runs):
  _, run = runs
  return WeGenSystem.from_run(run_config(run), run)


def _t(x):
  return torch.tensor(np.asarray(x))


def test_hf_export_loads_in_pytorch_with_the_runs_outputs(hf_export, system):
  out, manifest = hf_export
  model, rs = system.model, np.random.RandomState(0)
  assert manifest["step"] == 1 and set(manifest["parts"]) >= {"llm", "vision", "projectors", "unet", "vae"}
  for name, entry in manifest["files"].items():  # the checksums describe the files
    assert (out / name).stat().st_size == entry["bytes"], name
    assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"], name

  llama = transformers.LlamaForCausalLM.from_pretrained(out / "llm").eval()
  ids = rs.randint(0, model.cfg.llm.vocab_size, (2, 10))
  with torch.no_grad():
    want = llama(_t(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model.llm(jnp.asarray(ids))), want, atol=1e-4, rtol=1e-4)
  tok = transformers.AutoTokenizer.from_pretrained(out / "llm")
  text = "move the red square <img_00003> left</img>"
  assert tok.encode(text, add_special_tokens=False) == load_tokenizer("").encode(text)

  timm = import_timm()
  vision_cfg = json.loads((out / "vision" / "config.json").read_text())
  eva = timm.models.eva.Eva(**vision_cfg["timm_kwargs"]).eval()
  eva.load_state_dict({k: _t(v) for k, v in read_state_dict(out / "vision").items()})
  pixels = rs.randn(2, 3, model.cfg.vision.image_size, model.cfg.vision.image_size).astype(np.float32)
  with torch.no_grad():
    want = eva.forward_features(_t(pixels)).numpy()[:, 1:]  # CLS dropped, as WeGen's tower
  np.testing.assert_allclose(np.asarray(model.vision(jnp.asarray(pixels))), want, atol=1e-4, rtol=1e-4)

  # the projectors, restated as the authors' modules: Linear(bias=False) each
  proj = read_state_dict(out / "projectors")
  width, hidden = model.cfg.vision.width, model.cfg.llm.hidden_size
  inp, outp = torch.nn.Linear(width, hidden, bias=False), torch.nn.Linear(hidden, width, bias=False)
  inp.weight.data, outp.weight.data = _t(proj["input_resampler.proj.weight"]), _t(proj["output_resampler.proj.weight"])
  h = rs.randn(2, 64, hidden).astype(np.float32)
  with torch.no_grad():
    want = inp(outp(_t(h))).numpy()
  np.testing.assert_allclose(np.asarray(model.feedback(jnp.asarray(h))), want, atol=1e-4, rtol=1e-4)

  unet = diffusers.UNet2DConditionModel.from_pretrained(out / "unet").eval()
  sample = rs.randn(2, model.cfg.unet.in_channels, 8, 8).astype(np.float32)
  cond = rs.randn(2, 64, width).astype(np.float32)
  added = {"text_embeds": cond.mean(1), "time_ids": np.zeros((2, 6), np.float32)}
  t = np.array([3, 700])
  with torch.no_grad():
    want = unet(_t(sample), _t(t), _t(cond), added_cond_kwargs={k: _t(v) for k, v in added.items()}).sample.numpy()
  got = model.unet(jnp.asarray(sample), jnp.asarray(t), jnp.asarray(cond), jax.tree.map(jnp.asarray, added))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)

  # the tiny default's parameter-free autoencoder: space-to-depth, as torch's pixel_unshuffle
  vae_cfg = json.loads((out / "vae" / "config.json").read_text())
  assert vae_cfg["_class_name"] == "PatchAutoencoder"
  x = rs.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
  want = torch.nn.functional.pixel_unshuffle(_t(x), vae_cfg["patch_size"]).numpy()
  np.testing.assert_array_equal(np.asarray(model.vae.encode(jnp.asarray(x)).mode()), want)


def test_authors_layout_holds_their_names_and_loads_in_pytorch(runs, system):
  root, run = runs
  manifest = export_run(run, root / "authors", layout="authors", dtype="bfloat16")
  out, model = root / "authors", system.model
  assert sorted(manifest["parts"]) == ["detokenizer", "mllm", "vae", "vision"]
  merged = torch.load(out / "pytorch_model_merged.bin", weights_only=True)
  detok = torch.load(out / "detokenizer" / "pytorch_model.bin", weights_only=True)
  visual = torch.load(out / "visual.pt", weights_only=True)
  assert all(v.dtype == torch.bfloat16 for v in merged.values())
  assert {k.split(".")[0] for k in merged} == {"llm", "input_resampler", "output_resampler", "adapter"}
  assert all(torch.equal(merged[f"adapter.{k}"], v) for k, v in detok.items())
  assert "blocks.0.attn.qkv.bias" in visual  # eva_vision.py's fused bias, not timm's q_bias/v_bias
  # their LLM is an HF Llama under llm.*
  from wegen_jax.convert.hf_llm import hf_config

  llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config(model.cfg.llm))).eval()
  missing, unexpected = llama.load_state_dict(
    {k[4:]: v.float() for k, v in merged.items() if k.startswith("llm.")}, strict=False
  )
  assert not unexpected and all("rotary" in k for k in missing)
  ids = np.random.RandomState(1).randint(0, model.cfg.llm.vocab_size, (1, 8))
  with torch.no_grad():
    want = llama(_t(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model.llm(jnp.asarray(ids))), want, atol=0.1, rtol=0.05)  # bf16 weights

  # released files come without our config: import asks for it, then reads them
  released = root / "released"
  shutil.copytree(out, released, ignore=shutil.ignore_patterns("run_config.json", "MANIFEST.json", "README.md"))
  with pytest.raises(CheckpointError, match="pass --config"):
    import_run(released, root / "from_authors", system="wegen")
  assert not (root / "from_authors").exists()
  # and they import back: every parameter within bf16 rounding of the run's
  run_back = import_run(released, root / "from_authors", system="wegen", config=run_config(run))
  assert run_back["parts"] == ["mllm", "vision", "vae"]
  _, ours = latest_parameters(run / "checkpoints")
  _, back = latest_parameters(root / "from_authors" / "checkpoints")
  assert set(back) == set(ours)
  for k in ours:
    np.testing.assert_allclose(np.asarray(back[k], np.float32), ours[k], rtol=1e-2, atol=1e-2, err_msg=k)


def test_import_back_trains_from_the_same_loss(runs, hf_export, curated_dir):
  root, run = runs
  imported = root / "imported"
  manifest = import_run(hf_export[0], imported, system="wegen")
  assert manifest["step"] == 0 and (imported / "IMPORTED.json").is_file()
  _, ours = latest_parameters(run / "checkpoints")
  _, back = latest_parameters(imported / "checkpoints")
  assert set(back) == set(ours)
  assert all(np.array_equal(back[k], ours[k]) for k in ours)  # float32 export: exact
  loaded = WeGenSystem.from_run(run_config(imported), imported)  # what eval and chat load
  assert loaded.step == 0 and loaded.model.cfg == WeGenSystem.from_run(run_config(run), run).model.cfg

  losses = {}
  for name, source in (("from_run", run), ("from_import", imported)):
    c = run_config_for(curated_dir, root / "xla", init_from=str(source), init_components=PARTS)
    losses[name] = train(c, root / name).losses[1]
  assert losses["from_run"] == pytest.approx(losses["from_import"], rel=1e-6, abs=1e-6)
  with pytest.raises(ConfigError, match="imported weights"):  # no optimizer state to resume
    train(run_config_for(curated_dir, root / "xla", total_steps=2), imported)


def test_one_device_run_exports_the_same_tensors(runs, hf_export, curated_dir, monkeypatch):
  root, _ = runs
  single = root / "run_1"
  train(run_config_for(curated_dir, root / "xla"), single)
  export_run(single, root / "hf_1", dtype="float32")
  sharded_out, manifest = hf_export
  one = json.loads((root / "hf_1" / "MANIFEST.json").read_text())
  assert sorted(one["files"]) == sorted(manifest["files"])
  for part in ("llm", "vision", "projectors", "unet"):
    a, b = read_state_dict(sharded_out / part), read_state_dict(root / "hf_1" / part)
    assert set(a) == set(b)
    for k in a:
      np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-4, atol=1e-5, err_msg=f"{part}: {k}")

  # parts over the shard size are written as HF shards plus an index, which transformers reads
  monkeypatch.setattr("wegen_jax.convert.checkpoint_io.MAX_SHARD_BYTES", 100_000)
  export_run(single, root / "hf_shards", dtype="float32")
  index = json.loads((root / "hf_shards" / "llm" / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 1
  ids = torch.tensor([[1, 5, 9, 200]])
  with torch.no_grad():
    sharded = transformers.LlamaForCausalLM.from_pretrained(root / "hf_shards" / "llm").eval()(ids).logits
    whole = transformers.LlamaForCausalLM.from_pretrained(root / "hf_1" / "llm").eval()(ids).logits
  torch.testing.assert_close(sharded, whole, rtol=0, atol=0)


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "wegen_jax.convert", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )


def test_bad_input_is_one_line_and_leaves_nothing(runs, hf_export, tmp_path, monkeypatch):
  root, run = runs
  r = _cli("export", "--run", str(run), "--step", "99", "--out", str(tmp_path / "x"))
  assert r.returncode == 2 and "has no step 99" in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
  assert not (tmp_path / "x").exists()
  r = _cli("import", "--from", str(hf_export[0]), "--system", "lm", "--out", str(tmp_path / "y"))
  assert r.returncode == 2 and "config is of system 'wegen'" in r.stderr.strip().splitlines()[-1]
  with pytest.raises(CheckpointError, match="not a training run"):
    export_run(tmp_path, tmp_path / "z")
  with pytest.raises(CheckpointError, match="--layout"):
    export_run(run, tmp_path / "z", layout="onnx")
  with pytest.raises(CheckpointError, match="already exists"):
    export_run(run, hf_export[0])
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(CheckpointError, match="not writable"):
    export_run(run, blocker / "out")

  # a failure halfway (here: the UNet's writer) leaves neither OUT nor a partial folder
  def broken(*a, **k):
    raise OSError("disk full")

  monkeypatch.setattr("wegen_jax.systems.wegen.export.save_diffusers_unet", broken)
  with pytest.raises(OSError, match="disk full"):
    export_run(run, tmp_path / "half")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_docs_tables_are_the_codes():
  from wegen_jax.configs.wegen import get_config

  config = get_config("size=7b,stage=2")
  doc = (REPO / "docs" / "CONVERT_TABLES.md").read_text()
  assert doc.split("---\n", 1)[1].lstrip("\n") == WeGenSystem.mapping_tables(config), (
    "docs/CONVERT_TABLES.md is stale: regenerate it as it says"
  )


def test_lm_run_exports_to_an_hf_folder_and_back(tmp_path):
  import lm_runs

  c = lm_runs.config(total_steps=2, ckpt_every=2, num_devices=1, mesh=dict(data=1, fsdp=1, tensor=1))
  train(c, tmp_path / "run")
  manifest = export_run(tmp_path / "run", tmp_path / "hf")
  assert manifest["parts"] == ["llm"] and manifest["step"] == 2
  llama = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
  model = run_system(tmp_path / "run").model
  ids = np.random.RandomState(0).randint(0, c.model.vocab_size, (2, 12))
  with torch.no_grad():
    want = llama(_t(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), want, atol=1e-4, rtol=1e-4)
  import_run(tmp_path / "hf", tmp_path / "back", system="lm")
  _, ours = latest_parameters(tmp_path / "run" / "checkpoints")
  _, back = latest_parameters(tmp_path / "back" / "checkpoints")
  assert set(back) == set(ours) and all(np.array_equal(back[k], ours[k]) for k in ours)
  with pytest.raises(CheckpointError, match="exports hf"):
    export_run(tmp_path / "run", tmp_path / "a", layout="authors")


def run_system(run):
  from wegen_jax.systems.base import get_system

  config = run_config(run)
  return get_system(config).from_run(config, run)
