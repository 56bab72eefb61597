"""Schedules for GloRo training: the training radius ε_train and the learning rate.

ε schedules are plain Python (they run between steps, in callbacks); the learning-rate
schedule is a `keras.optimizers.schedules.LearningRateSchedule` evaluated inside the
optimizer step, so it works on every backend and is saved with the optimizer.

ε schedule strings
------------------
A schedule maps the training progress `p = t / T` (t = epochs done, fractional within an
epoch; T = total epochs) to a **multiple of the test radius ε**. `EpsilonSchedule(spec)`
accepts:

``"paper"``
    The paper's (appendix A.1) `ε_train(t) = (min(2t/T, 1)·1.4 + 0.1)·ε`: 0.1ε at the
    start, linear to 1.5ε at T/2, then flat. Same as ``"[0.1]-linear-[50%:1.5]"``.
``"constant"`` (also ``"fixed"``)
    ε throughout (``"[1.0]"``).
``"linear"``
    0.1ε → 1.0ε linearly over the first half, then flat (``"[0.1]-linear-[50%:1.0]"``).
``"log"`` (also ``"logarithmic"``)
    0.01ε → 1.0ε geometrically over the first half, then flat (``"[0.01]-log-[50%:1.0]"``).
keypoint strings, in the style of the original gloro library's schedule strings
    ``"[v0]-shape-[p1:v1]-shape-[p2:v2]..."``: start at ``v0``·ε; each
    ``-shape-[p:v]`` segment moves from the previous value to ``v``·ε, reached at progress
    ``p``, then the value is held after the last keypoint. ``p`` is a percentage of the
    training (``"50%"``) or a fraction (``"0.5"``); keypoints must not go backwards.
    Shapes:

    * ``linear`` (also ``lin``): straight line in ε.
    * ``log`` (also ``logarithmic``, ``exp``, ``geometric``): straight line in log ε, i.e.
      ε grows by the same factor per step (needs positive end values). This is our
      reading of the original gloro's "log" segment: a slow start at a tiny radius,
      multiplying up to the target.
    * ``step`` (also ``constant``, ``hold``): keep the previous value, jump to ``v`` at ``p``.

    Examples: ``"[0.01]-log-[50%:1.1]"`` = 0.01ε at the start, ×110 geometrically until
    half of training (1.1ε), then 1.1ε to the end. ``"[0]-linear-[0.25:1]-linear-[75%:1.5]"``
    = ramp 0 → ε over the first quarter, then ε → 1.5ε until three quarters, then hold.
    A plain number (``"1.2"``) is a constant multiple.

A callable `f(progress) -> multiple` is accepted as well.
"""
from __future__ import annotations

import math
import re

import keras
from keras import ops

__all__ = [
    "EpsilonSchedule",
    "WarmupCosine",
    "paper_epsilon",
    "EPSILON_SCHEDULES",
]

EPSILON_SCHEDULES = {
    "paper": "[0.1]-linear-[50%:1.5]",
    "constant": "[1.0]",
    "fixed": "[1.0]",
    "linear": "[0.1]-linear-[50%:1.0]",
    "log": "[0.01]-log-[50%:1.0]",
    "logarithmic": "[0.01]-log-[50%:1.0]",
}

_SHAPES = {
    "linear": "linear", "lin": "linear",
    "log": "log", "logarithmic": "log", "exp": "log", "geometric": "log",
    "step": "step", "constant": "step", "hold": "step",
}
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_START = re.compile(rf"^\[\s*(?P<v>{_NUM})\s*\]")
_SEGMENT = re.compile(rf"^-(?P<shape>[a-zA-Z]+)-\[\s*(?P<p>{_NUM})\s*(?P<pct>%?)\s*:\s*(?P<v>{_NUM})\s*\]")


def paper_epsilon(t, total, epsilon=1.0):
    """The paper's ε_train at (possibly fractional) epoch t of `total`: (min(2t/T,1)·1.4+0.1)·ε."""
    if total <= 0:
        raise ValueError(f"total epochs must be > 0; got {total}")
    return (min(2.0 * t / total, 1.0) * 1.4 + 0.1) * epsilon


