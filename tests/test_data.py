"""Tests for gloro_keras.data (fast: small fake data, the shipped sample, shared npz)."""

import os
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from gloro_keras import data as D

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared" / "data"
SAMPLE = REPO / "gloro_keras" / "data" / "mnist_sample.npz"


def _shared(fname):
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent")
    path = SHARED / fname
    assert path.is_file(), f"{path} missing although {SHARED} exists"
    return path


def _first_batch(ds):
    x, y = next(iter(ds))
    return x.numpy(), y.numpy()


def _check_batch(x, y, shape, num_classes):
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert x.shape[1:] == tuple(shape)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert y.min() >= 0 and y.max() < num_classes


def _write_npz(path, x_train, y_train, x_test, y_test):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


def _id_npz(tmp_path, shape, n=64, seed=0):
    """Random images whose label is their index, so outputs can be traced to inputs."""
    rng = np.random.RandomState(seed)
    x = rng.randint(1, 256, size=(n,) + shape).astype(np.uint8)  # no zeros: padding is visible
    y = np.arange(n, dtype=np.uint8)
    return _write_npz(tmp_path / f"ids{'x'.join(map(str, shape))}.npz", x, y, x[:8], y[:8]), x


def _find_crop(out, orig, pad, allow_flip):
    """(oy, ox, flipped) such that out is that zero-padded crop of orig, else None."""
    if orig.ndim == 2:
        orig = orig[..., None]
    h, w = orig.shape[:2]
    padded = np.pad(orig, ((pad, pad), (pad, pad), (0, 0)))
    target = np.round(out * 255.0).astype(np.int64)
    for flipped in ([False, True] if allow_flip else [False]):
        for oy in range(2 * pad + 1):
            for ox in range(2 * pad + 1):
                crop = padded[oy:oy + h, ox:ox + w]
                if flipped:
                    crop = crop[:, ::-1]
                if np.array_equal(crop, target):
                    return oy, ox, flipped
    return None


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the data module tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ---------------------------------------------------------------------------- quickstart


def test_sample_file_size_and_contents():
    assert SAMPLE.stat().st_size <= 5 * 1024 * 1024
    with np.load(SAMPLE) as d:
        assert d["x_train"].shape == (10000, 28, 28) and d["x_train"].dtype == np.uint8
        assert d["x_test"].shape == (2000, 28, 28) and d["x_test"].dtype == np.uint8
        assert d["y_train"].shape == (10000,) and d["y_test"].shape == (2000,)
        assert np.bincount(d["y_train"]).tolist() == [1000] * 10
        assert np.bincount(d["y_test"]).tolist() == [200] * 10


def test_package_code_never_references_shared_data():
    sources = sorted((REPO / "gloro_keras" / "data").glob("*.py"))
    assert len(sources) > 1
    for path in sources:
        src = path.read_text()
        assert "../shared" not in src and "shared/data" not in src, path


def test_quickstart_load_and_pipelines():
    train, test, info = D.load("quickstart")
    assert (info.name, info.num_classes, info.image_shape) == ("quickstart", 10, (28, 28, 1))
    assert (info.train_size, info.test_size) == (10000, 2000)
    assert info.augmentation == D.Augmentation("crop_flip", pad=2, flip=False)
    assert (train.size, test.size) == (10000, 2000)
    assert int(train.dataset.cardinality()) == 10000 and int(test.dataset.cardinality()) == 2000
    x, y = next(iter(train.dataset))
    assert x.shape == (28, 28, 1) and x.dtype == tf.float32 and y.dtype == tf.int32

    ev = D.make_pipeline(test, 500, training=False)
    xs, ys = zip(*[(a.numpy(), b.numpy()) for a, b in ev])
    x, y = np.concatenate(xs), np.concatenate(ys)
    _check_batch(x, y, (28, 28, 1), 10)
    assert len(y) == 2000 and np.bincount(y).tolist() == [200] * 10
    with np.load(SAMPLE) as d:  # evaluation keeps order and pixels exactly
        np.testing.assert_array_equal(np.round(x[..., 0] * 255), d["x_test"])
        np.testing.assert_array_equal(y, d["y_test"])

    tr = D.make_pipeline(train, 256, training=True, seed=1)
    xb, yb = _first_batch(tr)
    assert xb.shape == (256, 28, 28, 1)  # drop_remainder for training
    _check_batch(xb, yb, (28, 28, 1), 10)
    assert D.pipeline_throughput(tr, num_batches=3, warmup=1) > 0


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data folder is absent")
def test_sample_is_reproducible(tmp_path):
    out = tmp_path / "sample.npz"
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_quickstart_sample.py"),
         str(_shared("mnist.npz")), "--output", str(out)],
        check=True, capture_output=True,
    )
    assert out.read_bytes() == SAMPLE.read_bytes()


