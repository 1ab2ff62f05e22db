"""Data sources and datasets shared by sites and server (no Flower imports)."""

from task.data.errors import BadFileError, LoadReport
from task.data.splits import DataSplits, Split

__all__ = ["BadFileError", "DataSplits", "LoadReport", "Split"]
