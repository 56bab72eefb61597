"""Input pipelines for GloRo training and certification (TensorFlow `tf.data`).

Two calls cover everything:

```python
from gloro_keras import data

train, test, info = data.load("cifar10", data_dir="~/tensorflow_datasets")
train_batches = data.make_pipeline(train, 256, training=True, seed=0)  # shuffled, augmented
test_batches = data.make_pipeline(test, 256, training=False)           # ordered, not augmented
```

`load` returns one `DataSource` per split (the split's storage and the data set's
metadata; `.dataset` is the plain unbatched `tf.data.Dataset`, `.take(n)` its first n
examples); `make_pipeline` shuffles, augments, batches and prefetches. Images are float32
in [0, 1], HWC (batched: NHWC), labels int32; no mean/std normalisation.

Modules: `sources` (`load` and the data sets it knows, `sample_path`), `folders`
(Tiny-ImageNet and ImageNet image folders), `subsets` (class subsets), `augment`
(augmentation policies and ops), `pipeline` (`make_pipeline`, `pipeline_throughput`),
`data_source` (`DataSource`, `DatasetInfo`, `DataNotFoundError`), `verify` (image files
present, complete and decodable, checked before training).
The shipped MNIST sample (`mnist_sample.npz`) lives in this folder too.
"""

from gloro_keras.data.augment import Augmentation, default_augmentation
from gloro_keras.data.data_source import DataNotFoundError, DataSource, DatasetInfo
from gloro_keras.data.pipeline import AUTOTUNE, make_pipeline, pipeline_throughput
from gloro_keras.data.sources import DATASET_NAMES, load, sample_path
from gloro_keras.data.subsets import DEFAULT_SUBSET_SEED, class_subset
from gloro_keras.data.verify import ImageFileError, check_files, decode_all

__all__ = [
    "AUTOTUNE",
    "DATASET_NAMES",
    "DEFAULT_SUBSET_SEED",
    "Augmentation",
    "DataNotFoundError",
    "DataSource",
    "DatasetInfo",
    "ImageFileError",
    "check_files",
    "decode_all",
    "class_subset",
    "default_augmentation",
    "load",
    "make_pipeline",
    "pipeline_throughput",
    "sample_path",
]
