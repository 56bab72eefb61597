"""The benchmark scripts that must be ready to run elsewhere: bench/gpu_check.sh (CPU fallback)."""
import json
import os
import subprocess

import pytest

from conftest import REPO


@pytest.mark.slow
def test_gpu_check_runs_its_cpu_fallback_and_reports_every_backend(tmp_path):
    env = dict(os.environ, PYTHON=os.environ.get("PYTHON", __import__("sys").executable))
    r = subprocess.run(["bash", "bench/gpu_check.sh", "--config", "L1W8", "--rounds", "2", "--steps", "1",
                        "--backends", "tensorflow,jax", "--out", str(tmp_path)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["config"] == "L1W8"
    for backend in ("tensorflow", "jax"):
        b = result["backends"][backend]
        if "skipped" in b:  # not installed here
            continue
        for v in ("plain_float32", "gloro_float32", "plain_bfloat16", "gloro_bfloat16"):
            assert b["variants"][v]["images_per_s"] > 0, (backend, v)
            # as GloroModel.compile defaults: XLA on JAX (whose jit_compile=False runs eagerly), graph mode on TF
            assert b["variants"][v]["jit_compile"] is (backend == "jax"), (backend, v)
        assert b["gloro_over_plain_float32"] > 0.5
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| tensorflow | float32 |" in table and "PyTorch" in table
