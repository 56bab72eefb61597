"""Training-time augmentation: the policy per data set and the ops that apply it.

The paper's "random cropping and random horizontal flipping":

* 28x28 MNIST-like grayscale: random crop after 2 px zero padding, **no flip** (digits are
  not mirror symmetric).
* 32x32 (CIFAR-10/100): random crop after 4 px zero padding + horizontal flip.
* 64x64 (Tiny-ImageNet): random crop after 8 px zero padding + horizontal flip.
* ImageNet: random-resized crop (area 8%-100%, aspect ratio 3/4-4/3) resized to 224x224 +
  horizontal flip for training; for evaluation the equivalent of "resize the shorter side
  to 256, centre crop 224x224" (implemented as a centre square crop of 224/256 of the shorter
  side, resized to 224, so only the needed part of the JPEG is decoded).
* Other `.npz` data: zero padding of `H // 8` px (2 for 28x28 grayscale), flip only for
  colour images.

Padding is with zeros in [0, 1] units (black). All random ops are stateless, seeded by one
int64 per batch (or per image for ImageNet) drawn from `tf.data.Dataset.random`.
"""

import dataclasses
from typing import Callable, Optional, Sequence, Tuple

import tensorflow as tf

from gloro_keras.data import images

IMAGENET_IMAGE_SIZE = 224
IMAGENET_RESIZE_SIZE = 256
AUGMENTATION_KINDS = ("none", "crop_flip", "imagenet")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation policy (also carries ImageNet eval resizing).

    Args:
        kind: `"none"`; `"crop_flip"` (zero-pad by `pad` px, random crop back to the
            input size, horizontal flip with probability 1/2 if `flip`); or `"imagenet"`
            (random-resized crop to `image_size` + flip for training; resize-`resize_size`
            / centre-crop-`image_size` for evaluation).
        pad: zero padding in pixels before the random crop (`"crop_flip"`).
        flip: random horizontal flip.
        image_size: output size of ImageNet crops.
        resize_size: shorter side the evaluation centre crop is taken from (ImageNet).
        area_range: fraction of the image area a random-resized crop covers.
        aspect_ratio_range: aspect ratios of random-resized crops.

    Example:

    ```python
    policy = Augmentation("crop_flip", pad=4, flip=True)    # CIFAR
    batches = make_pipeline(train, 256, training=True, augment=policy, seed=0)
    ```
    """

    kind: str = "none"
    pad: int = 0
    flip: bool = False
    image_size: int = IMAGENET_IMAGE_SIZE
    resize_size: int = IMAGENET_RESIZE_SIZE
    area_range: Tuple[float, float] = (0.08, 1.0)
    aspect_ratio_range: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)

    def __post_init__(self):
        if self.kind not in AUGMENTATION_KINDS:
            raise ValueError(
                f"Augmentation kind must be one of {AUGMENTATION_KINDS}. Received: kind={self.kind!r}"
            )
        if self.pad < 0:
            raise ValueError(f"Augmentation pad must be >= 0. Received: pad={self.pad}")


def default_augmentation(name: str, image_shape: Sequence[Optional[int]]) -> Augmentation:
    """The augmentation `load` attaches to data set `name` with HWC `image_shape`.

    Example:

    ```python
    default_augmentation("cifar10", (32, 32, 3))  # crop_flip, pad=4, flip=True
    default_augmentation("mnist", (28, 28, 1))    # crop_flip, pad=2, flip=False
    ```
    """
    if name in ("imagenet2012", "imagenet_folder"):
        return Augmentation("imagenet", flip=True)
    h, w, c = (tuple(image_shape) + (None, None, None))[:3]
    if h is None or w is None:
        return Augmentation("imagenet", flip=True)
    if name in ("mnist", "quickstart") or (h, w, c) == (28, 28, 1):
        return Augmentation("crop_flip", pad=2, flip=False)
    return Augmentation("crop_flip", pad=max(1, h // 8), flip=(c == 3))


def seed_pair(r: tf.Tensor) -> tf.Tensor:
    """A stateless-op seed from one int64 drawn by `Dataset.random`."""
    return tf.stack([r, tf.bitwise.right_shift(r, 32) + 0x5DEECE66D])


def batch_crop_flip(x: tf.Tensor, seed: tf.Tensor, pad: int, flip: bool) -> tf.Tensor:
    """Per-image random crop (after `pad` px of zeros) and flip of a NHWC batch.

    Crop offsets and the flip are folded into one pixel gather, so a batch costs one
    pass over its pixels whatever the augmentation.
    """
    if pad <= 0 and not flip:
        return x
    s_y, s_x, s_f = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    static_shape = x.shape
    b = tf.shape(x)[0]
    h, w, c = tf.shape(x)[1], tf.shape(x)[2], tf.shape(x)[3]
    hp, wp = h + 2 * pad, w + 2 * pad
    rows = tf.range(h)[None, :]
    cols = tf.range(w)[None, :]
    if flip:
        mirror = tf.random.stateless_uniform([b], s_f) < 0.5
        cols = tf.where(mirror[:, None], w - 1 - cols, cols)
    if pad > 0:
        x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        rows = rows + tf.random.stateless_uniform([b], s_y, 0, 2 * pad + 1, dtype=tf.int32)[:, None]
        cols = cols + tf.random.stateless_uniform([b], s_x, 0, 2 * pad + 1, dtype=tf.int32)[:, None]
    rows = tf.broadcast_to(rows, [b, h])
    cols = tf.broadcast_to(cols, [b, w])
    flat = (tf.range(b)[:, None, None] * (hp * wp) + rows[:, :, None] * wp + cols[:, None, :])
    out = tf.gather(tf.reshape(x, [-1, c]), flat)
    return tf.ensure_shape(out, static_shape)


# ---- ImageNet crops ------------------------------------------------------------------


def _rrc_window(shape: tf.Tensor, seed: tf.Tensor, aug: Augmentation) -> tf.Tensor:
    """Random-resized-crop window `[y, x, h, w]` for an image of `shape` (HWC)."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.cast(shape, tf.int32),
        bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=aug.aspect_ratio_range,
        area_range=aug.area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def _center_window(shape: tf.Tensor, aug: Augmentation) -> tf.Tensor:
    """Square window equal to resize-shorter-side-to-resize_size + centre-crop image_size."""
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    c = tf.round(tf.minimum(h, w) * (aug.image_size / aug.resize_size))
    c = tf.cast(tf.maximum(c, 1.0), tf.int32)
    oy = (tf.cast(h, tf.int32) - c) // 2
    ox = (tf.cast(w, tf.int32) - c) // 2
    return tf.stack([oy, ox, c, c])


