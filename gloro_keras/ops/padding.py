"""Convolution geometry: pairs and explicit zero padding."""
import numbers


def as_pair(value, name):
    """An int or a pair of ints as `(a, b)`.

    Example:
    >>> as_pair(3, "strides"), as_pair((1, 2), "strides")
    ((3, 3), (1, 2))
    """
    if isinstance(value, numbers.Integral):
        return (int(value), int(value))
    try:
        pair = tuple(int(a) for a in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints. Received: {name}={value!r}") from None
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints. Received: {name}={value!r}")
    return pair


def explicit_padding(padding):
    """`p`, `(ph, pw)` or `((top, bottom), (left, right))` as `((t, b), (l, r))`, all >= 0."""
    if isinstance(padding, numbers.Integral):
        pads = ((int(padding),) * 2,) * 2
    else:
        try:
            rows, cols = padding
            pads = tuple(as_pair(p, "padding") for p in (rows, cols))
        except (TypeError, ValueError):
            raise ValueError("padding must be an int, (ph, pw) or ((top, bottom), (left, right)). "
                             f"Received: padding={padding!r}") from None
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"padding must be >= 0. Received: padding={padding!r}")
    return pads


def normalize_padding(padding, kernel_size, strides, spatial):
    """'valid' | 'same' | int | (ph, pw) | ((t, b), (l, r)) as explicit `((t, b), (l, r))`.

    'same' follows TensorFlow/Keras: output = ceil(n / s), the extra row/column at the end.
    """
    if not isinstance(padding, str):
        return explicit_padding(padding)
    mode = padding.lower()
    if mode == "valid":
        return ((0, 0), (0, 0))
    if mode != "same":
        raise ValueError("padding must be 'valid', 'same', an int or ((t, b), (l, r)). "
                         f"Received: padding={padding!r}")
    pads = []
    for n, k, s in zip(spatial, kernel_size, strides):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)
