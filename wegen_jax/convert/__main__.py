import sys

import wegen_jax.systems.runs  # noqa: F401  (registers the run-level modes: export, import)
from wegen_jax.convert.cli import main

sys.exit(main())
