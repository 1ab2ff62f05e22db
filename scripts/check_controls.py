"""Every protection's tests can fail: ``python -m scripts.check_controls [--only NAME ...]``.

Removes or neuters each protection in turn, in a copy of the checkout, runs the tests that
claim it, and records whether at least one failed (it must). A protection whose tests all
pass without it is a test that proves nothing. Writes ``check_controls.json`` with the
machine's facts and prints one line per protection. Too slow for CI (the tests run once
per protection); run it after changing a protection or its tests.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from task.constants import REPO_ROOT
from task.evaluation.report import write_benchmark
from task.runtime.machine import machine_facts


@dataclass(frozen=True)
class Mutation:
    """``old`` replaced by ``new`` in ``path`` (exactly once) removes ``name``."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "DP-SGD per-example clipping",
        "task/privacy/dpsgd.py",
        "        max_grad_norm=max_grad_norm,\n",
        "        max_grad_norm=1e12,\n",
        ("tests/task/privacy/test_dpsgd.py",),
    ),
    Mutation(
        "DP-SGD noise",
        "task/privacy/dpsgd.py",
        "        noise_multiplier=noise_multiplier,\n",
        "        noise_multiplier=0.0,\n",
        ("tests/task/privacy/test_dpsgd.py",),
    ),
    Mutation(
        "central DP: the site's clipping and noise",
        "task/federation/local_round.py",
        "    clip_and_noise(\n",
        "    (lambda *a, **k: None)(\n",
        ("tests/task/federation/test_local_round.py", "tests/task/privacy"),
    ),
    Mutation(
        "secure aggregation: masking",
        "mpc/secagg/crypto.py",
        "    return np.frombuffer(stream, dtype=np.uint64)\n",
        "    return np.zeros(length, dtype=np.uint64)\n",
        ("tests/mpc/secagg/test_protocol.py", "tests/strategies/test_secure.py"),
    ),
    Mutation(
        "secure aggregation: share authentication (the ciphertext's binding)",
        "mpc/secagg/crypto.py",
        "    return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)\n",
        "    return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], None)\n",
        ("tests/mpc/secagg/test_protocol.py", "tests/strategies/test_secure.py"),
    ),
    Mutation(
        "secure aggregation: round keys checked against the roster",
        "mpc/secagg/protocol.py",
        "        if not crypto.verify(key, advert.signature, advert.signed_bytes(round_id)):\n",
        "        if False:\n",
        ("tests/mpc/secagg/test_protocol.py", "tests/mpc/secagg/test_consistency.py"),
    ),
    Mutation(
        "encrypted channels: TLS on every connection a party dials",
        "mpc/channel/tls.py",
        "    sock = client_context(creds).wrap_socket(raw, server_hostname=host)\n",
        "    return raw\n",
        ("tests/mpc/channel",),
    ),
    Mutation(
        "encrypted channels: the listener's role check",
        "mpc/channel/tls.py",
        "    if role not in expect:\n        sock.close()\n",
        "    if False:\n",
        ("tests/mpc/channel/test_refusals.py",),
    ),
    Mutation(
        "encrypted channels: the dialling party's role check",
        "mpc/channel/tls.py",
        "    if got != expect:\n",
        "    if False:\n",
        ("tests/mpc/channel/test_refusals.py",),
    ),
    Mutation(
        "encrypted diagnosis: the reveal to the data owner only",
        "mpc/inference/party.py",
        "    share = y.share\n",
        "    return y.get_plain_text()  # both parties learn the output\n",
        ("tests/mpc/inference", "tests/server/test_serve_inference.py"),
    ),
    Mutation(
        "site log: the file lock",
        "client/site_log.py",
        "                fcntl.flock(f, fcntl.LOCK_EX)\n",
        "                pass\n",
        ("tests/client/test_site_log.py",),
    ),
    Mutation(
        "malicious server: the cohort's signed digests of the round's work",
        "mpc/secagg/protocol.py",
        "    differ = sorted(s for s, c in commitments.items() if c.digest != digest)\n",
        "        differ = []\n",
        ("tests/mpc/secagg/test_consistency.py", "tests/strategies/test_malicious_server.py"),
    ),
    Mutation(
        "malicious server: the work checked against the committed digest",
        "mpc/secagg/site.py",
        "        if protocol.ACTIVE_SERVER_CHECKS and work != self.work:\n",
        "        if False:\n",
        ("tests/strategies/test_malicious_server.py",),
    ),
    Mutation(
        "malicious server: t from the verified cohort",
        "mpc/secagg/site.py",
        "        n = len(self.peers) if protocol.ACTIVE_SERVER_CHECKS else self.claimed\n",
        "        n = self.claimed\n",
        ("tests/mpc/secagg/test_consistency.py", "tests/strategies/test_malicious_server.py"),
    ),
    Mutation(
        "malicious server: min_cohort",
        "mpc/secagg/site.py",
        "        if protocol.ACTIVE_SERVER_CHECKS and len(peers) < self.min_cohort:\n",
        "        if False:\n",
        ("tests/mpc/secagg/test_consistency.py", "tests/strategies/test_secure.py"),
    ),
    Mutation(
        "malicious server: signed survivor lists before unmask",
        "mpc/secagg/site.py",
        "            self._check_signatures(survivors, dropped, dict(signatures or {}), roster)\n",
        "            pass\n",
        ("tests/mpc/secagg/test_consistency.py", "tests/strategies/test_malicious_server.py"),
    ),
    Mutation(
        "malicious server: no reopening a round through the next round's keys",
        "mpc/secagg/wire.py",
        "    if not kinds_ok or _rank(following) <= _rank(current):\n",
        "    if not kinds_ok:\n",
        ("tests/mpc/secagg/test_wire_fuzz.py",),
    ),
    Mutation(
        "site policy",
        "client/policy.py",
        "        broken = self.violations(cfg)\n",
        "        broken = []\n",
        ("tests/client/test_policy.py",),
    ),
)


