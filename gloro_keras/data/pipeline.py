"""`make_pipeline`: shuffle, augment, batch and prefetch for training or evaluation.

Every pipeline yields `(image, label)` batches: `image` float32 NHWC in [0, 1], `label`
int32. A `DataSource` from `load` is read from its storage (uint8 arrays, file paths or a
tfds stream): shuffling moves indices or paths rather than float images, crops and flips
run on whole uint8 batches, and ImageNet crops are decoded with `decode_and_crop_jpeg`.
Any `tf.data.Dataset` of `(image, label)` pairs (e.g. `source.dataset` after a user's own
`.map`) goes through a generic path with the same semantics.
"""

import dataclasses
import time
from typing import Optional, Union

import tensorflow as tf

from gloro_keras.data import augment as augment_lib
from gloro_keras.data import images
from gloro_keras.data.augment import Augmentation, default_augmentation
from gloro_keras.data.data_source import DataSource, DatasetInfo

AUTOTUNE = tf.data.AUTOTUNE

_GENERIC_SHUFFLE_BUFFER = 10_000
_ENCODED_SHUFFLE_BUFFER = 5_000
_DECODED_SHUFFLE_BUFFER = 50_000


def make_pipeline(
    data: Union[DataSource, tf.data.Dataset],
    batch_size: int,
    training: bool,
    augment: Union[bool, Augmentation] = True,
    seed: Optional[int] = None,
    shuffle_buffer: Optional[int] = None,
    drop_remainder: Optional[bool] = None,
    info: Optional[DatasetInfo] = None,
) -> tf.data.Dataset:
    """Batch a data set for training or evaluation.

    Training (`training=True`): shuffle (reshuffled every epoch), random augmentation
    (`augment=True` uses the data set's policy, `False` disables it, an `Augmentation`
    overrides it), batch, prefetch. Evaluation: keep the order, no random augmentation
    (ImageNet images still get resize-256/centre-crop-224), batch, prefetch.

    Args:
        data: a `DataSource` from `load` (or its `take(n)`), or any unbatched
            `tf.data.Dataset` of `(image, int label)` pairs.
        batch_size: examples per batch.
        training: training or evaluation pipeline.
        augment: see above; ignored when `training` is false.
        seed: makes shuffling and augmentation reproducible (each epoch still differs).
            `None`: nondeterministic.
        shuffle_buffer: defaults to the whole data set for in-memory and file sources
            (only indices or paths are shuffled), 50 000 decoded images for tfds
            MNIST/CIFAR, 5 000 encoded images for tfds ImageNet, and 10 000 for a
            `tf.data.Dataset`.
        drop_remainder: defaults to `training`.
        info: for a `tf.data.Dataset` only: the `DatasetInfo` whose augmentation policy
            applies (otherwise it is inferred from the image shape). A `DataSource`
            carries its own.

    Returns:
        A batched, prefetched dataset of `(float32 NHWC in [0, 1], int32 labels)`.

    Example:

    ```python
    train, test, info = load("quickstart")
    train_batches = make_pipeline(train, 256, training=True, seed=0)  # shuffled, augmented
    test_batches = make_pipeline(test, 256, training=False)           # ordered
    ```
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    if not isinstance(data, (DataSource, tf.data.Dataset)):
        raise TypeError("make_pipeline expects a DataSource (from `load`) or a tf.data.Dataset. "
                        f"Received: data of type {type(data).__name__}")
    drop = training if drop_remainder is None else bool(drop_remainder)
    if isinstance(augment, Augmentation):
        policy, wanted = augment, True
    elif isinstance(data, DataSource):
        policy, wanted = data.augmentation, bool(augment)
    elif info is not None:
        policy, wanted = info.augmentation, bool(augment)
    else:
        policy, wanted = default_augmentation("", tuple(data.element_spec[0].shape)), bool(augment)
    if isinstance(data, DataSource):
        variable = data.decoded_shape is None
    else:
        variable = not data.element_spec[0].shape.is_fully_defined() or policy.kind == "imagenet"
    do_aug = wanted and training and policy.kind != "none"
    if variable and policy.kind != "imagenet":
        policy, do_aug = dataclasses.replace(policy, kind="imagenet"), False
    batching = _Batching(policy, do_aug, deterministic=(seed is not None or not training),
                         seed=None if seed is None else seed + 1)
    if isinstance(data, DataSource):
        return batching.from_source(data, batch_size, training, seed, shuffle_buffer, drop)
    return batching.from_dataset(data, batch_size, training, seed, shuffle_buffer, drop, variable)


@dataclasses.dataclass(frozen=True)
class _Batching:
    """The resolved augmentation of one `make_pipeline` call and the two ways to apply it."""

    policy: Augmentation
    augment: bool
    deterministic: bool
    seed: Optional[int]  # of the augmentation randoms (the shuffle seed + 1)

    def _randoms(self) -> tf.data.Dataset:
        return tf.data.Dataset.random(seed=self.seed, rerandomize_each_iteration=True)

    def _map(self, ds, fn):
        return ds.map(fn, num_parallel_calls=AUTOTUNE, deterministic=self.deterministic)

    def _crop_decoded(self, stream: tf.data.Dataset) -> tf.data.Dataset:
        """Crop/resize decoded variable-size images: random-resized + flip, or centre."""
        policy = self.policy
        if self.augment:
            return self._map(tf.data.Dataset.zip((stream, self._randoms())),
                             lambda xy, r: augment_lib.imagenet_train_from_image(xy[0], xy[1], r, policy))
        return self._map(stream, lambda x, y: augment_lib.imagenet_eval_from_image(x, y, policy))

    def _finish_batches(self, b: tf.data.Dataset) -> tf.data.Dataset:
        """uint8/float NHWC batches -> crop/flip (if any) -> float32 [0, 1]."""
        policy = self.policy
        if self.augment and policy.kind == "crop_flip":
            def crop_flip(xy, r):
                x = augment_lib.batch_crop_flip(xy[0], augment_lib.seed_pair(r), policy.pad, policy.flip)
                return images.to_unit_float(x), xy[1]

            return self._map(tf.data.Dataset.zip((b, self._randoms())), crop_flip)
        return self._map(b, lambda x, y: (images.to_unit_float(x), y))

    def from_source(self, src: DataSource, batch_size, training, seed, shuffle_buffer, drop):
        policy = self.policy
        if src.kind == "array":
            n = src.size
            pixels, labels = src.images, tf.constant(src.labels)
            idx = tf.data.Dataset.range(n)
            if training:
                idx = idx.shuffle(min(shuffle_buffer or n, n), seed=seed, reshuffle_each_iteration=True)
            b = idx.batch(batch_size, drop_remainder=drop).map(
                lambda i: (tf.gather(pixels, i), tf.gather(labels, i)), num_parallel_calls=AUTOTUNE)
            return self._finish_batches(b).prefetch(AUTOTUNE)

        # Streams of raw elements: (path | encoded bytes | uint8 image, label).
        if src.kind == "files":
            stream = tf.data.Dataset.from_tensor_slices((src.paths, src.labels))
            default_buffer = src.size
        else:
            stream = src.stream
            default_buffer = _ENCODED_SHUFFLE_BUFFER if src.encoded else _DECODED_SHUFFLE_BUFFER
        if training:
            buf = shuffle_buffer or default_buffer
            if src.size is not None:
                buf = min(buf, src.size)
            stream = stream.shuffle(max(1, buf), seed=seed, reshuffle_each_iteration=True)
        if src.decoded_shape is not None:
            if src.kind == "files":
                shape = src.decoded_shape
                stream = self._map(stream, lambda p, y: (images.decode_fixed(tf.io.read_file(p), shape), y))
            return self._finish_batches(stream.batch(batch_size, drop_remainder=drop)).prefetch(AUTOTUNE)
        # Variable-size (ImageNet): decode only the crop window, per element.
        to_bytes = tf.io.read_file if src.kind == "files" else (lambda b: b)
        if src.kind == "tfds" and not src.encoded:
            stream = self._crop_decoded(stream)  # decoded variable-size tfds images (load never makes these)
        elif self.augment:
            stream = self._map(tf.data.Dataset.zip((stream, self._randoms())),
                               lambda xy, r: augment_lib.imagenet_train_from_encoded(to_bytes(xy[0]), xy[1], r, policy))
        else:
            stream = self._map(stream, lambda p, y: augment_lib.imagenet_eval_from_encoded(to_bytes(p), y, policy))
        return stream.batch(batch_size, drop_remainder=drop).prefetch(AUTOTUNE)

    def from_dataset(self, ds: tf.data.Dataset, batch_size, training, seed, shuffle_buffer, drop, variable):
        ds = ds.map(lambda x, y: (x, tf.cast(y, tf.int32)))
        if training:
            ds = ds.shuffle(shuffle_buffer or _GENERIC_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
        if variable:
            return self._crop_decoded(ds).batch(batch_size, drop_remainder=drop).prefetch(AUTOTUNE)
        return self._finish_batches(ds.batch(batch_size, drop_remainder=drop)).prefetch(AUTOTUNE)


def pipeline_throughput(ds: tf.data.Dataset, num_batches: int = 50, warmup: int = 2) -> float:
    """Images per second delivered by a batched pipeline alone (no model).

    Skips `warmup` batches (shuffle-buffer fill, tracing), then times `num_batches`
    batches; the dataset is repeated so short datasets do not run out.

    Args:
        ds: a batched dataset of `(images, labels)`, e.g. from `make_pipeline`.
        num_batches: batches timed.
        warmup: batches skipped before timing.

    Example:

    ```python
    train, _, _ = load("quickstart")
    rate = pipeline_throughput(make_pipeline(train, 256, training=True, seed=0))
    ```
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1. Received: num_batches={num_batches}")
    it = iter(ds.repeat())
    for _ in range(warmup):
        next(it)
    count = 0
    start = time.perf_counter()
    for _ in range(num_batches):
        x = next(it)[0]
        count += int(x.shape[0])
    elapsed = time.perf_counter() - start
    return count / max(elapsed, 1e-9)
