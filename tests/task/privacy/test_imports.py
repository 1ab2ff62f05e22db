"""Opacus is imported only where DP runs, not by every process that loads the apps."""

from __future__ import annotations

import subprocess
import sys

from task.constants import REPO_ROOT


def _imports_opacus(statement: str) -> bool:
    code = f"import sys\n{statement}\nprint('opacus' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1] == "True"


def test_the_apps_load_without_opacus() -> None:
    assert not _imports_opacus("import client.client_app, server.server_app, task.privacy")


def test_dp_code_still_reaches_opacus_when_it_runs() -> None:
    assert _imports_opacus("from task.privacy import Accountant\nAccountant().step(1.0, 0.01, 1)")


def test_a_federation_without_dp_keeps_its_privacy_books_without_opacus() -> None:
    statement = (
        "from server.privacy import federation_privacy\n"
        "from task.config import compose_config\n"
        "from task.privacy import privacy_of\n"
        "cfg = compose_config(['logger=none'])\n"
        "books = federation_privacy(privacy_of(cfg), cfg, None)\n"
        "assert books.state()['history'] == [] and books.should_stop(1) is None"
    )
    assert not _imports_opacus(statement)
