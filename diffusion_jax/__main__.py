"""`python -m diffusion_jax ...` is the `diffusion-jax` command."""

import sys

from diffusion_jax.cli import main

sys.exit(main())
