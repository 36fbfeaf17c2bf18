"""Precision and device the machine has: bf16 without native CPU support warns once and runs
fp32; a device the machine lacks is one message naming what it has."""

import contextlib
import warnings

import pytest
import torch

import atrous.runtime.precision as precision
from atrous.errors import UsageError
from atrous.models.profile import describe_device
from atrous.runtime.distributed import DeviceError, resolve_device

CPU = torch.device("cpu")


@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    precision._warn_emulated_bf16.cache_clear()
    yield
    precision._warn_emulated_bf16.cache_clear()


def test_bf16_without_native_support_warns_once_and_runs_fp32(no_native_bf16):
    with pytest.warns(UserWarning, match="no native bf16.*running fp32 instead") as caught:
        for _ in range(3):
            assert precision.effective_precision(CPU, "bf16") == "fp32"
            context = precision.autocast(CPU, "bf16")
            assert isinstance(context, contextlib.nullcontext)
    assert len(caught) == 1
    with context:
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32


def test_bf16_with_native_support_runs_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.effective_precision(CPU, "bf16") == "bf16"
        with precision.autocast(CPU, "bf16"):
            assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.bfloat16
    assert precision.effective_precision(torch.device("cuda"), "bf16") == "bf16"


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ({"avx2", "fma"}, False),
        ({"avx512f", "avx512_vnni"}, False),
        ({"avx512_bf16"}, True),
        ({"amx_tile", "amx_bf16"}, True),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert precision.cpu_has_native_bf16.__wrapped__() is native


def test_benchmarks_describe_the_cpu_flags_and_bf16():
    description = describe_device(CPU)
    assert "native bf16" in description
    assert ("no native bf16" in description) is not precision.cpu_has_native_bf16()


def test_a_gpu_index_the_machine_lacks_is_refused_naming_the_ones_it_has(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"--device cuda:3: this machine has 2 CUDA GPU\(s\)"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_cuda_without_a_gpu_and_a_wrong_device_word_are_usage_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"no CUDA GPU is available here.*--device cpu"):
        resolve_device("cuda:3")
    with pytest.raises(DeviceError, match="'gpu' is not a device") as wrong:
        resolve_device("gpu")
    assert isinstance(wrong.value, UsageError) and wrong.value.exit_code == 2
    assert resolve_device("auto") == CPU
