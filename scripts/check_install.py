"""Post-install check run by ``make setup``: torch is the CPU build and ``pip check`` is clean
except for crypten's known, unneeded declared dependencies (installed with ``--no-deps``)."""

from __future__ import annotations

import subprocess
import sys

#: crypten 0.4.1 declares these but imports none of them at run time (docs/development.md).
CRYPTEN_UNNEEDED = {"future", "pandas", "sklearn", "tensorboard", "torchvision"}


def main() -> int:
    import torch

    if torch.version.cuda is not None:
        print(f"torch {torch.__version__} is a CUDA build; expected the CPU wheel", file=sys.stderr)
        return 1
    out = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False
    ).stdout
    problems = []
    for line in out.splitlines():
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
    if problems:
        print("pip check found problems:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    from mpc.crypten_compat import check_patches

    print(f"install ok: torch {torch.__version__} (CPU); crypten patches {check_patches()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
