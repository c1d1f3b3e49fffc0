"""Named benchmarks: the registry (`registry.REGISTRY`, `registry.SUITES`), one reader per official layout
(`readers`), the official protocols (`protocols`) and `runner.run_benchmark`. See `eval/README.md`."""

from .registry import REGISTRY, SUITES, Benchmark, BenchmarkError, BenchmarkNotFound, expand, locate

__all__ = ["REGISTRY", "SUITES", "Benchmark", "BenchmarkError", "BenchmarkNotFound", "expand", "locate"]
