"""Performance tools used by the benchmarks and the perf tests: analytic FLOP counts (``flops``)
and random-weight models at the real architectures' sizes (``presets``)."""
