"""taskbridge: a sync daemon that federates task platforms. See DESIGN.md for the map."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("taskbridge")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