PYTEST = (sys.executable, "-m", "pytest", "-q", "-x", "-m", "", "-p", "no:cacheprovider")


def _copy_checkout(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    for name in filter(None, files):
        src = REPO_ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run(mutation: Mutation, tree: Path) -> dict:
    """Apply ``mutation`` in ``tree``, run its tests, restore the file."""
    path = tree / mutation.path
    original = path.read_text()
    if original.count(mutation.old) != 1:
        raise RuntimeError(f"{mutation.name}: the line to mutate is not once in {mutation.path}")
    path.write_text(original.replace(mutation.old, mutation.new))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [*PYTEST, *mutation.tests],
            cwd=tree,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        path.write_text(original)
    failed = [line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
    return {
        "protection": mutation.name,
        "mutated": f"{mutation.path}: {mutation.old.strip()} -> {mutation.new.strip()}",
        "tests": list(mutation.tests),
        "exit_code": proc.returncode,
        "caught": proc.returncode == 1 and bool(failed),
        "failed": failed,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="protections whose name has this")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "check_controls")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.only is None or any(w in m.name for w in args.only)]
    results = []
    with tempfile.TemporaryDirectory(prefix="controls-") as tmp:
        tree = Path(tmp) / REPO_ROOT.name  # ../shared/data stays found beside it
        _copy_checkout(tree)
        data = REPO_ROOT.parent / "shared"
        if data.exists():
            (tree.parent / "shared").symlink_to(data)
        for mutation in chosen:
            result = run(mutation, tree)
            results.append(result)
            mark = "caught" if result["caught"] else "NOT CAUGHT"
            print(f"{mark:10} {mutation.name} ({result['seconds']} s): {result['failed'][:2]}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_benchmark(
        {"machine": machine_facts(), "mutations": results}, args.out / "check_controls.json"
    )
    return 0 if all(r["caught"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