# ---------------------------------------------------------------------------- shared npz


@pytest.fixture(scope="module")
def cifar():
    return D.load(str(_shared("cifar10-jpeg.npz")))


def test_shared_mnist_npz():
    path = _shared("mnist.npz")
    for name, kwargs in [(str(path), {}), ("npz:" + str(path), {}), ("mnist", {"data_dir": str(SHARED)})]:
        train, test, info = D.load(name, **kwargs)
        assert info.num_classes == 10 and info.image_shape == (28, 28, 1)
        assert (info.train_size, info.test_size) == (60000, 10000)
        assert info.augmentation.flip is False
    x, y = _first_batch(D.make_pipeline(test, 64, training=False))
    _check_batch(x, y, (28, 28, 1), 10)
    with np.load(path) as d:
        np.testing.assert_array_equal(np.round(x[..., 0] * 255), d["x_test"][:64])
        np.testing.assert_array_equal(y, d["y_test"][:64])


def test_shared_cifar_npz(cifar):
    train, test, info = cifar
    assert info.num_classes == 10 and info.image_shape == (32, 32, 3)
    assert (info.train_size, info.test_size) == (50000, 10000)
    assert info.augmentation == D.Augmentation("crop_flip", pad=4, flip=True)
    x, y = _first_batch(D.make_pipeline(test, 64, training=False))
    _check_batch(x, y, (32, 32, 3), 10)
    with np.load(_shared("cifar10-jpeg.npz")) as d:
        np.testing.assert_array_equal(np.round(x * 255), d["x_test"][:64])
        np.testing.assert_array_equal(y, d["y_test"][:64].reshape(-1))
    xb, yb = _first_batch(D.make_pipeline(train, 256, training=True, seed=0))
    assert xb.shape == (256, 32, 32, 3)
    _check_batch(xb, yb, (32, 32, 3), 10)


# ---------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("shape,pad,flip", [((32, 32, 3), 4, True), ((64, 64, 3), 8, True),
                                            ((28, 28), 2, False)])
def test_crop_flip_augmentation(tmp_path, shape, pad, flip):
    path, x = _id_npz(tmp_path, shape)
    train, _, info = D.load(path, num_classes=64)
    assert info.augmentation == D.Augmentation("crop_flip", pad=pad, flip=flip)
    xb, yb = _first_batch(D.make_pipeline(train, 64, training=True, seed=3))
    hw = shape[:2]
    assert xb.shape == (64,) + hw + (x.shape[-1] if len(shape) == 3 else 1,)
    assert xb.dtype == np.float32 and xb.min() >= 0.0 and xb.max() <= 1.0
    assert sorted(yb.tolist()) == list(range(64))  # a permutation of the data set
    found = [_find_crop(xb[i], x[yb[i]], pad, allow_flip=True) for i in range(64)]
    assert all(f is not None for f in found), "an output is not a padded crop of its input"
    assert sum((oy, ox) != (pad, pad) for oy, ox, _ in found) > 32  # crops actually move
    n_flipped = sum(f for _, _, f in found)
    if flip:
        assert 10 < n_flipped < 54
    else:
        assert n_flipped == 0  # MNIST-like data is never mirrored
    # without augmentation the training pipeline only shuffles
    xn, yn = _first_batch(D.make_pipeline(train, 64, training=True, augment=False, seed=3))
    np.testing.assert_array_equal(np.round(xn * 255).astype(np.uint8).reshape(x.shape), x[yn])


