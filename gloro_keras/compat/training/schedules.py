"""The original gloro's schedule strings (`gloro.training.schedules.Schedule`).

A schedule is a list of per-epoch values: multiples of `base_value`, written as sections
`[value]` or `[time:value]` (time: an epoch, or `P%` of the duration) joined by transitions
`-` (linear), `-exp-`, `-log-`, `-cos-`, or nothing (a step). Names: `fixed`, `linear`
(`[0.]-[1.]`), `linear_half` (`[0.]-[50%:1.]-[1.]`), `linear_decay`, `linear_decay_after_half`,
`logarithmic` (`[0.01]-log-[1.]`), `logarithmic_half`, `decay…` (`[1.]-exp-[0.001]`),
`cos…` (`[1.]-cos-[0.]`). Epoch e of E gets the value at i = e − t₀ of its segment (t₀, t₁):
linear s + (t − s)·i/n, exp s·(t/s)^(i/n), log ln(eˢ + (eᵗ − eˢ)·i/n), cos t + (s − t)·½(1 +
cos(πi/n)), n = t₁ − t₀ (the values scaled by base_value first).
"""
import math
import re

NAMED = {
    "linear": "[0.]-[1.]",
    "linear_half": "[0.]-[50%:1.]-[1.]",
    "linear_decay": "[1.]-[0.]",
    "linear_decay_after_half": "[1.]-[50%:1.]-[0.]",
    "logarithmic": "[0.01]-log-[1.]",
    "logarithmic_half": "[0.01]-log-[50%:1.]-[1.]",
}
_SECTION = re.compile(r"\[(?:(?P<time>[0-9.]+%?):)?(?P<value>[^\]:]+)\]")
_TRANSITION = re.compile(r"^(-|-exp-|-log-|-cos-|)$")


def _interpolate(kind, s, t, i, n):
    if kind == "-":
        return s + (t - s) * i / n
    if kind == "-exp-":
        return s * math.exp(math.log(t / s) * i / n)
    if kind == "-log-":
        return math.log((math.exp(t) - math.exp(s)) * i / n + math.exp(s))
    if kind == "-cos-":
        return t + (s - t) * 0.5 * (math.cos(math.pi * i / n) + 1)
    return s  # a step: hold the start value


class Schedule:
    """`Schedule(schedule_string, duration, base_value=1.)`: `schedule[e]` (clamped to the
    last value past the end), `len(schedule)`, `as_list()`."""

    def __init__(self, schedule_string, duration, base_value=1.0):
        self.schedule_string = schedule_string
        text = schedule_string.strip()
        if text == "fixed":
            self._values = [float(base_value)]
            return
        if text.startswith("decay"):
            text = "[1.]-exp-[0.001]"
        elif text.startswith("cos"):
            text = "[1.]-cos-[0.]"
        text = NAMED.get(text, text)
        sections = list(_SECTION.finditer(text))
        if not sections:
            raise ValueError(f"invalid schedule string: {schedule_string!r}")
        transitions = [text[a.end():b.start()] for a, b in zip(sections, sections[1:])]
        if text[:sections[0].start()] or text[sections[-1].end():] or not all(
                _TRANSITION.match(t) for t in transitions):
            raise ValueError(f"invalid schedule string: {schedule_string!r}")
        duration = int(duration)
        points = []
        for k, m in enumerate(sections):
            value = float(m.group("value")) * float(base_value)
            time = m.group("time")
            if time is None:
                if 0 < k < len(sections) - 1:
                    raise ValueError(f"invalid section contents in {schedule_string!r}: a middle section needs a time")
                time = 0 if k == 0 else duration
            elif time.endswith("%"):
                time = int(float(time[:-1]) / 100 * duration)
            else:
                time = int(time)
            if points and time < points[-1][0]:
                raise ValueError(f"invalid time specification in {schedule_string!r}: times must not decrease")
            points.append((time, value))
        values = []
        for e in range(max(duration, 1)):
            seg = max((k for k in range(len(points) - 1) if points[k][0] <= e), default=None)
            if seg is None or e >= points[-1][0]:
                values.append(points[-1][1] if e >= points[-1][0] else points[0][1])
                continue
            (t0, s), (t1, t) = points[seg], points[seg + 1]
            values.append(_interpolate(transitions[seg], s, t, e - t0, t1 - t0) if t1 > t0 else t)
        self._values = values

    def __getitem__(self, epoch):
        return self._values[min(int(epoch), len(self._values) - 1)]

    def __len__(self):
        return len(self._values)

    def as_list(self):
        return list(self._values)

    def __str__(self):
        return f"Schedule({len(self)}):{self.schedule_string}"


__all__ = ["Schedule"]
