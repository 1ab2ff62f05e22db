"""The expert readers of the PriMIA study, compared only where the comparison holds.

Kaissis et al. (2021) report their human readers' accuracy and MCC on PneumoniaMNIST's
source population; this project compares a model with them on PneumoniaMNIST's published
test split (624 images) and on nothing else: a figure on a site's own images, on a subset
(``data.limit``) or on another split is not comparable, and saying nothing is better than
a misleading line.

The split is recognised by what it holds, not by its file or config: the content hash of
:mod:`task.data.content` (each image's raw pixels and its class name, in sorted order, so
the bundled npz and a PNG export of the same images in any order agree). The constant
below was computed from the bundled ``pneumoniamnist.npz`` (its test images and labels as
MedMNIST publishes them) with :func:`task.data.content.array_content_hash`;
``tests/task/evaluation/test_reference.py`` recomputes it from the file.
"""

from __future__ import annotations

from typing import Any

from task.constants import EXPERT_READERS

#: Content hash of PneumoniaMNIST's published test split (624 images, 28 px, classes
#: ``normal`` and ``pneumonia``).
PNEUMONIAMNIST_TEST_SHA256 = "0c4c04542278fb48b94a82cd12212b5bafc79341005ec65ad152381f89203f06"


def is_published_test(fingerprint: str | None) -> bool:
    """Whether a set with content hash ``fingerprint`` is PneumoniaMNIST's published test
    split (``None``, a set whose content is not known, is not)."""
    return fingerprint == PNEUMONIAMNIST_TEST_SHA256


def expert_readers(fingerprint: str | None) -> dict[str, float] | None:
    """The expert readers' figures for a report on that set, or ``None`` where they do
    not apply."""
    return dict(EXPERT_READERS) if is_published_test(fingerprint) else None


def with_expert_readers(metrics: dict[str, Any], fingerprint: str | None) -> dict[str, Any]:
    """``metrics`` with ``expert_readers`` added where the tested set is the published split."""
    experts = expert_readers(fingerprint)
    return metrics if experts is None else {**metrics, "expert_readers": experts}


def comparison_line(test: dict[str, Any], fingerprint: str | None) -> str:
    """One line of test metrics; beside the expert readers only on the published split."""
    line = f"test AUC {test['auc']:.3f}  ACC {test['accuracy']:.3f}  MCC {test['mcc']:.3f}"
    experts = expert_readers(fingerprint)
    if experts is None:
        return line
    return (
        f"{line}  |  expert readers (PriMIA): ACC {experts['accuracy']:.3f}  "
        f"MCC {experts['mcc']:.3f}"
    )
