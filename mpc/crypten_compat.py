"""Make CrypTen 0.4.1 (the newest release, 2022) import and convert models on torch 2.x.

Import this module *instead of* ``crypten`` (``from mpc.crypten_compat import crypten``)
wherever CrypTen is used. Patching happens here, at run time, on module attributes only:
nothing in site-packages is edited, so upgrading either package cannot leave a half-patched
install behind.

Breakages measured with crypten 0.4.1 on torch 2.13 and what this module does about each:

1. ``torch.onnx._internal.registration`` moved to
   ``torch.onnx._internal.torchscript_exporter.registration``; CrypTen imports the old path
   at import time. We alias the old module name to the new module before CrypTen loads.
2. ``torch.onnx.export`` defaults to the dynamo exporter, whose graphs CrypTen cannot read
   (and which would ignore CrypTen's custom symbolic functions). We replace CrypTen's
   private ``_export_pytorch_model`` with one that passes ``dynamo=False`` and keeps all of
   CrypTen's own export settings.
3. The TorchScript exporter emits ONNX ``Identity`` nodes (for example for ``nn.Identity``
   and for some parameter aliases) that CrypTen has no module for. We map ``Identity`` to a
   CrypTen module that returns its input.

Not a breakage but a choice for parties on a GPU: CrypTen's randomness that parties share is
drawn on the CPU whatever device a party computes on (:mod:`mpc.crypten_device`), so that a
party on CUDA agrees with one on the CPU and with a dealer that has no GPU.

Each patch is guarded so that a CrypTen or torch release that fixes the problem upstream
simply skips it. :func:`check_patches` reports which ones were applied.
"""

from __future__ import annotations

import importlib
import io
import sys
import warnings
from typing import Any

import torch

_OLD_REGISTRATION = "torch.onnx._internal.registration"
_NEW_REGISTRATION = "torch.onnx._internal.torchscript_exporter.registration"

APPLIED: list[str] = []
# CrypTen's own code warns on every model conversion (ONNX weights read as a read-only
# array) and every encrypted forward (list indexing numpy deprecates): internal to it,
# nothing a user can act on, and they drown the diagnosis table. Only CrypTen's modules.
warnings.filterwarnings(
    "ignore", message="The given NumPy array is not writable", module=r"crypten\."
)
warnings.filterwarnings(
    "ignore", message="Using a non-tuple sequence for multidimensional", module=r"crypten\."
)


def _alias_onnx_registration() -> None:
    try:
        importlib.import_module(_OLD_REGISTRATION)
        return
    except ModuleNotFoundError:
        pass
    sys.modules[_OLD_REGISTRATION] = importlib.import_module(_NEW_REGISTRATION)
    APPLIED.append("onnx-registration-alias")


_alias_onnx_registration()

import crypten  # noqa: E402  (must follow the alias above)
import crypten.nn.module as _cmodule  # noqa: E402
import crypten.nn.onnx_converter as _converter  # noqa: E402

from mpc import crypten_device as _device  # noqa: E402


def _export_pytorch_model(f: io.BytesIO, pytorch_model: torch.nn.Module, dummy_input: Any):
    """CrypTen's export, forced onto the TorchScript exporter (``dynamo=False``)."""
    kwargs = {
        "do_constant_folding": False,
        "export_params": True,
        "input_names": ["input"],
        "operator_export_type": torch.onnx.OperatorExportTypes.ONNX,
        "output_names": ["output"],
        "opset_version": _converter._OPSET_VERSION,
        "dynamo": False,
        # Keep the batch dimension symbolic, so that a model converted with a batch-1 dummy
        # input serves any batch size (``x.view(x.size(0), -1)`` would otherwise be frozen).
        "dynamic_axes": {"input": {0: "batch"}, "output": {0: "batch"}},
    }
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in torch 2.9+, still the only one CrypTen reads.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(pytorch_model, dummy_input, f, **kwargs)
    return f


class Identity(_cmodule.Module):
    """CrypTen module for the ONNX ``Identity`` op: returns its single input unchanged."""

    def forward(self, x):
        return x

    @staticmethod
    def from_onnx(attributes=None):
        return Identity()


def _patch_converter() -> None:
    import inspect

    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        return
    _converter._export_pytorch_model = _export_pytorch_model
    APPLIED.append("export-dynamo-false")


def _patch_identity() -> None:
    if hasattr(_cmodule, "Identity") or "Identity" in _converter.ONNX_TO_CRYPTEN:
        return
    _converter.ONNX_TO_CRYPTEN["Identity"] = Identity
    APPLIED.append("onnx-identity")


_patch_converter()
_patch_identity()
if _device.install():
    APPLIED.append("shared-randomness-on-cpu")


def use_links(rank: int, links: Any) -> None:
    """Run this process's next CrypTen session over ``links`` (:mod:`mpc.channel`), the
    parties' authenticated TLS connections, instead of gloo's plaintext TCP.

    CrypTen picks its communicator class by module attribute at each call, and its TTP
    provider sets up the dealer's seeds with three ``torch.distributed`` calls of its own:
    both are swapped here for this process (each party runs in a process of its own).
    """
    import crypten.communicator as comm_package
    from crypten.mpc.provider import ttp_provider

    from mpc.channel.communicator import LinkCommunicator
    from mpc.crypten_device import ttp_client_seed, ttp_server_seeds

    comm_package.DistributedCommunicator = LinkCommunicator
    ttp_provider.TTPClient._TTPClient__TTPClient._setup_generators = ttp_client_seed
    ttp_provider.TTPServer._setup_generators = ttp_server_seeds
    LinkCommunicator.prepare(rank, links)
    if "link-communicator" not in APPLIED:
        APPLIED.append("link-communicator")


def check_patches() -> list[str]:
    """Return the names of the patches this module applied (empty once upstream is fixed)."""
    return list(APPLIED)


__all__ = ["check_patches", "crypten", "use_links"]
