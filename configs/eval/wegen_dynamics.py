"""WeGen on the held-out video-dynamics pairs of its run's data (the demo's figures).

  python -m wegen_jax.eval --config configs/eval/wegen_dynamics.py:size=tiny,stage=2 \
    --workdir RUN --config.data.dir=DATA_DIR

arg: size and stage as configs/wegen.py (the run's own). Stage 1 (the detokenizer alone) is
scored on reconstructions: held-out frames redrawn from their own features (frame_mae /255);
stages 2 and 3 also on dynamics: the target frame generated from the source frame and the
instruction (unchanged_mae, position_error, object_found, frame_mae, moved_position_error,
moved_object_found, each beside the copy-the-source baseline). Every stage also reports its training losses on held-out batches.
Add the same `evals` to a training config to run them during training.
"""

from wegen_jax.config_utils import load_config, parse_arg


def get_config(arg=None):
  args = parse_arg(arg, size="tiny", stage=2)
  c = load_config(f"configs/wegen.py:size={args['size']},stage={args['stage']}")
  # the training losses (stage 1: diffusion; 2/3: ce, mse, cos, diffusion) on held-out batches
  c.evals = dict(
    validation_loss=dict(type="validation_loss", num_batches=8),
    reconstruction=dict(type="reconstruction", num_images=32),
  )
  if int(args["stage"]) > 1:
    c.evals.dynamics = dict(type="dynamics", num_samples=32)
  return c