def test_mnist_never_flipped_on_sample(tmp_path):
    with np.load(SAMPLE) as d:
        digits = d["x_train"][:64]
    ids = np.arange(64, dtype=np.uint8)
    path = _write_npz(tmp_path / "digits.npz", digits, ids, digits[:8], ids[:8])
    train, _, info = D.load(path, num_classes=64)
    assert info.augmentation == D.Augmentation("crop_flip", pad=2, flip=False)
    for seed in (0, 1):
        xb, yb = _first_batch(D.make_pipeline(train, 64, training=True, seed=seed))
        for img, i in zip(xb, yb):
            found = _find_crop(img, digits[i], 2, allow_flip=True)
            assert found is not None and found[2] is False
    assert D.default_augmentation("mnist", (28, 28, 1)).flip is False
    assert D.default_augmentation("quickstart", (28, 28, 1)).flip is False


def test_determinism_and_reshuffling(tmp_path):
    path, _ = _id_npz(tmp_path, (32, 32, 3), n=64)
    train, _, _ = D.load(path, num_classes=64)
    a = D.make_pipeline(train, 16, training=True, seed=7)
    b = D.make_pipeline(train, 16, training=True, seed=7)
    c = D.make_pipeline(train, 16, training=True, seed=8)
    xa, ya = _first_batch(a)
    xb, yb = _first_batch(b)
    xc, yc = _first_batch(c)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, yc)
    epoch1 = np.concatenate([y.numpy() for _, y in a])
    epoch2 = np.concatenate([y.numpy() for _, y in a])
    assert sorted(epoch1) == sorted(epoch2) == list(range(64))
    assert not np.array_equal(epoch1, epoch2)  # reshuffled every epoch


def test_generic_path_matches_semantics(tmp_path):
    path, x = _id_npz(tmp_path, (32, 32, 3), n=64)
    train, _, info = D.load(path, num_classes=64)
    derived = train.dataset.take(40)  # a plain tf.data.Dataset: the generic path
    xb, yb = _first_batch(D.make_pipeline(derived, 40, training=True, seed=0, info=info))
    assert xb.shape == (40, 32, 32, 3)
    assert all(_find_crop(xb[i], x[yb[i]], 4, True) is not None for i in range(40))
    xe, ye = _first_batch(D.make_pipeline(derived, 40, training=False))
    np.testing.assert_array_equal(ye, np.arange(40))
    np.testing.assert_array_equal(np.round(xe * 255), x[:40])


