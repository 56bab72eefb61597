"""Helpers for bench/run.py: environment capture, side-by-side timing, formatting.

Nothing here imports TensorFlow at module level, so the memory child processes and the
argument parsing stay cheap.
"""
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


# -- environment ------------------------------------------------------------------------
def uptime():
    """`uptime` output (falls back to os.getloadavg())."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:  # pragma: no cover - uptime missing
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def _status_mb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def vmrss_mb():
    """Current resident set size (MB) from /proc/self/status."""
    return _status_mb("VmRSS")


def vmhwm_mb():
    """Peak resident set size of this address space (MB), /proc/self/status VmHWM."""
    return _status_mb("VmHWM")


def maxrss_mb():
    """Peak resident set size of this process so far (MB; ru_maxrss is KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment(tf, keras):
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        affinity = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
    }


# -- timing -----------------------------------------------------------------------------
def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def round_robin(fns, repeats, calls=1):
    """Time every callable `calls` times per round for `repeats` rounds, rotating the order
    each round so no variant always runs first (or right after the same neighbour).

    Returns {name: {"wall": [s per call, one per round], "cpu": [process CPU s per call]}}.
    Process CPU time (all threads) is insensitive to other processes taking cores away,
    which makes it the robust cross-check on a shared machine.
    """
    names = list(fns)
    times = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            c = time.process_time()
            t = time.perf_counter()
            for _ in range(calls):
                fns[n]()
            times[n]["wall"].append((time.perf_counter() - t) / calls)
            times[n]["cpu"].append((time.process_time() - c) / calls)
    return times


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def paired(num, den):
    """Ratio num ÷ den of two round_robin entries timed side by side.

    median/min/max: of the per-round wall-time ratios; ratio_of_medians; fastest_ratio:
    fastest num run ÷ fastest den run (contention only ever adds time); cpu_*: the same
    per-round statistics on process CPU time.
    """
    rs = [a / b for a, b in zip(num["wall"], den["wall"])]
    cs = [a / b for a, b in zip(num["cpu"], den["cpu"])]
    return {"median": med(rs), "min": min(rs), "max": max(rs),
            "ratio_of_medians": med(num["wall"]) / med(den["wall"]),
            "fastest_ratio": min(num["wall"]) / min(den["wall"]),
            "cpu_median": med(cs), "cpu_min": min(cs), "cpu_max": max(cs)}


# -- goals and formatting ---------------------------------------------------------------
def status(value, op, goal, bar=None):
    if value is None or value != value:
        return "n/a"
    ok = value <= goal if op == "<=" else value >= goal
    if ok:
        return "PASS"
    if bar is not None and (value <= bar if op == "<=" else value >= bar):
        return "FAIL (bar ok)"
    return "FAIL"


def fmt(x, nd=3):
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if x != x:
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{nd}f}"


def spread(p, cpu=False):
    """'1.07 [1.03–1.12]' for a paired() result (wall time, or CPU time)."""
    k = "cpu_" if cpu else ""
    return f"{fmt(p[k + 'median'])} [{fmt(p[k + 'min'])}–{fmt(p[k + 'max'])}]"


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
