"""Post-install check run by ``make setup``: torch is the build that was asked for, not a mix
of builds, and ``pip check`` is clean except for crypten's known, unneeded declared
dependencies (installed with ``--no-deps``).

``--torch cpu`` (the default) wants the CPU wheel and no nvidia-* or cuda-* package;
``--torch cuda`` wants the CUDA build (``make setup TORCH=cuda``, docs/development.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata

#: crypten 0.4.1 declares these but imports none of them at run time (docs/development.md).
CRYPTEN_UNNEEDED = {"future", "pandas", "sklearn", "tensorboard", "torchvision"}

#: Where CUDA torch's libraries come from: nvidia-* (cuDNN, NCCL, ...) and cuda-* (the CUDA
#: 13 builds' cuda-toolkit and cuda-bindings).
CUDA_PREFIXES = ("nvidia-", "cuda-")
#: Such names that are no CUDA library: the management library's Python binding talks to the
#: driver and installs beside any torch.
NOT_CUDA_LIBRARIES = {"nvidia-ml-py"}

BUILDS = ("cpu", "cuda")


@dataclass(frozen=True)
class TorchFacts:
    """What the installed torch says of itself, and the CUDA packages beside it."""

    version: str  # torch.__version__, e.g. 2.13.0+cpu, 2.13.0+cu128, 2.13.0
    cuda: str | None  # torch.version.cuda: None for a CPU build
    cuda_packages: tuple[str, ...]  # nvidia-* and cuda-* distributions

    @property
    def label(self) -> str:
        """The version's local label: ``cpu``, ``cu128``, or empty."""
        return self.version.partition("+")[2]

    def describe(self) -> str:
        build = f"CUDA {self.cuda} build" if self.cuda else "CPU build"
        return f"torch {self.version} ({build})"


def installed_facts() -> TorchFacts:
    import torch

    names = {
        (dist.metadata["Name"] or "").lower().replace("_", "-") for dist in metadata.distributions()
    }
    cuda = sorted(n for n in names if n.startswith(CUDA_PREFIXES) and n not in NOT_CUDA_LIBRARIES)
    return TorchFacts(torch.__version__, torch.version.cuda, tuple(cuda))


def _label_problem(facts: TorchFacts) -> str | None:
    """A version string that disagrees with the build it names: a mixed or broken install."""
    label = facts.label
    if label == "cpu" and facts.cuda is not None:
        return f"{facts.describe()}: its version says CPU but it is built with CUDA"
    if label.startswith("cu"):
        if facts.cuda is None:
            return f"{facts.describe()}: its version says {label} but it has no CUDA"
        expected = "cu" + facts.cuda.replace(".", "")
        if label != expected:
            return f"{facts.describe()}: its version says {label}, its build {expected}"
    return None


def torch_problems(asked: str, facts: TorchFacts) -> list[str]:
    """Why the installed torch is not the ``asked`` build (``cpu`` or ``cuda``), or a mix;
    empty when it is right. Each line names what was found."""
    if asked not in BUILDS:
        raise ValueError(f"--torch {asked!r}: use one of {', '.join(BUILDS)}")
    problems = []
    mismatch = _label_problem(facts)
    if mismatch:
        problems.append(mismatch)
    if asked == "cpu" and facts.cuda is not None:
        problems.append(
            f"{facts.describe()} where the CPU wheel was asked for "
            "(make setup TORCH=cuda installs the CUDA build)"
        )
    if asked == "cuda" and facts.cuda is None:
        problems.append(f"{facts.describe()} where the CUDA build was asked for (TORCH=cuda)")
    if facts.cuda is None and facts.cuda_packages:
        problems.append(
            f"{facts.describe()} beside CUDA packages: {', '.join(facts.cuda_packages)}"
        )
    return problems


def pip_problems(pip_check_output: str) -> list[str]:
    """``pip check``'s lines less crypten's known, unneeded declared dependencies."""
    problems = []
    for line in pip_check_output.splitlines():
        words = line.split()
        known = (
            line.startswith("crypten ")
            and "requires" in words
            and words[words.index("requires") + 1].rstrip(",") in CRYPTEN_UNNEEDED
        )
        if known:
            continue
        if line.strip() and not line.startswith("No broken requirements"):
            problems.append(line)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--torch", choices=BUILDS, default="cpu", help="the build asked for")
    args = parser.parse_args(argv)
    facts = installed_facts()
    problems = torch_problems(args.torch, facts)
    if problems:
        print("torch install problems:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    out = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False
    ).stdout
    problems = pip_problems(out)
    if problems:
        print("pip check found problems:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    from mpc.crypten_compat import check_patches

    print(f"install ok: {facts.describe()}; crypten patches {check_patches()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
