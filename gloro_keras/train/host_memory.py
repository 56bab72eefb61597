"""Transparent huge pages for XLA:CPU's per-step buffers (JAX on a CPU).

XLA:CPU allocates a jitted training step's temporaries as one block (415 MB for an L6W64 GloRo
step, batch 256) and frees it when the step ends. glibc's `malloc` maps every block over 32 MiB
fresh from the kernel and unmaps it on `free`, so each step faults the block in again, 4 KiB at a
time: ≈ 101 000 page faults and ≈ 180 ms of kernel time per L6W64 step on an AMD EPYC, 17 % of
the step's CPU time. Under the glibc tunable `glibc.malloc.hugetlb=1` (glibc ≥ 2.35) `malloc`
advises the kernel to back its mappings with 2 MiB transparent huge pages: ≈ 700 faults per step,
and the step's tensors need 512× fewer TLB entries. JAX step 0.83× at L6W64 and L6W128, fresh
processes alternating; TensorFlow's step unchanged (`bench/README.md`, 2026-12-05).

glibc reads tunables only when a process starts. `gloro-train`, `gloro-certify` and the `bench/`
scripts restart themselves with it before importing Keras (`_gloro_keras_cli.host_memory_defaults`);
library users start Python with it:

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 KERAS_BACKEND=jax python train.py

It changes nothing computed. This module imports only the standard library, so the scripts can
load it by path before importing Keras.
"""
import importlib.metadata
import json
import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "GLORO_KERAS_HUGE_PAGES"  # =0: leave glibc's malloc as it is
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
# pip distributions that give JAX a default device other than the CPU
_ACCELERATOR_PLUGINS = ("jax-cuda", "jax-rocm", "jax-tpu", "libtpu", "jax-metal")


def keras_backend(environ=None):
    """The Keras backend a process will use, without importing Keras: `KERAS_BACKEND`, else
    the `"backend"` of `$KERAS_HOME/keras.json` (default `~/.keras`), else "tensorflow"."""
    environ = os.environ if environ is None else environ
    if environ.get("KERAS_BACKEND"):
        return environ["KERAS_BACKEND"]
    home = environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def jax_default_is_cpu(environ=None):
    """Whether JAX's default device will be a CPU: `JAX_PLATFORMS` names cpu first, or it is
    unset and no accelerator plugin (jax-cuda*, jax-rocm*, libtpu, ...) is installed."""
    environ = os.environ if environ is None else environ
    platforms = environ.get("JAX_PLATFORMS") or environ.get("JAX_PLATFORM_NAME")
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in importlib.metadata.distributions()}
    return not any(n.startswith(_ACCELERATOR_PLUGINS) for n in names)


def transparent_huge_pages(path=THP_SETTING):
    """The kernel's THP mode ("always", "madvise", "never"), or None where it cannot be read."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def why_not(backend=None, environ=None, thp=None):
    """"" when the tunable pays here, else why `huge_page_environment` adds nothing.

    Args:
        backend: the Keras backend; default `keras_backend(environ)`.
        environ: the environment to read; default `os.environ`.
        thp: the kernel's THP mode; default `transparent_huge_pages()`.
    """
    environ = os.environ if environ is None else environ
    backend = backend or keras_backend(environ)
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{OPT_OUT}={environ[OPT_OUT]}"
    if backend != "jax":
        return f"the Keras backend is {backend!r}, not 'jax'"
    if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES already sets glibc.malloc.hugetlb"
    libc, version = platform.libc_ver()
    if not sys.platform.startswith("linux") or libc != "glibc":
        return "not Linux with glibc"
    if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < (2, 35):
        return f"glibc {version} predates the hugetlb tunable (2.35)"
    thp = transparent_huge_pages() if thp is None else thp
    if thp != "madvise":  # "always": the kernel gives huge pages anyway; "never" or unknown: none to give
        return f"transparent huge pages are {thp or 'unavailable'!r}, not 'madvise'"
    if not jax_default_is_cpu(environ):
        return "JAX's default device is an accelerator"
    return ""


def huge_page_environment(backend=None, environ=None, thp=None):
    """The variables to add to the environment of a process that should start with the tunable:
    `{"GLIBC_TUNABLES": <the current value>:glibc.malloc.hugetlb=1}`, or {} (`why_not`)."""
    environ = os.environ if environ is None else environ
    if why_not(backend, environ, thp):
        return {}
    current = environ.get("GLIBC_TUNABLES", "")
    return {"GLIBC_TUNABLES": f"{current}:{TUNABLE}" if current else TUNABLE}
