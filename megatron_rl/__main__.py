"""`python -m megatron_rl ...` is the `megatron-rl` console script."""
from megatron_rl.cli import main

raise SystemExit(main())
