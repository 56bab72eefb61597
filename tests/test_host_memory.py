"""Huge pages for XLA:CPU's step buffers: when the scripts restart with glibc's hugetlb tunable,
and that a restarted JAX process stops faulting its large buffers in page by page."""
import json
import os
import subprocess
import sys

import pytest

import _gloro_keras_cli as launcher
from gloro_keras.train import host_memory as hm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX_CPU = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}


def test_the_tunable_is_added_only_for_jax_on_a_cpu_with_madvised_huge_pages():
    if hm.why_not(backend="jax", environ=JAX_CPU, thp="madvise").startswith(("not Linux", "glibc ")):
        pytest.skip("needs Linux with glibc >= 2.35")
    assert hm.huge_page_environment(environ=JAX_CPU, thp="madvise") == {"GLIBC_TUNABLES": hm.TUNABLE}
    # appended to the user's other tunables, never replacing them
    env = dict(JAX_CPU, GLIBC_TUNABLES="glibc.pthread.rseq=0")
    assert hm.huge_page_environment(environ=env, thp="madvise") == {
        "GLIBC_TUNABLES": "glibc.pthread.rseq=0:glibc.malloc.hugetlb=1"}
    for environ, thp, reason in [
        ({"KERAS_BACKEND": "tensorflow"}, "madvise", "'tensorflow', not 'jax'"),
        (dict(JAX_CPU, JAX_PLATFORMS="cuda,cpu"), "madvise", "accelerator"),
        (dict(JAX_CPU, GLIBC_TUNABLES="glibc.malloc.hugetlb=0"), "madvise", "already sets"),
        (dict(JAX_CPU, GLORO_KERAS_HUGE_PAGES="0"), "madvise", "GLORO_KERAS_HUGE_PAGES=0"),
        (JAX_CPU, "always", "'always'"),
        (JAX_CPU, "never", "'never'"),
    ]:
        assert reason in hm.why_not(environ=environ, thp=thp), (environ, thp)
        assert hm.huge_page_environment(environ=environ, thp=thp) == {}


def test_keras_backend_is_read_like_keras_without_importing_it(tmp_path):
    assert hm.keras_backend({"KERAS_BACKEND": "jax"}) == "jax"
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax", "floatx": "float32"}))
    assert hm.keras_backend({"KERAS_HOME": str(tmp_path)}) == "jax"
    assert hm.keras_backend({"KERAS_HOME": str(tmp_path / "absent")}) == "tensorflow"


def test_the_launcher_restarts_with_the_tunable_and_only_then():
    calls = []
    env = dict(JAX_CPU)
    if hm.huge_page_environment(environ=env):
        launcher.host_memory_defaults(env, execv=lambda path, argv: calls.append((path, argv)))
        assert calls == [(sys.executable, [sys.executable, *sys.orig_argv[1:]])]
        assert hm.TUNABLE in env["GLIBC_TUNABLES"]
        launcher.host_memory_defaults(env, execv=lambda path, argv: calls.append((path, argv)))
        assert len(calls) == 1  # the restarted process finds the tunable set and goes on
    for env in ({"KERAS_BACKEND": "tensorflow"}, dict(JAX_CPU, GLORO_KERAS_HUGE_PAGES="0")):
        launcher.host_memory_defaults(env, execv=lambda path, argv: calls.append((path, argv)))
        assert "GLIBC_TUNABLES" not in env
    assert len(calls) <= 1


# A jitted function whose temporary (x @ xᵀ, 64 MiB) is over glibc's 32 MiB mmap threshold: the
# page faults of its later calls, after the launcher's restart (or not). The fewest per call over 5
# rounds of 3 calls: a 2 MiB page is the kernel's to give (defrag "madvise" compacts on the fault),
# and under another process's memory pressure a round can fall back to 4 KiB pages (once in CI, the
# other pytest worker running: 980 a call); without the tunable every round faults 4 KiB pages.
_FAULTS = """
import os, resource, sys
import _gloro_keras_cli
_gloro_keras_cli.host_memory_defaults()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.tanh(x @ x.T) @ x))
x = jnp.ones((4096, 256), jnp.float32) / 256
for _ in range(2):
    f(x).block_until_ready()
rounds = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        f(x).block_until_ready()
    rounds.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
print("FAULTS", min(rounds), os.environ.get("GLIBC_TUNABLES", ""))
"""


def test_a_restarted_jax_process_reuses_huge_pages_instead_of_faulting_4k_pages():
    pytest.importorskip("jax")
    if hm.why_not(environ=JAX_CPU):
        pytest.skip(f"the tunable does not apply here: {hm.why_not(environ=JAX_CPU)}")
    faults = {}
    for opt_out in ("0", "1"):
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        env.update(JAX_CPU, GLORO_KERAS_HUGE_PAGES=opt_out, PYTHONPATH=REPO)
        r = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("FAULTS")]
        assert len(line) == 1, r.stdout  # printed once: by the restarted process only
        _, n, tunables = (line[0].split() + [""])[:3]
        assert (tunables == hm.TUNABLE) == (opt_out == "1")
        faults[opt_out] = float(n)
    # 64 MiB in 4 KiB pages: 16 384 faults a call without; 2 MiB pages: a few dozen with
    assert faults["0"] > 8000, faults
    assert faults["1"] < faults["0"] / 20, faults
