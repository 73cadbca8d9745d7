"""The kproxy benchmark (``scripts/bench``): render, sync, programming latency, pods, data plane
and balance, each measured inside network namespaces the benchmark creates and removes itself.

Pure parts (generators, statistics, table, PNG plot) are unit-tested; the runner needs root.
"""
