"""Data sets -> train/val/test splits of float32 [0, 1] (N, C, H, W) tensors.

>>> splits = load_splits(DataSpec("digits", stratify=True))
>>> splits.train.images.shape[1:]
torch.Size([1, 8, 8])

Named sets live in the data dir (``--data-dir``, else ``$ROBUSTLAB_DATA_DIR``, else
``~/.cache/robustlab/data``); ``list_datasets()`` says which are there. Any path to a folder of
class sub-folders, an ``.npz`` or an ``images.npy`` folder works too (see ``loader``).
Splits are deterministic in ``DataSpec.seed``; the data layer never normalises.
"""

from robustlab.data.arrays import RawData
from robustlab.data.download import DownloadError, RemoteFile
from robustlab.data.loader import (
    SplitPlan,
    clear_caches,
    dataset_info,
    load_source,
    load_splits,
    plan_splits,
)
from robustlab.data.registry import (
    DATASETS,
    ENV_DATA_DIR,
    DatasetInfo,
    fetch_dataset,
    get_dataset,
    list_datasets,
    resolve_data_dir,
)
from robustlab.data.spec import DataSpec, DataSplits, ImageSet
from robustlab.data.split import select_classes, split_indices, subsample
from robustlab.data.transforms import rgb_to_grey

__all__ = [
    "DATASETS",
    "ENV_DATA_DIR",
    "DataSpec",
    "DataSplits",
    "DatasetInfo",
    "DownloadError",
    "ImageSet",
    "RawData",
    "RemoteFile",
    "SplitPlan",
    "clear_caches",
    "dataset_info",
    "fetch_dataset",
    "get_dataset",
    "list_datasets",
    "load_source",
    "load_splits",
    "plan_splits",
    "resolve_data_dir",
    "rgb_to_grey",
    "select_classes",
    "split_indices",
    "subsample",
]
