"""Prepared datasets: schema, synthetic benchmark, converters, splits and torch loaders."""

from vlm2rec.data.catalogue import Catalogue
from vlm2rec.data.schema import DatasetError, PreparedDataset, read_dataset, write_dataset

__all__ = ["Catalogue", "DatasetError", "PreparedDataset", "read_dataset", "write_dataset"]
