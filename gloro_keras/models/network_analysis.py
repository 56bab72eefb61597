"""Turns a Keras network into a chain of Lipschitz-bounded pieces plus a linear head."""
import dataclasses
import math

import keras
import numpy as np

from gloro_keras._compat import producer
from gloro_keras.layers import BoundedLayer, InvertibleDownsampling, MinMax


@dataclasses.dataclass
class BoundPlan:
    """How a GloroModel bounds its network.

    layers: every body layer (all but the head), in forward order.
    bounded: the `BoundedLayer`s (learned bounds), in forward order.
    constant: product of the fixed Lipschitz constants of the other body layers.
    head: the final linear layer; the margin y_i − y_j has Lipschitz constant
        K·‖w_i − w_j‖ with W = `head_kernel(head)`.
    """

    bounded: list
    constant: float
    head: keras.layers.Layer
    num_classes: int
    layers: list = dataclasses.field(default_factory=list)


def _is_model(layer):
    return isinstance(layer, keras.Model)


def chain_layers(model):
    """The layers of a single-input, single-output, non-branching model, in order."""
    if isinstance(model, keras.Sequential):
        layers = list(model.layers)
    else:
        if not getattr(model, "outputs", None):
            raise ValueError(
                f"GloroModel needs a functional or Sequential network; '{model.name}' is a "
                f"subclassed model whose layer graph cannot be inspected."
            )
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(
                f"GloroModel needs a network with one input and one output; '{model.name}' has "
                f"{len(model.inputs)} inputs and {len(model.outputs)} outputs."
            )
        layers = []
        tensor = model.outputs[0]
        while True:
            op, inputs = producer(tensor)
            if isinstance(op, keras.layers.InputLayer):
                break
            if len(inputs) != 1:
                raise ValueError(
                    f"GloroModel needs a chain of layers, but '{op.name}' has {len(inputs)} "
                    f"inputs (a branch or skip connection). Express residual blocks with "
                    f"gloro_keras.layers.LiResNetBlock or ResNetBlock."
                )
            layers.append(op)
            tensor = inputs[0]
        layers.reverse()
        used = {id(l) for l in layers}
        extra = [
            l.name
            for l in model.layers
            if id(l) not in used and not isinstance(l, keras.layers.InputLayer)
        ]
        if extra:
            raise ValueError(
                f"GloroModel needs a chain of layers; layers {extra} of '{model.name}' are not "
                f"on the path from input to output (branches are not supported)."
            )
    flat = []
    for layer in layers:
        if _is_model(layer):
            flat.extend(chain_layers(layer))
        elif not isinstance(layer, keras.layers.InputLayer):
            flat.append(layer)
    return flat


def _activation_name(layer):
    act = getattr(layer, "activation", None)
    if act is None:
        return "linear"
    return getattr(act, "__name__", str(act))


def pooling_overlap(layer):
    """How many pooling windows of a 'valid' 2-D pooling layer one input can fall in, at most:
    ⌈p_h/s_h⌉·⌈p_w/s_w⌉ (1 when the windows do not overlap); None for padded pooling."""
    if layer.padding != "valid":
        return None
    (ph, pw), (sh, sw) = tuple(layer.pool_size), tuple(layer.strides)
    return math.ceil(ph / sh) * math.ceil(pw / sw)


def constant_lipschitz(layer):
    """Fixed Lipschitz constant of a parameter-free layer, or None if unsupported."""
    L = keras.layers
    if isinstance(layer, (MinMax, InvertibleDownsampling)):
        return 1.0
    if isinstance(layer, (L.Flatten, L.Reshape, L.Permute, L.Identity, L.ZeroPadding2D, L.Cropping2D)):
        return 1.0
    if isinstance(layer, L.Rescaling):
        return float(np.max(np.abs(np.asarray(layer.scale, dtype="float64"))))
    if isinstance(layer, L.ReLU):
        slope = float(getattr(layer, "negative_slope", 0.0) or 0.0)
        return 1.0 if abs(slope) <= 1.0 else abs(slope)
    if isinstance(layer, L.LeakyReLU):
        return max(1.0, abs(float(layer.negative_slope)))
    if isinstance(layer, L.Activation) and _activation_name(layer) in ("linear", "relu", "tanh", "sigmoid"):
        return 0.25 if _activation_name(layer) == "sigmoid" else 1.0
    if isinstance(layer, (L.AveragePooling2D, L.MaxPooling2D)):
        # ‖A‖₂ ≤ √(‖A‖₁‖A‖∞): each output reads a window (∞-norm 1 for the mean, one input for
        # the max), each input is in at most `overlap` windows
        overlap = pooling_overlap(layer)
        if overlap is None:
            return None  # padded pooling: the mean's divisor varies at the border
        if isinstance(layer, L.MaxPooling2D):
            return math.sqrt(overlap)
        return math.sqrt(overlap / (layer.pool_size[0] * layer.pool_size[1]))
    if isinstance(layer, L.GlobalAveragePooling2D):
        h, w = layer.input.shape[1:3]
        return 1.0 / math.sqrt(h * w)
    return None


def head_kernel(layer):
    """(features, classes) matrix of a linear head, as a tensor."""
    if hasattr(layer, "margin_kernel"):
        return layer.margin_kernel()
    return layer.kernel


def head_kernel_np(layer):
    """(features, classes) float64 numpy matrix of a linear head (the certification reference)."""
    if hasattr(layer, "margin_kernel_np"):
        return layer.margin_kernel_np()
    return np.asarray(keras.ops.convert_to_numpy(head_kernel(layer)), dtype=np.float64)


def _is_head(layer):
    if hasattr(layer, "margin_kernel"):
        return True
    return isinstance(layer, keras.layers.Dense) and _activation_name(layer) == "linear"


def analyze(network):
    """Check `network` and return its BoundPlan; errors name the offending layer."""
    if not network.built:
        raise ValueError(
            f"The network '{network.name}' is not built; give it an Input (functional API or "
            f"Sequential([keras.Input(shape), ...]))."
        )
    layers = chain_layers(network)
    if not layers:
        raise ValueError("The network has no layers.")
    head, body = layers[-1], layers[:-1]
    if not _is_head(head):
        raise ValueError(
            f"The last layer of a GloroModel network must be a linear classification head "
            f"(gloro_keras.layers.LLNDense, LipschitzDense, or keras Dense without activation); "
            f"got '{head.name}' ({type(head).__name__})."
        )
    if len(head.output.shape) != 2:
        raise ValueError(f"The head '{head.name}' must output (batch, classes) logits.")
    bounded, constant = [], 1.0
    for layer in body:
        if isinstance(layer, BoundedLayer):
            bounded.append(layer)
            continue
        c = constant_lipschitz(layer)
        if c is None:
            hint = ""
            if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
                hint = (
                    f" Use gloro_keras.layers.{'LipschitzDense' if isinstance(layer, keras.layers.Dense) else 'LipschitzConv2D'}"
                    f" (a Lipschitz-bounded drop-in) and a separate MinMax activation."
                )
            raise ValueError(
                f"Layer '{layer.name}' ({type(layer).__name__}) has no Lipschitz bound that a "
                f"GloroModel can use.{hint}"
            )
        constant *= c
    num_classes = int(head.output.shape[-1])
    if num_classes < 2:
        raise ValueError(f"A GloroModel needs at least 2 classes; the head outputs {num_classes}.")
    return BoundPlan(bounded=bounded, constant=constant, head=head, num_classes=num_classes, layers=body)
