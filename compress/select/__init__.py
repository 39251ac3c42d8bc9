"""`select:`: choose the fastest artifact of a run within a metric budget (spec.py: the recipe
block; pareto.py: the choice as a pure function; candidates.py: the run's artifacts and their
latencies on the block's target and shape)."""
