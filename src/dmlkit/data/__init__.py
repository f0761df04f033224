"""Datasets (arrays + int64 labels), their loaders and their splits.

Sources: scikit-learn's digits (embedded), IDX files (MNIST, Fashion-MNIST), ``.npz``
arrays and folders of images with one sub-folder per class. :func:`load_dataset` reads
any of them from the ``data`` section of a config; :func:`split_dataset` gives the
training and held-out parts (stratified, or class-disjoint for unseen-class evaluation).
:class:`TupleDataset` holds weakly supervised pairs or triplets (no class labels).
"""

from dmlkit.data.audio import load_audio_folder
from dmlkit.data.dataset import ArrayDataset
from dmlkit.data.digits import load_digits
from dmlkit.data.idx import load_fashion_mnist, load_idx, load_idx_dir, read_idx
from dmlkit.data.image_folder import load_image_folder
from dmlkit.data.load import data_config, describe, load_dataset, split_dataset
from dmlkit.data.npz import load_npz
from dmlkit.data.splits import (
    class_split,
    limit_per_class,
    select_classes,
    stratified_indices,
    stratified_split,
)
from dmlkit.data.tuples import (
    TupleDataset,
    pairs_from_labels,
    read_tuples_csv,
    triplets_from_labels,
    write_tuples_csv,
)

__all__ = [
    "ArrayDataset",
    "load_digits",
    "load_fashion_mnist",
    "load_idx",
    "load_idx_dir",
    "read_idx",
    "load_audio_folder",
    "load_image_folder",
    "load_npz",
    "data_config",
    "describe",
    "load_dataset",
    "split_dataset",
    "class_split",
    "limit_per_class",
    "select_classes",
    "stratified_indices",
    "stratified_split",
    "TupleDataset",
    "pairs_from_labels",
    "read_tuples_csv",
    "triplets_from_labels",
    "write_tuples_csv",
]
