"""`train_dtype="auto"`: bfloat16 training exactly where the hardware has bfloat16 arithmetic."""
import keras
import pytest

from gloro_keras.train.mixed_precision import bfloat16_hardware, cpu_flags, resolve_train_dtype

AMX = {"fpu", "avx2", "avx512f", "amx_bf16", "amx_tile"}
AVX2 = {"fpu", "avx2", "fma"}


@pytest.mark.parametrize("flags,gpus,onednn,expected", [
    (AVX2, [], False, "float32"),            # AMD EPYC (AVX2): bfloat16 measured 10.5x slower
    (AVX2, [], True, "float32"),
    (AMX, [], False, "float32"),             # TensorFlow's own kernels emulate bfloat16
    (AMX, [], True, "bfloat16"),             # Xeon with AMX, oneDNN on
    ({"avx512_bf16"}, [], True, "bfloat16"),
    (AVX2, [(9, 0)], False, "bfloat16"),     # H100/H200
    (AVX2, [(8, 0), (8, 6)], False, "bfloat16"),
    (AMX, [(7, 0)], True, "float32"),        # V100: no bfloat16 tensor cores; the GPU decides
])
def test_auto_picks_bfloat16_only_on_bfloat16_hardware(flags, gpus, onednn, expected):
    if keras.backend.backend() != "tensorflow" and not gpus and expected == "bfloat16":
        expected = "float32"  # JAX's CPU kernels emulate bfloat16
    dtype, why = resolve_train_dtype("auto", flags=flags, gpus=gpus, onednn=onednn)
    assert dtype == expected, why
    assert why.startswith("auto: ")
    assert bfloat16_hardware(flags=flags, gpus=gpus, onednn=onednn)[0] == (expected == "bfloat16")


def test_explicit_dtypes_are_kept_and_bad_ones_named():
    assert resolve_train_dtype("float32", flags=AMX, gpus=[], onednn=True) == ("float32", "asked for")
    assert resolve_train_dtype("bfloat16", flags=AVX2, gpus=[], onednn=False) == ("bfloat16", "asked for")
    with pytest.raises(ValueError, match="Received: 'float16'"):
        resolve_train_dtype("float16")


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\nbogomips\t: 1\n")
    assert cpu_flags(str(f)) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == set()
    dtype, why = resolve_train_dtype("auto")  # this machine: whichever it is, a valid answer
    assert dtype in ("float32", "bfloat16") and why
