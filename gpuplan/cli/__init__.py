"""The command-line interface (typer + rich).

A gpuplan command is a short process that allocates mostly while it imports typer, rich and pydantic and builds
its model classes: with the collector's default thresholds (700, 10, 10) the cyclic garbage collector runs
thousands of times there for almost nothing to free. Raising them made a whole `gpuplan estimate` about 6% faster
(measured on this project's 2-core machine, 15 paired runs each way; docs/performance.md has the figures of the
whole command). Collections still run, so a long-lived `gpuplan serve` stays bounded.
"""

import gc

# (generation 0 allocations, generation 0 collections per generation 1, generation 1 per generation 2)
CLI_GC_THRESHOLDS = (100_000, 50, 1_000)

gc.set_threshold(*CLI_GC_THRESHOLDS)