def _all_batches(ds):
    xs, ys = zip(*[(a.numpy(), b.numpy()) for a, b in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_take_gives_the_same_pipeline_whatever_the_object(tmp_path):
    # make_pipeline depends on its arguments only: a source, its take(n) and the plain
    # dataset of the same n examples give the same batches (training and evaluation).
    path, x = _id_npz(tmp_path, (32, 32, 3), n=64)
    train, _, info = D.load(path, num_classes=64)
    part = train.take(40)
    assert isinstance(part, D.DataSource) and part.size == 40 and part.num_classes == 64
    assert int(part.dataset.cardinality()) == 40 and train.size == 64  # the original is unchanged
    for training in (False, True):
        xa, ya = _all_batches(D.make_pipeline(part, 8, training=training, seed=5))
        xb, yb = _all_batches(D.make_pipeline(train.dataset.take(40), 8, training=training, seed=5, info=info))
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert sorted(ya.tolist()) == list(range(40))
    xf, yf = _all_batches(D.make_pipeline(train, 8, training=False))
    xt, yt = _all_batches(D.make_pipeline(train.take(40), 8, training=False))
    np.testing.assert_array_equal(xf[:40], xt)
    np.testing.assert_array_equal(yf[:40], yt)
    assert train.take(1000).size == 64
    with pytest.raises(ValueError, match="Received: count=-1"):
        train.take(-1)
    with pytest.raises(TypeError, match="Received"):
        D.make_pipeline(x, 8, training=False)


# ---------------------------------------------------------------------------- image folders


def _write_image(path, array, fmt="jpeg"):
    path.parent.mkdir(parents=True, exist_ok=True)
    enc = tf.io.encode_jpeg(array, quality=95) if fmt == "jpeg" else tf.io.encode_png(array)
    path.write_bytes(enc.numpy())


def _colour(value, h, w):
    return tf.constant(np.full((h, w, 3), value, np.uint8))


def _tiny_tree(root):
    wnids = ["n03000003", "n01000001", "n02000002"]  # deliberately not sorted
    (root).mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    value = {w: 40 + 80 * sorted(wnids).index(w) for w in wnids}
    for w in wnids:
        for i in range(3):
            _write_image(root / "train" / w / "images" / f"{w}_{i}.JPEG", _colour(value[w], 64, 64))
        (root / "train" / w / f"{w}_boxes.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
    lines = []
    for i, w in enumerate(wnids * 2):
        fname = f"val_{i}.JPEG"
        _write_image(root / "val" / "images" / fname, _colour(value[w], 64, 64))
        lines.append(f"{fname}\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return wnids, value


def test_tiny_imagenet_loader(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids, value = _tiny_tree(root)
    for data_dir in (root, tmp_path):  # the folder itself or its parent
        train, test, info = D.load("tiny_imagenet", data_dir=str(data_dir))
        assert info.num_classes == 3 and info.image_shape == (64, 64, 3)
        assert info.class_names == tuple(sorted(wnids))  # labels follow sorted wnids
        assert (info.train_size, info.test_size) == (9, 6)
        assert info.augmentation == D.Augmentation("crop_flip", pad=8, flip=True)
    for ds in (test, train):
        x, y = _first_batch(D.make_pipeline(ds, 6, training=False))
        _check_batch(x, y, (64, 64, 3), 3)
        for img, label in zip(x, y):
            assert abs(img.mean() * 255 - (40 + 80 * label)) < 3
    x, y = _first_batch(D.make_pipeline(train, 8, training=True, seed=0))
    assert x.shape == (8, 64, 64, 3) and x.min() >= 0 and x.max() <= 1
    assert (x == 0).any()  # zero padding visible in at least one crop
    # a file source's take(n) reads the first n files, in order
    xt, yt = _first_batch(D.make_pipeline(test.take(4), 4, training=False))
    xe, ye = _first_batch(D.make_pipeline(test, 4, training=False))
    np.testing.assert_array_equal(xt, xe)
    np.testing.assert_array_equal(yt, ye)


def _imagenet_tree(root, classes=("cls_b", "cls_a", "cls_c"), per_class=2):
    step = 200 // max(1, len(classes) - 1)
    value = {c: 30 + step * sorted(classes).index(c) for c in classes}
    sizes = [(80, 120), (150, 90), (64, 64)]
    for split in ("train", "val"):
        for c in classes:
            for i in range(per_class):
                h, w = sizes[i % len(sizes)]
                fmt = "png" if (c == "cls_c" and i == 0) else "jpeg"
                ext = "png" if fmt == "png" else "JPEG"
                _write_image(root / split / c / f"{c}_{i}.{ext}", _colour(value[c], h, w), fmt)
    return value


def test_imagenet_folder_loader(tmp_path):
    value = _imagenet_tree(tmp_path)
    train, test, info = D.load("imagenet_folder", data_dir=str(tmp_path))
    assert info.class_names == ("cls_a", "cls_b", "cls_c")
    assert (info.num_classes, info.image_shape) == (3, (224, 224, 3))
    assert (info.train_size, info.test_size) == (6, 6)
    assert info.augmentation.kind == "imagenet"
    x, y = next(iter(test.dataset))  # unbatched images keep their native size
    assert x.shape[-1] == 3 and x.dtype == tf.float32
    for training in (False, True):
        xb, yb = _first_batch(D.make_pipeline(test if not training else train, 6,
                                              training=training, seed=0))
        assert xb.shape == (6, 224, 224, 3)
        _check_batch(xb, yb, (224, 224, 3), 3)
        for img, label in zip(xb, yb):
            assert abs(img.mean() * 255 - value[info.class_names[label]]) < 3
    # generic path (a plain tf.data.Dataset) resizes too
    xg, _ = _first_batch(D.make_pipeline(test.dataset.take(3), 3, training=True, seed=0, info=info))
    assert xg.shape == (3, 224, 224, 3)


def test_class_subset_determinism_and_remapping(tmp_path):
    keep = D.class_subset(300, seed=2023)
    np.testing.assert_array_equal(keep, np.random.RandomState(2023).permutation(1000)[:300])
    np.testing.assert_array_equal(keep, D.class_subset(300, seed=2023))
    assert not np.array_equal(keep, D.class_subset(300, seed=2022))
    assert len(set(keep.tolist())) == 300

    # 20 classes; every pixel of an image equals its original class id
    y = np.repeat(np.arange(20, dtype=np.uint8), 3)
    x = np.broadcast_to(y[:, None, None], (60, 8, 8)).astype(np.uint8)
    path = _write_npz(tmp_path / "c20.npz", x, y, x, y)
    train, test, info = D.load(path, subset_classes=5, subset_seed=2023)
    expected = np.random.RandomState(2023).permutation(20)[:5]
    assert info.class_ids == tuple(expected.tolist()) and info.num_classes == 5
    assert (info.train_size, info.test_size) == (15, 15)
    xs, ys = _first_batch(D.make_pipeline(test, 15, training=False))
    assert sorted(ys.tolist()) == sorted(list(range(5)) * 3)
    for img, label in zip(xs, ys):
        assert np.all(np.round(img * 255) == expected[label])
    train2, _, info2 = D.load(path, subset_classes=5, subset_seed=2023)
    assert info2.class_ids == info.class_ids


def test_class_subset_on_folders(tmp_path):
    classes = tuple(f"n{i:08d}" for i in range(6))
    value = _imagenet_tree(tmp_path, classes=classes, per_class=1)
    _, test, info = D.load("imagenet_folder", data_dir=str(tmp_path), subset_classes=2,
                           subset_seed=2022)
    kept = np.random.RandomState(2022).permutation(6)[:2]
    assert info.class_names == tuple(classes[k] for k in kept)
    assert info.test_size == 2
    xb, yb = _first_batch(D.make_pipeline(test, 2, training=False))
    for img, label in zip(xb, yb):
        assert abs(img.mean() * 255 - value[info.class_names[label]]) < 3


# ---------------------------------------------------------------------------- errors


def _assert_clean(err):
    assert isinstance(err, FileNotFoundError)
    assert err.__cause__ is None
    assert err.__suppress_context__ or err.__context__ is None  # raised "from None"


def test_missing_npz(tmp_path):
    missing = tmp_path / "nope.npz"
    for name in (str(missing), "npz:" + str(missing)):
        with pytest.raises(D.DataNotFoundError) as e:
            D.load(name)
        assert str(missing) in str(e.value) and ".npz" in str(e.value)
        _assert_clean(e.value)
    with pytest.raises(D.DataNotFoundError):
        D.load("cifar10", data_dir=str(missing))


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "imagenet2012"])
def test_missing_tfds_data(tmp_path, no_network, name):
    for data_dir in (tmp_path, tmp_path / "does-not-exist"):
        with pytest.raises(D.DataNotFoundError) as e:
            D.load(name, data_dir=str(data_dir))
        msg = str(e.value)
        assert "--data_dir" in msg and "tfds build" in msg and ".npz" in msg and name in msg
        if name == "imagenet2012":
            assert "manual_dir" in msg
        _assert_clean(e.value)
    assert os.listdir(tmp_path) == []  # nothing was downloaded or prepared


@pytest.mark.parametrize("name", ["tiny_imagenet", "imagenet_folder"])
def test_missing_folders(tmp_path, name):
    for data_dir in (None, tmp_path / "absent", tmp_path):
        with pytest.raises(D.DataNotFoundError) as e:
            D.load(name, data_dir=None if data_dir is None else str(data_dir))
        assert "--data_dir" in str(e.value)
    if name == "imagenet_folder":
        (tmp_path / "train" / "a").mkdir(parents=True)
        (tmp_path / "val" / "a").mkdir(parents=True)
        with pytest.raises(D.DataNotFoundError, match="no images"):
            D.load(name, data_dir=str(tmp_path))


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown data set"):
        D.load("svhn")


# ---------------------------------------------------------------------------- tfds (mocked)


@pytest.mark.parametrize("name,shape", [("cifar10", (32, 32, 3)), ("imagenet2012", (224, 224, 3))])
def test_tfds_path_with_mocked_data(tmp_path, no_network, name, shape):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=8), \
            mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True):
        train, test, info = D.load(name, data_dir=str(tmp_path))
        assert info.image_shape == shape
        for ds, training in ((train, True), (test, False)):
            x, y = _first_batch(D.make_pipeline(ds, 4, training=training, seed=0))
            assert x.shape == (4,) + shape
            _check_batch(x, y, shape, info.num_classes)


# ----------------------------------------------------------------------------- bad data
def _labels_npz(tmp_path, y_train, y_test, x_dtype="uint8", scale=255):
    rng = np.random.default_rng(0)
    x_tr = (rng.uniform(size=(len(y_train), 4, 4, 1)) * scale).astype(x_dtype)
    x_te = (rng.uniform(size=(len(y_test), 4, 4, 1)) * scale).astype(x_dtype)
    path = str(tmp_path / "d.npz")
    _write_npz(path, x_tr, np.asarray(y_train), x_te, np.asarray(y_test))
    return path


def test_a_stray_label_is_an_error_not_a_bigger_model(tmp_path):
    y = np.arange(40) % 10
    y[7] = 200
    path = _labels_npz(tmp_path, y, np.arange(10))
    with pytest.raises(ValueError, match=r"training labels go up to 200 but 190 of the classes below it "
                                         r"\(10\.\.199\) have no training example \(label 200 first at y_train\[7\]"):
        D.load(path)
    with pytest.raises(ValueError, match=r"y_train\[7\] = 200 is not below num_classes=10"):
        D.load(path, num_classes=10)
    assert D.load(path, num_classes=201)[2].num_classes == 201  # asked for: allowed


def test_a_test_only_class_is_an_error(tmp_path):
    path = _labels_npz(tmp_path, np.arange(30) % 3, [0, 1, 3, 2])
    with pytest.raises(ValueError, match=r"y_test\[2\] = 3 is a class with no training example"):
        D.load(path)
    assert D.load(path, num_classes=4)[2].num_classes == 4


def test_float_images_in_unit_range_load_and_255_floats_are_scaled_with_a_warning(tmp_path):
    path = _labels_npz(tmp_path, np.arange(20) % 2, [0, 1], x_dtype="float32", scale=1.0)
    train, _, _ = D.load(path)
    x, _ = _first_batch(D.make_pipeline(train, 20, training=False))
    np.testing.assert_allclose(x, np.load(path)["x_train"], rtol=0, atol=0)
    path = _labels_npz(tmp_path, np.arange(20) % 2, [0, 1], x_dtype="float32", scale=255.0)
    with pytest.warns(UserWarning, match=r"x_train holds floats in \[.*\]: read as 0\.\.255 pixels and scaled"):
        train, _, _ = D.load(path)
    x, _ = _first_batch(D.make_pipeline(train, 20, training=False))
    np.testing.assert_allclose(x, np.load(path)["x_train"] / 255.0, rtol=1e-6)


def test_non_finite_pixels_and_non_npz_files_are_errors(tmp_path):
    path = _labels_npz(tmp_path, np.arange(20) % 2, [0, 1], x_dtype="float32", scale=1.0)
    with np.load(path) as d:
        arrays = {k: d[k] for k in d}
    arrays["x_train"][5, 1, 2, 0] = np.nan
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"x_train has 1 non-finite pixel values \(nan/inf\), the first in image 5"):
        D.load(path)
    text = tmp_path / "notes.npz"
    text.write_text("x_train,y_train\n1,2\n")
    with pytest.raises(ValueError, match="is not an .npz archive") as e:
        D.load(str(text))
    assert "allow_pickle" not in str(e.value)


