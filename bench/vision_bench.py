"""ViT forward throughput: wegen_jax vs PyTorch (timm `Eva`, transformers `CLIPModel`) on this CPU, in one run.

  .venv/bin/python bench/vision_bench.py [--width 384 --depth 6 --heads 6 --image 224 --batch 8]

Both sides run the same weights in float32: the EVA tower in WeGen's form (post-norm, q/v
bias, patch tokens out) and the CLIP image features (pre-norm, quick_gelu, projection).
Prints a markdown table (images/s of each and the ratio) and the achieved FLOP/s of the JAX
forward as a fraction of the matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from _timm import import_timm  # noqa: E402  (timm with the torchvision stand-in, see tests/)
from bench.common import compare, matmul_peak_flops, row  # noqa: E402
from wegen_jax import convert  # noqa: E402


def forward_flops(width: int, depth: int, mlp: int, tokens: int) -> float:
  """Per image: 2 x (qkvo + mlp matmul params) x tokens, plus QK^T and PV (4 x N^2 x D) per layer."""
  per_layer = 2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * tokens * width
  return depth * per_layer


def jax_runner(model, pixels, fn):
  graphdef, state = nnx.split(model)
  step = jax.jit(lambda s, x: fn(nnx.merge(graphdef, s), x))
  x = jnp.asarray(pixels.numpy())
  return lambda: step(state, x).block_until_ready()


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--width", type=int, default=384)
  p.add_argument("--depth", type=int, default=6)
  p.add_argument("--heads", type=int, default=6)
  p.add_argument("--mlp-ratio", type=float, default=4.0)
  p.add_argument("--image", type=int, default=224)
  p.add_argument("--patch", type=int, default=14)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--repeats", type=int, default=7)
  args = p.parse_args()
  torch.manual_seed(0)
  torch.set_grad_enabled(False)
  mlp = int(args.width * args.mlp_ratio)
  pixels = torch.randn(args.batch, 3, args.image, args.image)
  tokens = (args.image // args.patch) ** 2 + 1
  flops = forward_flops(args.width, args.depth, mlp, tokens) * args.batch
  results = []

  timm = import_timm()
  eva_kwargs = dict(
    img_size=args.image,
    patch_size=args.patch,
    embed_dim=args.width,
    depth=args.depth,
    num_heads=args.heads,
    mlp_ratio=args.mlp_ratio,
    use_post_norm=True,
    num_classes=0,
    global_pool="",
    use_post_transformer_norm=False,
  )
  eva_ref = timm.models.eva.Eva(**eva_kwargs).eval()
  eva = convert.load_timm_eva(eva_ref.state_dict(), eva_kwargs)
  t_jax, t_torch = compare(
    jax_runner(eva, pixels, lambda m, x: m(x)), lambda: eva_ref.forward_features(pixels), repeats=args.repeats
  )
  results.append(("EVA tower (timm Eva)", t_jax, t_torch))

  cfg = transformers.CLIPConfig(
    text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2),
    vision_config=dict(
      image_size=args.image,
      patch_size=args.patch,
      hidden_size=args.width,
      intermediate_size=mlp,
      num_hidden_layers=args.depth,
      num_attention_heads=args.heads,
    ),
    projection_dim=256,
  )
  clip_ref = transformers.CLIPModel(cfg).eval()
  with tempfile.TemporaryDirectory() as d:
    clip_ref.save_pretrained(d)
    clip = convert.load_hf_clip(d)
  t_jax_c, t_torch_c = compare(
    jax_runner(clip, pixels, lambda m, x: m.get_image_features(x)),
    lambda: clip_ref.get_image_features(pixel_values=pixels),
    repeats=args.repeats,
  )
  results.append(("CLIP image features (transformers)", t_jax_c, t_torch_c))

  peak = matmul_peak_flops()
  print(
    f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
    f"({torch.get_num_threads()} threads); ViT width {args.width}, depth {args.depth}, heads {args.heads}, "
    f"mlp {mlp}, {args.image}px / patch {args.patch} ({tokens} tokens), batch {args.batch}, float32"
  )
  print("| forward | wegen_jax | PyTorch | JAX / PyTorch |")
  print("|---|---|---|---|")
  for name, tj, tt in results:
    print(row(name, args.batch / tj, args.batch / tt, "img/s"))
  print(
    f"JAX EVA forward: {flops / results[0][1] / 1e9:,.1f} GFLOP/s = "
    f"{flops / results[0][1] / peak:.0%} of the measured XLA matmul peak ({peak / 1e9:,.1f} GFLOP/s)"
  )


if __name__ == "__main__":
  main()
