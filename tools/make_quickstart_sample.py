#!/usr/bin/env python
"""Build the MNIST sample shipped with the package for the quickstart.

Usage (from the repository root)::

    python tools/make_quickstart_sample.py                      # default source below
    python tools/make_quickstart_sample.py path/to/mnist.npz    # explicit source
    python tools/make_quickstart_sample.py SRC --output OUT.npz --seed 0

The source is an MNIST archive in the ``keras.datasets`` layout (``x_train``,
``y_train``, ``x_test``, ``y_test``, uint8). By default it is
``../shared/data/mnist.npz`` relative to the repository root.

The sample is class-balanced: with ``numpy.random.RandomState(seed)`` it draws,
for each digit 0..9 in turn, 1 000 training and 200 test images without
replacement from that digit's images; the chosen indices are then sorted so the
sample keeps MNIST's original order. The output holds ``x_train`` (10000, 28, 28),
``y_train`` (10000,), ``x_test`` (2000, 28, 28), ``y_test`` (2000,), all uint8,
plus ``train_indices`` / ``test_indices`` (int32 positions in the source splits).

The archive is written byte-for-byte reproducibly: every member is deflated
with a fixed timestamp, so running the script twice yields the same sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT / ".." / "shared" / "data" / "mnist.npz"
DEFAULT_OUTPUT = REPO_ROOT / "gloro_keras" / "data" / "mnist_sample.npz"
# sha256 of the complete, bit-exact MNIST archive this sample was made from.
EXPECTED_SOURCE_SHA256 = "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64"

TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200
NUM_CLASSES = 10
MAX_BYTES = 5 * 1024 * 1024
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.RandomState) -> np.ndarray:
    chosen = []
    for c in range(NUM_CLASSES):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise ValueError(f"class {c} has only {len(pool)} examples, need {per_class}")
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int32)


def write_npz_reproducibly(path: Path, arrays: dict) -> None:
    """Like ``np.savez_compressed`` but with fixed member timestamps and order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=_FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def make_sample(source: Path, output: Path, seed: int = 0) -> dict:
    with np.load(source) as d:
        x_train, y_train = d["x_train"], d["y_train"].reshape(-1)
        x_test, y_test = d["x_test"], d["y_test"].reshape(-1)
    if x_train.dtype != np.uint8 or x_train.shape[1:] != (28, 28):
        raise ValueError(f"{source} does not look like MNIST: x_train {x_train.dtype} {x_train.shape}")
    rng = np.random.RandomState(seed)
    train_idx = balanced_indices(y_train, TRAIN_PER_CLASS, rng)
    test_idx = balanced_indices(y_test, TEST_PER_CLASS, rng)
    arrays = {
        "x_train": x_train[train_idx].astype(np.uint8),
        "y_train": y_train[train_idx].astype(np.uint8),
        "x_test": x_test[test_idx].astype(np.uint8),
        "y_test": y_test[test_idx].astype(np.uint8),
        "train_indices": train_idx,
        "test_indices": test_idx,
    }
    write_npz_reproducibly(output, arrays)
    return arrays


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", nargs="?", default=str(DEFAULT_SOURCE),
                   help="MNIST .npz in keras.datasets layout (default: ../shared/data/mnist.npz "
                        "relative to the repository root)")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="where to write the sample")
    p.add_argument("--seed", type=int, default=0, help="numpy RandomState seed (default 0)")
    args = p.parse_args(argv)

    source, output = Path(args.source), Path(args.output)
    if not source.is_file():
        print(f"error: MNIST source not found: {source}", file=sys.stderr)
        return 2
    src_hash = sha256_of(source)
    if src_hash != EXPECTED_SOURCE_SHA256:
        print(f"warning: source sha256 {src_hash} differs from the reference MNIST archive "
              f"({EXPECTED_SOURCE_SHA256}); the sample will differ from the shipped one",
              file=sys.stderr)
    arrays = make_sample(source, output, seed=args.seed)
    size = output.stat().st_size
    print(f"wrote {output} ({size} bytes, sha256 {sha256_of(output)})")
    for k in ("x_train", "y_train", "x_test", "y_test"):
        print(f"  {k}: {arrays[k].shape} {arrays[k].dtype}")
    print(f"  train per class: {np.bincount(arrays['y_train']).tolist()}")
    print(f"  test per class:  {np.bincount(arrays['y_test']).tolist()}")
    if size > MAX_BYTES:
        print(f"error: sample is {size} bytes, above the {MAX_BYTES} byte limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
