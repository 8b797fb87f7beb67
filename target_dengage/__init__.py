"""target-dengage: a Singer target that upserts contacts into D·engage master_contact."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("target-dengage")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