def _crop_window(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    return image[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]


def _decode_window(data: tf.Tensor, window_fn: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Decode only `window_fn(shape)` of an encoded image (fast path for JPEG)."""

    def jpeg():
        win = window_fn(tf.image.extract_jpeg_shape(data))
        return tf.image.decode_and_crop_jpeg(data, win, channels=3)

    def other():
        img = images.decode_any(data)
        return _crop_window(img, window_fn(tf.shape(img)))

    return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def _finish_imagenet(img: tf.Tensor, aug: Augmentation, flip_seed=None) -> tf.Tensor:
    size = aug.image_size
    if img.dtype == tf.uint8:
        img = tf.cast(img, tf.float32) * (1.0 / 255.0)
    img = tf.image.resize(img, [size, size], method="bilinear", antialias=True)
    img = tf.clip_by_value(img, 0.0, 1.0)
    if flip_seed is not None and aug.flip:
        img = tf.cond(tf.random.stateless_uniform([], flip_seed) < 0.5,
                      lambda: tf.reverse(img, axis=[1]), lambda: img)
    return tf.ensure_shape(img, (size, size, 3))


def imagenet_train_from_encoded(data, label, r, aug: Augmentation):
    """Random-resized crop + flip of an encoded image, decoding only the crop."""
    s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed_pair(r), 2))
    img = _decode_window(data, lambda shape: _rrc_window(shape, s_crop, aug))
    return _finish_imagenet(img, aug, s_flip), label


def imagenet_eval_from_encoded(data, label, aug: Augmentation):
    """Centre crop of an encoded image, decoding only the crop."""
    img = _decode_window(data, lambda shape: _center_window(shape, aug))
    return _finish_imagenet(img, aug), label


def imagenet_train_from_image(img, label, r, aug: Augmentation):
    """Random-resized crop + flip of a decoded image."""
    s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed_pair(r), 2))
    img = _crop_window(img, _rrc_window(tf.shape(img), s_crop, aug))
    return _finish_imagenet(img, aug, s_flip), label


def imagenet_eval_from_image(img, label, aug: Augmentation):
    """Centre crop of a decoded image."""
    img = _crop_window(img, _center_window(tf.shape(img), aug))
    return _finish_imagenet(img, aug), label
