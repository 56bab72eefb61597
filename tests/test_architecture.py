"""The library's shape: no import runs upward, and private Keras/TF names live only in _compat."""
import re
import sys
from pathlib import Path

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import import_graph  # noqa: E402

PACKAGE = REPO / "gloro_keras"
# Private names of Keras/TF (or their private modules) that must appear only in _compat.py.
PRIVATE = re.compile(
    r"keras\.src\b|tensorflow\.python\b|tf\.__internal__|\._flatten_layers\b|\._keras_history\b"
    r"|\._inbound_nodes\b|\._symbolic_build\b|\._maybe_symbolic_build\b|\._learning_rate\b"
    r"|\._all_reduce_sum_gradients\b|\._distributed_tf_update_step\b|\._distribution_strategy\b"
    r"|def _clip_gradients\b|def _backend_update_step\b|_is_per_replica_instance|\._layers\b"
)


def test_no_module_imports_upward():
    up = import_graph.upward(import_graph.graph())
    assert not up, "imports that run upward: " + "; ".join(
        f"{f} imports {m}" for uses in up.values() for f, m in uses)


def test_no_cycle_between_packages():
    edges = {e for e in import_graph.graph() if "__init__" not in e}
    cycles = sorted((a, b) for a, b in edges if (b, a) in edges and a < b)
    assert not cycles, f"packages importing each other: {cycles}"


def test_every_unit_has_a_level():
    units = {p.stem if p.parent == PACKAGE else p.relative_to(PACKAGE).parts[0]
             for p in PACKAGE.rglob("*.py")}
    assert units <= set(import_graph.LEVELS), f"add to tools/import_graph.py LEVELS: {units - set(import_graph.LEVELS)}"


def test_private_keras_and_tf_names_only_in_compat():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_compat.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE.search(line.split("#")[0]):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "private Keras/TF names outside gloro_keras/_compat.py:\n" + "\n".join(offenders)


def test_the_checker_sees_private_names_and_upward_imports(tmp_path):
    """The two checks above can fail: they flag a planted private name and an upward edge."""
    assert PRIVATE.search("from keras.src.backend.tensorflow import trainer")
    assert PRIVATE.search("layers = model._flatten_layers(include_self=False)")
    assert not PRIVATE.search("self._flatten(x)")
    edges = {("models", "train"): [("gloro_keras/models/x.py", "gloro_keras.train.callbacks")],
             ("train", "models"): [("gloro_keras/train/y.py", "gloro_keras.models")]}
    assert set(import_graph.upward(edges)) == {("models", "train")}
