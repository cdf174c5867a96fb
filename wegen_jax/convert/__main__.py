import sys

from wegen_jax.convert.cli import main

sys.exit(main())
