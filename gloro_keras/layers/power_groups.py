"""Training-time power iteration of several layers, same-shaped ones as one vectorized computation.

A LiResNet's L backbone blocks run the same steps on same-shaped kernels and iterates. Stacked
(kernels (G, k, k, W, W), iterates (G, 1, H, W, W)) and mapped with `keras.ops.vectorized_map`,
each step's G one-example convolutions become one grouped convolution: the same values and
gradients (up to float32 summation order) in G times fewer, larger kernels. That pays where the
bound is launch-bound, i.e. on a GPU: there the 18 blocks of an L18W256 run hundreds of tiny
kernels in sequence (bench/README.md). On a CPU the convolutions are compute-bound and separate
ones were as fast.

JAX only: `jax.vmap` differentiates the blocks' hand-written gradient (`ops.custom_gradient`)
correctly; TensorFlow's `vectorized_map` returned wrong gradients for it (checked with
TensorFlow 2.21: `bench/ab_power_groups.py --check-only`), so there every layer runs its own iteration.
"""
import keras
from keras import ops

from gloro_keras.layers.bounded_layer import check_gradient
from gloro_keras.ops.norms import l2_normalize

GROUPINGS = ("auto", True, False)


def check_grouping(group):
    """Validates a `group_power_iterations` value ("auto", True or False)."""
    if not any(group is g or (isinstance(g, str) and group == g) for g in GROUPINGS):
        raise ValueError(f"group_power_iterations must be 'auto', True or False. Received: {group!r}")
    if group is True and keras.backend.backend() != "jax":
        raise ValueError(
            "group_power_iterations=True needs the JAX backend (TensorFlow's vectorized_map does not "
            f"differentiate the bound's custom gradient correctly); this is {keras.backend.backend()!r}. "
            "Use 'auto' or False.")
    return group


def grouping_pays():
    """Whether `"auto"` groups: on JAX with an accelerator (GPU or TPU) as the default device."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() != "cpu"


def power_estimates(layers, training=False, gradient="last", group="auto"):
    """[layer.power_estimate(training, gradient) for layer in layers], except that in a training
    call layers with equal `power_group_key()`s advance their iterates together, vectorized (see
    the module docstring). `group`: True, False, or "auto" (`grouping_pays()`)."""
    check_gradient(gradient)
    check_grouping(group)
    if group == "auto":
        group = grouping_pays()
    sigmas = [None] * len(layers)
    if training and group:
        buckets = {}
        for i, layer in enumerate(layers):
            key = getattr(layer, "power_group_key", lambda: None)()
            if key is not None and layer.power_iterations > 0:
                buckets.setdefault(key, []).append(i)
        for members in buckets.values():
            if len(members) > 1:
                for i, sigma in zip(members, _advance_together([layers[i] for i in members], gradient)):
                    sigmas[i] = sigma
    return [s if s is not None else layer.power_estimate(training=training, gradient=gradient)
            for s, layer in zip(sigmas, layers)]


def _advance_together(layers, gradient):
    kernels = ops.stack([layer.linear_kernel() for layer in layers])
    iterates = ops.stack([l2_normalize(ops.convert_to_tensor(layer.iterate)) for layer in layers])
    first = layers[0]  # equal keys: every member's `advance` is this one's on its own tensors
    sigmas, iterates = ops.vectorized_map(lambda ku: first.advance(ku[0], ku[1], gradient), (kernels, iterates))
    for i, layer in enumerate(layers):
        layer.iterate.assign(ops.stop_gradient(iterates[i]))
    return [sigmas[i] for i in range(len(layers))]