def test_missing_truncated_and_undecodable_images_are_named_before_training(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    _tiny_tree(root)
    train, test, _ = D.load("tiny_imagenet", data_dir=str(root))
    assert D.check_files(train, test) == 15 and D.decode_all(train, test) == 15
    missing = root / "val" / "images" / "val_4.JPEG"
    missing.unlink()
    good = root / "train" / "n01000001" / "images" / "n01000001_1.JPEG"
    truncated = root / "train" / "n02000002" / "images" / "n02000002_0.JPEG"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(D.ImageFileError, match=r"2 of 15 image files are not usable: ") as e:
        D.check_files(*D.load("tiny_imagenet", data_dir=str(root))[:2])
    assert f"{truncated} (truncated JPEG (no end-of-image marker))" in str(e.value)
    assert f"{missing} (missing)" in str(e.value)
    # complete markers around corrupt data: only decoding finds it
    _write_image(missing, _colour(100, 64, 64))
    data = bytearray(good.read_bytes())
    truncated.write_bytes(bytes(data[:20]) + b"\x00" * (len(data) - 22) + bytes(data[-2:]))
    train, test, _ = D.load("tiny_imagenet", data_dir=str(root))
    assert D.check_files(train, test) == 15
    with pytest.raises(D.ImageFileError, match=rf"1 of 15 image files are not usable: {truncated} \(not decodable\)"):
        D.decode_all(train, test)
