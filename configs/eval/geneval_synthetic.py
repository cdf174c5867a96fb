"""GenEval-style compositional checks on the synthetic world (our exact benchmark: colour, two
objects, count, position; prompts drawn from the renderer, scored from its ground truth).

  python -m wegen_jax.eval --config configs/eval/geneval_synthetic.py:size=tiny,stage=3 --workdir RUN

arg: size and stage as configs/wegen.py (the run's own; text-to-image needs stage 2 or 3),
num_per_task (default 32). Reports each task's accuracy and `overall` (their mean); the rendered
ground truth scores 1.0 and noise 0 (tests/test_eval_geneval.py).
"""

from wegen_jax.config_utils import load_config, parse_arg


def get_config(arg=None):
  args = parse_arg(arg, size="tiny", stage=3, num_per_task=32)
  c = load_config(f"configs/wegen.py:size={args['size']},stage={args['stage']}")
  size = c.data.vae_image_size  # score at the size the run draws (the renderer's frames)
  c.evals = dict(geneval=dict(type="geneval_synthetic", num_per_task=args["num_per_task"], image_size=size))
  return c
