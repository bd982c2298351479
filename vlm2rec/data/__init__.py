"""Prepared datasets: schema, synthetic benchmark, converters, splits and torch loaders."""

from vlm2rec.data.catalogue import Catalogue
from vlm2rec.data.schema import DatasetError, PreparedDataset, read_dataset, write_dataset

__all__ = ["Catalogue", "DatasetError", "PreparedDataset", "read_dataset", "write_dataset"]

# Synthetic benchmark and splits (numpy only). The torch loaders stay in vlm2rec.data.loader so
# that importing the data package (CLI prepare, Ray driver) does not import torch.
from vlm2rec.data.splits import EvalExamples, Splits, TrainExamples, make_splits, user_sequences
from vlm2rec.data.synthetic import build_synthetic, ensure_dataset, prepare_synthetic

__all__ += [
    "EvalExamples",
    "Splits",
    "TrainExamples",
    "build_synthetic",
    "ensure_dataset",
    "make_splits",
    "prepare_synthetic",
    "user_sequences",
]
