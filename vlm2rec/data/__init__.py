"""Prepared datasets: schema, synthetic benchmark, converters, splits and torch loaders."""

from vlm2rec.data.catalogue import Catalogue
from vlm2rec.data.schema import DatasetError, PreparedDataset, read_dataset, write_dataset

__all__ = ["Catalogue", "DatasetError", "PreparedDataset", "read_dataset", "write_dataset"]

# Splits and the synthetic generator (numpy only); the torch loaders stay in vlm2rec.data.loader
# and ensure_dataset (which scores the generator's oracles with torch) in vlm2rec.data.prepare, so
# that importing the data package does not import torch.
from vlm2rec.data.splits import EvalExamples, Splits, TrainExamples, make_splits, user_sequences
from vlm2rec.data.synthetic import build_synthetic

__all__ += [
    "EvalExamples",
    "Splits",
    "TrainExamples",
    "build_synthetic",
    "make_splits",
    "user_sequences",
]
