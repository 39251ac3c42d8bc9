"""compress: make fine-tuned transformer models smaller and faster, measured.

The Python API (compress/api.py), imported on first use so `import compress` stays light:
`compress.run(recipe, out=...) -> RunResult`, `compress.benchmark(spec, out=...) -> BenchResult`,
`compress.load(package) -> Predictor`."""

from compress.version import __version__

_API = ("run", "benchmark", "load", "RunResult", "StageResult", "BenchResult")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from compress import api

        return getattr(api, name)
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
