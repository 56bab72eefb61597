"""Every private Keras/TF name gloro_keras relies on still exists in the installed versions."""
import keras
import tensorflow as tf

from gloro_keras import _compat


def test_private_names_still_exist():
    missing = _compat.missing_private_names()
    assert not missing, (
        f"gloro_keras._compat relies on private names that Keras {keras.__version__} / TensorFlow "
        f"{tf.__version__} no longer have (checked with {_compat.CHECKED_WITH}): {missing}. "
        "Update the workaround in gloro_keras/_compat.py."
    )


def test_flatten_layers_and_producer_read_a_functional_chain():
    x = keras.Input((4,))
    dense = keras.layers.Dense(3)
    y = keras.layers.Activation("relu")(dense(x))
    model = keras.Model(x, y)
    assert dense in _compat.flatten_layers(model)
    layer, inputs = _compat.producer(model.outputs[0])
    assert isinstance(layer, keras.layers.Activation) and len(inputs) == 1
    assert _compat.producer(inputs[0])[0] is dense
