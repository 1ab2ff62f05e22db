"""Encrypted diagnosis demo: ``python -m scripts.encrypted_demo --checkpoint CKPT``.

Writes the first ``--images`` PneumoniaMNIST test images as PNG files, starts the model
owner's service (``server.serve_inference``) and runs the data owner's client
(``client.diagnose``) as two separate processes talking over TCP, then prints each
encrypted diagnosis beside the true class and the agreement with the plaintext model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from client.diagnose import collect_images, read_images
from mpc.inference.fidelity import agreement, plaintext_probabilities
from mpc.inference.model import load_served
from scripts.inference_processes import DealerProcess, ServiceProcess, consortium
from task.constants import REPO_ROOT
from task.data.export import export_test_images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="default: next to the checkpoint")
    args = parser.parse_args()
    out = args.out or args.checkpoint.parent / "encrypted_diagnosis"
    folder = out / "images"
    export_test_images(folder, args.images)
    report = out / "diagnosis.json"
    # Three organisations on this machine, each with its own certificate of one consortium.
    creds = consortium(out / "certificates")
    with (
        DealerProcess(creds["dealer"]) as dealer,
        ServiceProcess(args.checkpoint, dealer.address, creds["model-owner"]) as service,
    ):
        print(
            f"dealer at {dealer.address}; model owner serving {args.checkpoint} at "
            f"{service.address}; TLS 1.3 with the consortium's certificates",
            flush=True,
        )
        client = subprocess.run(
            [
                *(sys.executable, "-m", "client.diagnose", str(folder)),
                *("--service", service.address, "--json", str(report)),
                f"client.credentials={creds['data-owner']}",
            ],
            cwd=REPO_ROOT,
            check=False,
        )
    if client.returncode != 0:
        print("the encrypted diagnosis failed", file=sys.stderr)
        return client.returncode
    result = json.loads(report.read_text())
    served = load_served(args.checkpoint)
    images, kept, _ = read_images(collect_images([folder]), served.config)
    plain = plaintext_probabilities(served.model, images)
    classes = served.config["classes"]
    encrypted = np.array([[i["probabilities"][c] for c in classes] for i in result["images"]])
    print(f"\n{'image':<22}{'true':<11}{'encrypted':<11}{'p':>7}   plaintext      p")
    for path, item, p in zip(kept, result["images"], plain, strict=True):
        true = Path(path).stem.split("_", 1)[1]
        guess = item["prediction"]
        print(
            f"{Path(path).name:<22}{true:<11}{guess:<11}{item['probabilities'][guess]:7.3f}   "
            f"{classes[int(p.argmax())]:<11}{p.max():7.3f}"
        )
    fidelity = agreement(encrypted, plain)
    print(
        f"\nencrypted vs plaintext: {fidelity['agreement']:.1%} of {len(kept)} images agree; "
        f"max |p error| {fidelity['max_abs_probability_error']:.1e}; "
        f"{result['encrypted_seconds_per_image']:.2f} s per image encrypted"
    )
    return 0 if fidelity["agreement"] == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