def _parse(spec):
    """Parse a keypoint string into (v0, [(shape, p, v), ...])."""
    text = spec.replace(" ", "")
    m = _START.match(text)
    if not m:
        raise ValueError(
            f"bad epsilon schedule {spec!r}: expected a name ({', '.join(sorted(EPSILON_SCHEDULES))}), "
            "a number, or a keypoint string like '[0.01]-log-[50%:1.1]'"
        )
    v0 = float(m.group("v"))
    rest = text[m.end():]
    segments = []
    last_p = 0.0
    while rest:
        m = _SEGMENT.match(rest)
        if not m:
            raise ValueError(
                f"bad epsilon schedule {spec!r}: cannot parse {rest!r}; segments look like "
                "'-linear-[50%:1.5]' (shape linear|log|step, progress as '50%' or '0.5', value "
                "as a multiple of epsilon)"
            )
        shape = _SHAPES.get(m.group("shape").lower())
        if shape is None:
            raise ValueError(
                f"bad epsilon schedule {spec!r}: unknown shape {m.group('shape')!r} "
                f"(use one of {', '.join(sorted(_SHAPES))})"
            )
        p = float(m.group("p")) / (100.0 if m.group("pct") else 1.0)
        v = float(m.group("v"))
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"bad epsilon schedule {spec!r}: progress {p} is outside [0, 100%]")
        if p < last_p:
            raise ValueError(f"bad epsilon schedule {spec!r}: keypoints must not go backwards")
        segments.append((shape, p, v))
        last_p = p
        rest = rest[m.end():]
    values = [v0] + [v for _, _, v in segments]
    if any(v < 0 or not math.isfinite(v) for v in values):
        raise ValueError(f"bad epsilon schedule {spec!r}: multiples must be finite and >= 0")
    prev = v0
    for shape, _, v in segments:
        if shape == "log" and (prev <= 0 or v <= 0):
            raise ValueError(f"bad epsilon schedule {spec!r}: a 'log' segment needs positive end values")
        prev = v
    return v0, segments


class EpsilonSchedule:
    """Multiple of ε as a function of training progress p ∈ [0, 1] (see module docs).

    >>> s = EpsilonSchedule("paper")
    >>> s(0.0), s(0.25), s(0.5), s(1.0)
    (0.1, 0.8, 1.5, 1.5)
    """

    def __init__(self, spec="paper"):
        self.spec = spec
        if callable(spec):
            self._fn = spec
            return
        if isinstance(spec, (int, float)):
            spec = f"[{float(spec)}]"
        if not isinstance(spec, str):
            raise TypeError(f"epsilon schedule must be a string, number or callable; got {type(spec).__name__}")
        text = spec.strip()
        text = EPSILON_SCHEDULES.get(text.lower(), text)
        if re.fullmatch(_NUM, text):
            text = f"[{text}]"
        self.start, self.segments = _parse(text)
        self._fn = self._evaluate

    def _evaluate(self, p):
        value, p0 = self.start, 0.0
        for shape, p1, v1 in self.segments:
            if p < p1:
                if shape == "step" or p1 <= p0:
                    return value
                s = (p - p0) / (p1 - p0)
                if shape == "linear":
                    return value + (v1 - value) * s
                return value * (v1 / value) ** s
            value, p0 = v1, p1
        return value

    def __call__(self, progress):
        p = min(max(float(progress), 0.0), 1.0)
        return float(self._fn(p))

    def __repr__(self):
        return f"EpsilonSchedule({self.spec!r})"


@keras.saving.register_keras_serializable(package="gloro_keras")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak_lr` over `warmup_steps`, then per-step cosine decay to
    `final_lr` at `total_steps` (held there afterwards).

    lr(s) = peak·(s+1)/warmup                               for s < warmup
          = final + (peak − final)·½(1 + cos(π·(s − warmup)/(total − warmup)))  otherwise

    (s is the optimizer's 0-based step counter, so the first step already uses a
    non-zero rate.) The paper: peak 1e-3, 20 warm-up epochs, cosine to ≈0 at the end.
    """

    def __init__(self, peak_lr, total_steps, warmup_steps=0, final_lr=0.0, name="WarmupCosine"):
        super().__init__()
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1; got {total_steps}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0; got {warmup_steps}")
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(min(warmup_steps, total_steps))
        self.final_lr = float(final_lr)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak, final = self.peak_lr, self.final_lr
        warm = float(max(self.warmup_steps, 1))
        decay = float(max(self.total_steps - self.warmup_steps, 1))
        warm_lr = peak * (step + 1.0) / warm
        s = ops.clip((step - self.warmup_steps) / decay, 0.0, 1.0)
        cos_lr = final + (peak - final) * 0.5 * (1.0 + ops.cos(math.pi * s))
        if self.warmup_steps == 0:
            return cos_lr
        return ops.where(step < self.warmup_steps, warm_lr, cos_lr)

    def get_config(self):
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "final_lr": self.final_lr,
            "name": self.name,
        }
