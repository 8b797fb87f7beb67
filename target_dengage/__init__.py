"""target-dengage: a Singer target that upserts contacts into D·engage master_contact."""

#: Kept here (hatchling reads it for the package metadata): reading it back through
#: importlib.metadata would cost every run about 50 ms of start-up.
__version__ = "0.1.0"
