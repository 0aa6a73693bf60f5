"""The installed distribution's version (``async_batchstate.__version__``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("async-batchstate")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
