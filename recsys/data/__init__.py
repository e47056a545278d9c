"""Reading, validating, id-mapping and splitting interaction data."""

from recsys.data.dataset import DataConfig, SplitDataset, build_split_dataset, load_dataset
from recsys.data.idmap import IdMap
from recsys.data.readers import RawData
from recsys.data.splits import TEST, TRAIN, VALID

__all__ = [
    "DataConfig",
    "SplitDataset",
    "build_split_dataset",
    "load_dataset",
    "IdMap",
    "RawData",
    "TRAIN",
    "VALID",
    "TEST",
]
