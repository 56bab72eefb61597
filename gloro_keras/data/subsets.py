"""Class subsets (the paper's ImageNet subsets, Table 7), for every data source.

`load(..., subset_classes=100 * k, subset_seed=2023)` shuffles the class ids with
`np.random.RandomState(subset_seed).permutation(num_classes)` (num_classes = 1000 for
ImageNet), keeps the first `subset_classes` of them and relabels them
`0..subset_classes-1` **in the shuffled order**: new label `i` is original class
`info.class_ids[i]`.
"""

import dataclasses
from typing import Tuple

import numpy as np
import tensorflow as tf

from gloro_keras.data.data_source import DataSource

DEFAULT_SUBSET_SEED = 2023


def class_subset(num_keep: int, seed: int = DEFAULT_SUBSET_SEED, total: int = 1000) -> np.ndarray:
    """Original class ids kept by a class subset, in their new-label order.

    `np.random.RandomState(seed).permutation(total)[:num_keep]`: new label `i` is the
    original class `class_subset(...)[i]`. The paper uses `total=1000` (ImageNet),
    `num_keep = 100 * k` and seeds 2023 and 2022.

    Args:
        num_keep: number of classes kept.
        seed: permutation seed.
        total: number of classes of the full data set.

    Example:

    ```python
    keep = class_subset(100, seed=2023)   # 100 ImageNet class ids; new label i is keep[i]
    ```
    """
    if not 1 <= num_keep <= total:
        raise ValueError(f"subset of {num_keep} classes out of {total} is not possible")
    return np.random.RandomState(seed).permutation(total)[:num_keep].astype(np.int64)


def relabel_table(keep: np.ndarray, total: int) -> np.ndarray:
    """int32 `(total,)`: the new label of each original class, -1 for dropped classes."""
    table = np.full(total, -1, np.int32)
    table[np.asarray(keep)] = np.arange(len(keep), dtype=np.int32)
    return table


def subset_sources(train: DataSource, test: DataSource, num_keep: int,
                   seed: int = DEFAULT_SUBSET_SEED) -> Tuple[DataSource, DataSource]:
    """Keep `num_keep` classes of an in-memory or file source, relabelled (see `class_subset`).

    tfds streams are filtered by `load` itself, on the fly, with the same `relabel_table`.
    """
    info = train.info
    keep = class_subset(num_keep, seed, info.num_classes)
    table = relabel_table(keep, info.num_classes)

    def select(src: DataSource) -> dict:
        new = table[src.labels]
        rows = np.flatnonzero(new >= 0)
        kw = dict(labels=new[rows].astype(np.int32), size=int(len(rows)))
        if src.kind == "array":
            kw["images"] = tf.gather(src.images, rows)
        else:
            kw["paths"] = src.paths[rows]
        return kw

    train_kw, test_kw = select(train), select(test)
    names = tuple(info.class_names[i] for i in keep) if info.class_names else None
    info = dataclasses.replace(info, num_classes=len(keep), train_size=train_kw["size"],
                               test_size=test_kw["size"], class_names=names,
                               class_ids=tuple(int(i) for i in keep))
    return (dataclasses.replace(train, info=info, **train_kw),
            dataclasses.replace(test, info=info, **test_kw))
