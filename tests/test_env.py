"""course_lib.env: device choice, seeding, bfloat16 policy and the environment report."""

import json
import random

import numpy as np
import pytest
import torch

from course_lib import env

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_device_override(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)


def test_automatic_device_is_cuda_when_available_else_cpu():
    assert env.get_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_course_device_overrides_the_automatic_choice(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", " CPU ")
    assert env.get_device() == torch.device("cpu")
    monkeypatch.setenv("COURSE_DEVICE", "")  # empty means "choose automatically"
    assert env.get_device() == env.get_device(None)


def test_an_explicit_name_wins_over_course_device(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "not-a-device")
    assert env.get_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not-a-device"):
        env.get_device()


@pytest.mark.parametrize("name", ["banana", "tpu", "cuda:x", "meta", "xla"])
def test_unknown_device_is_a_value_error(name):
    with pytest.raises(ValueError, match="unknown device") as info:
        env.get_device(name)
    assert "'cpu'" in str(info.value)


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_on_a_machine_without_it_is_a_clear_value_error(name, monkeypatch):
    with pytest.raises(ValueError, match="no CUDA GPU") as info:
        env.get_device(name)
    assert "'cpu'" in str(info.value)
    monkeypatch.setenv("COURSE_DEVICE", name)
    with pytest.raises(ValueError, match="COURSE_DEVICE"):
        env.get_device()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_index_beyond_the_gpus_is_a_value_error():
    with pytest.raises(ValueError, match="does not exist"):
        env.get_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.skipif(
    hasattr(torch.backends, "mps") and torch.backends.mps.is_available(), reason="MPS present"
)
def test_mps_where_it_is_missing_is_a_value_error():
    with pytest.raises(ValueError, match="MPS is not available"):
        env.get_device("mps")


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_seed_everything_makes_every_generator_reproducible():
    gen_a = env.seed_everything(123)
    a = _draws()
    from_gen_a = torch.rand(4, generator=gen_a)
    gen_b = env.seed_everything(123)
    b = _draws()
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])
    assert torch.equal(from_gen_a, torch.rand(4, generator=gen_b))
    env.seed_everything(124)
    c = _draws()
    assert a[0] != c[0] and a[1] != c[1] and not torch.equal(a[2], c[2])


def test_seed_everything_initialises_models_identically():
    from course_lib.model import ModelConfig, Transformer

    cfg = ModelConfig(context_len=8, n_layer=1, n_head=1, d_model=8)
    env.seed_everything(7)
    first = Transformer(cfg).state_dict()
    env.seed_everything(7)
    second = Transformer(cfg).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("bad", [-1, 1.5, "0", None])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="seed"):
        env.seed_everything(bad)


def test_describe_environment_reports_the_machine_as_json():
    info = env.describe_environment("cpu")
    expected = {
        "python",
        "torch",
        "numpy",
        "platform",
        "processor",
        "cpu_threads",
        "device",
        "fast_mode",
        "cuda_available",
        "cpu_bf16_units",
    }
    assert expected <= set(info)
    assert info["torch"] == torch.__version__ and info["numpy"] == np.__version__
    assert info["device"] == "cpu" and info["cpu_threads"] == torch.get_num_threads()
    assert info["fast_mode"] is True  # the root conftest.py sets COURSE_FAST=1
    assert json.loads(json.dumps(info)) == info  # saved with results, so JSON-able
    assert env.describe_environment()["device"] == str(env.get_device())


@pytest.mark.parametrize("off", ["0", "false", "No"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_autocast_dtype_is_none_when_course_bf16_is_off(off, device, monkeypatch):
    monkeypatch.setenv("COURSE_BF16", off)
    # even on a CPU that would qualify: nothing is measured when bf16 is turned off
    monkeypatch.setattr(env, "cpu_has_bf16_units", lambda: True)
    monkeypatch.setattr(env, "bf16_speedup_on_cpu", lambda: 4.0)
    assert env.autocast_dtype(device) is None


@pytest.mark.parametrize(
    ("units", "speedup", "expected"),
    [(True, 4.0, torch.bfloat16), (True, 1.2, None), (False, 4.0, None)],
)
def test_autocast_dtype_on_cpu_needs_bf16_units_that_measure_faster(
    units, speedup, expected, monkeypatch
):
    monkeypatch.delenv("COURSE_BF16", raising=False)
    monkeypatch.setattr(env, "cpu_has_bf16_units", lambda: units)
    monkeypatch.setattr(env, "bf16_speedup_on_cpu", lambda: speedup)
    assert env.autocast_dtype("cpu") is expected


def test_synchronize_on_the_cpu_is_a_no_op():
    assert env.synchronize("cpu") is None


def test_autocast_is_off_for_float32_and_torch_autocast_otherwise():
    x = torch.ones(2, 2)
    with env.autocast("cpu", None):
        assert (x @ x).dtype == torch.float32
    with env.autocast("cpu", torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16
    with env.autocast(torch.device("cpu"), torch.bfloat16, cache_enabled=False):
        assert torch.is_autocast_enabled("cpu")
