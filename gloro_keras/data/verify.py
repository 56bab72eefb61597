"""Checks of image files before training: every listed file present and complete, and (on
request, or to name the culprit after a decode failure) every image decodable.

```python
from gloro_keras.data import verify
train, test, info = load("tiny_imagenet", data_dir="~/data")
verify.check_files(train, test)              # fast: presence, size, JPEG/PNG start and end markers
verify.decode_all(train, progress=True)      # slow: decodes every image, names the bad ones
```
"""
import os
from typing import List, Sequence

import keras
import numpy as np
import tensorflow as tf

_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


class ImageFileError(ValueError):
    """Listed image files are missing, truncated or not decodable (the message names them)."""


def file_paths(*sources) -> List[str]:
    """The image files the file-backed `sources` (DataSource) read."""
    return [str(p) for src in sources if src.paths is not None for p in src.paths[: src.size]]


def _problem(path: str):
    """Why the file at `path` is not a complete JPEG/PNG, or None."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, size - 32))
            tail = f.read().rstrip(b"\x00")
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if size == 0:
        return "empty"
    if head.startswith(_JPEG_START):
        return None if tail.endswith(_JPEG_END) else "truncated JPEG (no end-of-image marker)"
    if head.startswith(_PNG_START):
        return None if tail.endswith(_PNG_END) else "truncated PNG (no IEND chunk)"
    return "neither a JPEG nor a PNG"


def _report(problems, total, what):
    if not problems:
        return
    shown = "; ".join(f"{p} ({why})" for p, why in problems[:5])
    more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
    raise ImageFileError(f"{len(problems)} of {total} {what} are not usable: {shown}{more}")


def check_files(*sources, progress=False) -> int:
    """Check that every image file of the file-backed `sources` (DataSource) is present and
    complete (JPEG start/end markers, PNG signature and IEND chunk): reads 40 bytes a file.
    Sources held in memory or streamed from tfds pass untouched. Returns the number of files
    checked; raises `ImageFileError` naming the first bad files."""
    paths = file_paths(*sources)
    bar = keras.utils.Progbar(len(paths), unit_name="file") if progress and paths else None
    problems = []
    for i, path in enumerate(paths):
        why = _problem(path)
        if why is not None:
            problems.append((path, why))
        if bar is not None and (i + 1) % 1000 == 0:
            bar.update(i + 1)
    if bar is not None:
        bar.update(len(paths), finalize=True)
    _report(problems, len(paths), "image files")
    return len(paths)


def undecodable(paths: Sequence[str], progress=False) -> List[str]:
    """The files among `paths` that TensorFlow cannot decode (one parallel pass)."""
    paths = [str(p) for p in paths]
    index = tf.data.Dataset.from_tensor_slices(np.arange(len(paths), dtype=np.int64))
    files = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string))

    def decode(i, path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return i, tf.shape(image)[0]

    ds = (tf.data.Dataset.zip((index, files)).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
          .ignore_errors().batch(256))
    bar = keras.utils.Progbar(len(paths), unit_name="image") if progress and paths else None
    ok = np.zeros(len(paths), bool)
    for i, _ in ds.as_numpy_iterator():
        ok[i] = True
        if bar is not None:
            bar.add(len(i))
    return [paths[j] for j in np.flatnonzero(~ok)]


def decode_all(*sources, progress=False) -> int:
    """Decode every image file of `sources`; raises `ImageFileError` naming the ones that do
    not decode. Returns the number of files decoded."""
    paths = file_paths(*sources)
    bad = undecodable(paths, progress=progress)
    _report([(p, "not decodable") for p in bad], len(paths), "image files")
    return len(paths)
