"""Plain Keras `Dense` / `Conv2D` layers in a GloRo body, replaced by their bounded twins."""
import keras

from gloro_keras._compat import flatten_layers
from gloro_keras.layers import BoundedLayer, LipschitzConv2D, LipschitzDense
from gloro_keras.models.network_analysis import chain_layers


def is_plain_linear(layer):
    """Whether `layer` is a plain Keras Dense / Conv2D (not a gloro_keras layer)."""
    return isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)) and not isinstance(layer, BoundedLayer) \
        and not hasattr(layer, "margin_kernel")


def _activation_name(layer):
    act = getattr(layer, "activation", None)
    return "linear" if act is None else getattr(act, "__name__", str(act))


def bounded_twin(layer, power_iterations=10):
    """A LipschitzDense / LipschitzConv2D computing what `layer` computes (weights not yet set)."""
    common = dict(use_bias=layer.use_bias, power_iterations=power_iterations, name=f"{layer.name}_bounded",
                  dtype=layer.dtype_policy)
    if isinstance(layer, keras.layers.Conv2D):
        if layer.data_format != "channels_last" or tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
            raise ValueError(
                f"Layer '{layer.name}' (Conv2D, data_format={layer.data_format}, dilation_rate="
                f"{tuple(layer.dilation_rate)}, groups={layer.groups}) has no Lipschitz bound that a GloroModel "
                "can use: only channels_last, undilated, ungrouped convolutions are bounded.")
        return LipschitzConv2D(layer.filters, layer.kernel_size, strides=layer.strides, padding=layer.padding,
                               **common)
    return LipschitzDense(layer.units, **common)


def with_bounded_layers(network, power_iterations=10):
    """`network`, or a copy of it whose body's plain Keras `Dense` / `Conv2D` layers are
    `LipschitzDense` / `LipschitzConv2D` with the same weights (followed by their activation
    as its own layer), so that a GloroModel can bound them: power iteration in training, the
    sound bound in certification. The last layer (the head) is kept as it is. Returns the
    network itself when there is nothing to replace.
    """
    if not network.built:
        return network  # `analyze` says what is wrong
    body = chain_layers(network)[:-1]
    if not any(is_plain_linear(l) for l in body):
        return network
    body_ids = {id(l) for l in body}
    replaced = {}

    def clone(layer):
        if is_plain_linear(layer) and id(layer) in body_ids:
            twin = bounded_twin(layer, power_iterations)
            replaced[layer.name] = (layer, twin)
            act = _activation_name(layer)
            if act == "linear":
                return twin
            return keras.Sequential([twin, keras.layers.Activation(layer.activation, name=f"{layer.name}_{act}")],
                                    name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(network, clone_function=clone, recursive=True)
    originals = {l.name: l for l in flatten_layers(network)}
    for new in flatten_layers(copy):
        if new.name in originals and not isinstance(new, keras.Model) and new.weights:
            new.set_weights(originals[new.name].get_weights())
    for old, twin in replaced.values():
        twin.kernel.assign(old.kernel)
        if old.use_bias:
            twin.bias.assign(old.bias)
    return copy


__all__ = ["bounded_twin", "is_plain_linear", "with_bounded_layers"]
