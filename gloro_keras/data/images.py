"""Decoding of single images and their conversion to float32 in [0, 1]."""

from typing import Tuple

import tensorflow as tf


def to_unit_float(image: tf.Tensor) -> tf.Tensor:
    """uint8 pixels to float32 in [0, 1]; any other dtype is only cast to float32."""
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) * (1.0 / 255.0)
    return tf.cast(image, tf.float32)


def decode_fixed(data: tf.Tensor, shape: Tuple[int, int, int]) -> tf.Tensor:
    """Decode an encoded image to uint8 `shape` (resizing only if it differs)."""
    h, w, c = shape
    img = tf.io.decode_image(data, channels=c, expand_animations=False)
    hw = tf.shape(img)[:2]

    def _resize():
        r = tf.image.resize(img, [h, w], antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(r), 0.0, 255.0), tf.uint8)

    img = tf.cond(tf.reduce_all(tf.equal(hw, [h, w])), lambda: img, _resize)
    return tf.ensure_shape(img, shape)


def decode_any(data: tf.Tensor) -> tf.Tensor:
    """Decode an encoded image of any size to uint8 RGB (HWC)."""
    return tf.io.decode_image(data, channels=3, expand_animations=False)
