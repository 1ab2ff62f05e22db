"""Prepare ``wheelhouse/`` for ``scripts/gpu_bench.sh``: ``python -m scripts.gpu_wheelhouse``.

Run here, in the environment ``make setup`` built, where pip reaches the registry. The GPU
machine has no network and an image with its own Python and CUDA torch, so what travels is:

* the wheels of the project's run-time dependencies at the versions installed here (the set
  the tests pass with), for the GPU machine's Python and x86-64 Linux, less what the image
  already has (:data:`IMAGE_HAS`: torch and its CUDA libraries among them) and what the
  bench never imports (:data:`NOT_IMPORTED`); Ray stays behind too unless ``--with-ray``
  (its wheel alone is most of what a call may carry; without it the bench skips the
  federated rounds and says so);
* ``wheelhouse/requirements.txt`` pinning them, and crypten's wheel (installed without its
  declared dependencies, as ``make setup`` does);
* the bundled PneumoniaMNIST file and its digest, ``wheelhouse/data/``.

Wheels of pure-Python packages published only as source are built here (``pip wheel``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from task.constants import REPO_ROOT
from task.data.pneumoniamnist import resolve_path

#: torch and its CUDA libraries: the image's own build is the one its driver runs.
CUDA_STACK = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
#: Distributions the GPU image has (device docs' package list, read 2026-11-17) that the
#: project's closure holds too: the image's versions serve, and nothing needs carrying.
IMAGE_HAS = frozenset(
    [
        "annotated-doc",
        "anyio",
        "certifi",
        "charset-normalizer",
        "click",
        "cloudpickle",
        "contourpy",
        "cycler",
        "fonttools",
        "grpcio",
        "h11",
        "httpcore",
        "httpx",
        "idna",
        "joblib",
        "kiwisolver",
        "markdown-it-py",
        "markupsafe",
        "matplotlib",
        "mdurl",
        "ml-dtypes",
        "narwhals",
        "numpy",
        "onnx",
        "opt-einsum",
        "packaging",
        "pathspec",
        "pillow",
        "protobuf",
        "pygments",
        "pyparsing",
        "python-dateutil",
        "pyyaml",
        "requests",
        "rich",
        "scikit-learn",
        "scipy",
        "shellingham",
        "threadpoolctl",
        "tqdm",
        "typer",
        "typing-extensions",
        "urllib3",
        "uvloop",
        "xxhash",
    ]
)
#: Needed by the metadata, never imported by the bench: Flower's uv installs a run's own
#: dependencies (never, here), wandb is the logger the bench turns off (logger=none).
NOT_IMPORTED = frozenset({"uv", "wandb"})
CRYPTEN = "crypten==0.4.1"
#: A call carries at most 64 MiB, the repository's own files included.
MAX_MIB = 60


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements() -> list[Requirement]:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return [Requirement(r) for r in pyproject["project"]["dependencies"]]


def _left_behind(name: str, with_ray: bool) -> bool:
    if name == "ray":
        return not with_ray
    return bool(CUDA_STACK.match(name)) or name in IMAGE_HAS or name in NOT_IMPORTED


def closure(roots: list[Requirement], python: str, with_ray: bool) -> dict[str, str]:
    """Every distribution the roots need, transitively, at its version installed here;
    markers are evaluated for the GPU machine's ``python``."""
    env = {"python_version": python, "python_full_version": f"{python}.0"}
    pins: dict[str, str] = {}
    walked: set[tuple[str, str]] = set()  # (distribution, extra) whose needs are queued
    todo = [(r, "") for r in roots]
    while todo:
        req, extra = todo.pop()
        name = _canonical(req.name)
        if req.marker is not None and not req.marker.evaluate(env | {"extra": extra}):
            continue
        if _left_behind(name, with_ray):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as err:
            raise SystemExit(f"{name} ({req}) is not installed here: run make setup") from err
        pins[name] = dist.version
        for wanted in {"", *req.extras} - {e for n, e in walked if n == name}:
            walked.add((name, wanted))
            todo += [(Requirement(r), wanted) for r in dist.requires or []]
    return pins


def _platforms() -> list[str]:
    tags = [f"manylinux_2_{n}_x86_64" for n in range(17, 40)]
    tags += ["manylinux2014_x86_64", "manylinux1_x86_64"]
    return [arg for tag in tags for arg in ("--platform", tag)]


def fetch(spec: str, out: Path, python: str) -> None:
    """The binary wheel of ``spec`` for the GPU machine, else a wheel built here."""
    pip = [sys.executable, "-m", "pip"]
    target = ["--python-version", python, "--implementation", "cp", *_platforms()]
    download = [*pip, "download", "-q", "--no-deps", "--only-binary=:all:", *target]
    if subprocess.run([*download, "-d", str(out), spec], check=False).returncode == 0:
        return
    print(f"{spec}: no binary wheel; building one here (pure Python only)")
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(out), spec], check=True)
    built = sorted(out.glob(f"{_canonical(spec.split('==')[0]).replace('-', '_')}-*.whl"))
    if not built or not built[-1].name.endswith("-none-any.whl"):
        raise SystemExit(f"{spec}: the wheel built here is not pure Python: {built}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "wheelhouse")
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python")
    parser.add_argument("--with-ray", action="store_true", help="carry Ray: federated rounds")
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "data").mkdir(parents=True)
    pins = closure(project_requirements(), args.python, args.with_ray)
    specs = [f"{name}=={version}" for name, version in sorted(pins.items())]
    (args.out / "requirements.txt").write_text("\n".join(specs) + "\n")
    for spec in [*specs, CRYPTEN]:
        fetch(spec, args.out, args.python)
    data = resolve_path(None)
    for path in (data, data.with_name(data.name + ".sha256")):
        if path.is_file():
            shutil.copy2(path, args.out / "data" / path.name)
    mib = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 2**20
    print(f"{args.out}: {len(specs) + 1} wheels and the data, {mib:.1f} MiB")
    if mib > MAX_MIB:
        raise SystemExit(f"{args.out} holds {mib:.1f} MiB; a GPU call carries {MAX_MIB} at most")


if __name__ == "__main__":
    main()
