"""Where the `gloro-train` and `gloro-certify` console scripts start.

They start here, outside the `gloro_keras` package, because importing the package imports
TensorFlow, and two things must happen before that:

* **Environment defaults** (`environment_defaults`), which TensorFlow reads once, at import.
  `TF_ENABLE_ONEDNN_OPTS=1`: oneDNN's CPU kernels. TensorFlow turns them on by itself only on
  CPUs with AVX-512-class features; on an AVX2 CPU (AMD EPYC, bench/results) they made the L6W64
  GloRo training step 1.27x faster (conv backprop-input 49 -> 115 GFLOP/s). The certificates do
  not depend on it: their rounding analysis holds for any summation order (docs/soundness.md).
  A value already set in the environment always wins.
* **Huge pages on JAX on a CPU** (`host_memory_defaults`, `gloro_keras/train/host_memory.py`):
  the process restarts itself once with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, which glibc reads
  only at start, so XLA:CPU's per-step buffers are not faulted in 4 KiB at a time every step (JAX
  step 0.83x at L6W64 and L6W128). Not on TensorFlow, nor when the environment sets it already or
  `GLORO_KERAS_HUGE_PAGES=0`.
* **`gloro-train --list_presets`** answers from the preset table, literal data in
  `gloro_keras/train/presets.py` loaded by path, without importing TensorFlow (a fraction of a
  second instead of several seconds).

`python -m gloro_keras.cli.train` skips all three: it imports the package (and TensorFlow) first.
Library users set the variables themselves, before `import tensorflow`/`keras`/`gloro_keras`:
``TF_ENABLE_ONEDNN_OPTS=1 python my_script.py``, on JAX on a CPU
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1 KERAS_BACKEND=jax python my_script.py``.
"""
import importlib
import importlib.util
import os
import sys

ENVIRONMENT_DEFAULTS = {"TF_ENABLE_ONEDNN_OPTS": "1"}


def environment_defaults(environ=None):
    """Set each of `ENVIRONMENT_DEFAULTS` that is not set yet; returns the names it set."""
    environ = os.environ if environ is None else environ
    set_here = [k for k in ENVIRONMENT_DEFAULTS if k not in environ]
    for k in set_here:
        environ[k] = ENVIRONMENT_DEFAULTS[k]
    return set_here


def _asks_for_presets(argv):
    """True when the command line is `--list_presets` (or `=true`/`=1`) and nothing else."""
    return len(argv) == 2 and argv[1] in ("--list_presets", "--list_presets=true", "--list_presets=True",
                                           "--list_presets=1")


def _load_train_module(name):
    """`gloro_keras.train.<name>`, loaded from its file without importing `gloro_keras` (the
    module imports only the standard library); None when the package is not found."""
    spec = importlib.util.find_spec("gloro_keras")  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "train", f"{name}.py")
    module_spec = importlib.util.spec_from_file_location(f"_gloro_keras_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def host_memory_defaults(environ=None, execv=os.execv):
    """Restart this process with `gloro_keras.train.host_memory.huge_page_environment()` added to
    its environment when that is not empty (JAX on a CPU); return otherwise. Call it before
    importing Keras: the restart repeats everything the process did so far."""
    environ = os.environ if environ is None else environ
    module = _load_train_module("host_memory")
    extra = module.huge_page_environment(environ=environ) if module else {}
    if extra:
        environ.update(extra)
        sys.stdout.flush()
        sys.stderr.flush()
        execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _run(module_name, argv=None):
    argv = list(sys.argv if argv is None else argv)
    environment_defaults()
    if module_name == "gloro_keras.cli.train" and _asks_for_presets(argv):
        presets = _load_train_module("presets")
        if presets is not None:
            print(presets.format_presets())
            raise SystemExit(0)
    host_memory_defaults()
    importlib.import_module(module_name).run(argv)


def train(argv=None):
    """`gloro-train` (gloro_keras.cli.train)."""
    _run("gloro_keras.cli.train", argv)


def certify(argv=None):
    """`gloro-certify` (gloro_keras.cli.certify)."""
    _run("gloro_keras.cli.certify", argv)
