"""The install check's decisions on the torch build, on facts of the installs it must accept
or refuse (a CUDA torch is never installed here), and its refusal of this CPU install when
the CUDA build is asked for."""

from __future__ import annotations

import pytest

from scripts.check_install import TorchFacts, main, pip_problems, torch_problems

CPU = TorchFacts("2.13.0+cpu", None, ())
#: The registry's Linux wheel of 2.13.0 is a CUDA 13 build.
CUDA_REGISTRY = TorchFacts("2.13.0+cu130", "13.0", ("cuda-toolkit", "nvidia-cudnn-cu13"))


def test_the_asked_build_passes():
    assert torch_problems("cpu", CPU) == []
    assert torch_problems("cuda", CUDA_REGISTRY) == []
    # A version without a local label says nothing of its build.
    assert torch_problems("cuda", TorchFacts("2.13.0", "13.0", ())) == []


def test_a_cuda_torch_is_refused_when_cpu_was_asked():
    (problem,) = torch_problems("cpu", CUDA_REGISTRY)
    assert "torch 2.13.0+cu130 (CUDA 13.0 build)" in problem
    assert "CPU wheel was asked for" in problem


def test_a_cpu_torch_is_refused_when_cuda_was_asked():
    (problem,) = torch_problems("cuda", CPU)
    assert "torch 2.13.0+cpu (CPU build)" in problem
    assert "CUDA build was asked for" in problem


@pytest.mark.parametrize("asked", ["cpu", "cuda"])
def test_cuda_packages_beside_a_cpu_torch_are_a_mix(asked):
    facts = TorchFacts("2.13.0+cpu", None, ("cuda-bindings", "nvidia-cublas"))
    problems = torch_problems(asked, facts)
    assert any("beside CUDA packages: cuda-bindings, nvidia-cublas" in p for p in problems)


@pytest.mark.parametrize(
    ("facts", "words"),
    [
        (TorchFacts("2.13.0+cpu", "12.8", ()), "says CPU but it is built with CUDA"),
        (TorchFacts("2.13.0+cu128", None, ()), "says cu128 but it has no CUDA"),
        (TorchFacts("2.13.0+cu126", "12.8", ()), "says cu126, its build cu128"),
    ],
)
def test_a_version_that_disagrees_with_its_build_is_refused_whatever_was_asked(facts, words):
    for asked in ("cpu", "cuda"):
        assert any(words in p for p in torch_problems(asked, facts)), asked


def test_an_unknown_build_is_named():
    with pytest.raises(ValueError, match="--torch 'rocm'"):
        torch_problems("rocm", CPU)


def test_pip_check_keeps_only_unknown_problems():
    out = (
        "crypten 0.4.1 requires pandas, which is not installed.\n"
        "crypten 0.4.1 requires torchvision, which is not installed.\n"
        "flwr 1.42.0 has requirement grpcio>=1.70, but you have grpcio 1.60.\n"
    )
    assert pip_problems(out) == [
        "flwr 1.42.0 has requirement grpcio>=1.70, but you have grpcio 1.60."
    ]
    assert pip_problems("No broken requirements found.\n") == []


def test_this_cpu_install_is_refused_as_a_cuda_install(capsys):
    assert main(["--torch", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "(CPU build) where the CUDA build was asked for" in err
