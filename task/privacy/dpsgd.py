"""Local DP-SGD with Opacus: the model made compatible, the private loop, secret noise.

The noise and the Poisson sampling of batches draw from a generator seeded with fresh OS
entropy every round, never from the run's seed: a server that knows the configuration
could otherwise regenerate the noise and subtract it. (Opacus's ``secure_mode`` needs
``torchcsprng``, which has no build for this torch; the generator is torch's, its seed is
secret.)

Opacus is imported where it is used: importing it costs about a second (it pulls in
``torch.distributed.tensor``), and every process that imports the sites' or the server's
code, a deployed ClientApp per message included, paid it with DP off.
"""

from __future__ import annotations

import copy
import logging
import secrets
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader

from task.data.splits import BatchAugmented
from task.privacy.accountant import Accountant
from task.runtime.device import model_device
from task.training.engine import train_epoch

if TYPE_CHECKING:
    from opacus.data_loader import DPDataLoader

log = logging.getLogger(__name__)

#: Torch's warning when a hooked layer's input needs no gradient: Opacus's hooks then fire
#: on the output side, which is all per-example gradients need. It comes every step from a
#: network whose first trained layer follows a fixed transform (dp_scatternet).
NO_INPUT_GRAD_WARNING = "Full backward hook is firing when gradients are computed with respect"


def make_compatible(model: nn.Module) -> nn.Module:
    """Opacus's ``ModuleValidator.fix`` (BatchNorm becomes GroupNorm), then validated.

    Raises ``ValueError`` listing the layers Opacus still cannot train privately.
    """
    from opacus.validators import ModuleValidator

    batch_norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    fixed = ModuleValidator.fix(model)
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise ValueError(f"{type(model).__name__} cannot be trained with DP-SGD: {errors}")
    if batch_norms:
        log.info(
            "Opacus ModuleValidator.fix: %d BatchNorm layer(s) of %s replaced by GroupNorm "
            "(BatchNorm mixes examples, which per-example privacy forbids)",
            batch_norms,
            type(model).__name__,
        )
    return fixed


def check_per_example_gradients(model: nn.Module, in_shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless Opacus can compute per-example gradients of ``model``.

    One forward and backward pass of two zero images through Opacus's hooks, on a copy.
    Why: some networks fail only there, at the first private step of every site (MONAI's
    ResNet adds its shortcut in place, ``out += residual``, on the output of a hooked
    layer), so a local-DP federation checks its network before the first round.
    """
    from opacus import GradSampleModule

    trial = GradSampleModule(copy.deepcopy(model).train())
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=NO_INPUT_GRAD_WARNING)
            trial(torch.zeros(2, *in_shape)).sum().backward()
    except RuntimeError as err:
        raise ValueError(
            f"{type(model).__name__} cannot be trained with local DP-SGD: Opacus's per-example "
            f"gradients fail on it ({str(err).splitlines()[0][:160]}); choose a network "
            "without in-place operations on layer outputs, e.g. model=dp_scatternet or dp_cnn"
        ) from err
    finally:
        trial.remove_hooks()


def secret_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with 63 bits from the OS's entropy (Opacus
    draws its noise with the generator on the gradients' device)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(secrets.randbits(63))
    return gen


def poisson_loader(
    loader: DataLoader | BatchAugmented, generator: torch.Generator
) -> DPDataLoader | BatchAugmented:
    """Poisson sampling over ``loader``'s dataset at rate ``1 / len(loader)``; a batch
    augmentation stays on the sampled batches."""
    if isinstance(loader, BatchAugmented):
        return BatchAugmented(poisson_loader(loader.loader, generator), loader.augment)
    from opacus.data_loader import DPDataLoader

    return DPDataLoader.from_data_loader(loader, generator=generator)


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    """Batches in one pass (= 1 / sample rate), as Opacus's Poisson loader counts them."""
    return -(-n_examples // batch_size)


def train_private(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    steps: int,
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: Accountant,
) -> dict[str, float]:
    """``steps`` DP-SGD steps on ``model`` (in place), each accounted in ``accountant``.

    Opacus's optimizer hook steps the ledger's RDP accountant once per optimizer step, so
    the ledger records what ran, not what was planned. On a GPU the noise is drawn there,
    from a second secret generator; the forward pass stays float32 on every device: a
    gradient scaler would scale the per-example gradients that Opacus clips to
    ``max_grad_norm``, and 16-bit rounding would enter the clipped sum that the noise covers.
    """
    from opacus import PrivacyEngine

    gen = secret_generator()
    device = model_device(model)
    noise_gen = gen if device.type == "cpu" else secret_generator(device)
    with warnings.catch_warnings():
        # Opacus's advice to turn on secure_mode (torchcsprng; see the module docstring).
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")
    engine.accountant = accountant.opacus
    model.train()  # Opacus refuses a model in eval mode
    private, dp_optimizer, dp_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=poisson_loader(loader, gen),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=False,  # the loader above already samples, from the secret seed
        noise_generator=noise_gen,
    )
    done, total_loss, n_examples = 0, 0.0, 0
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=NO_INPUT_GRAD_WARNING)
            while done < steps:
                stats = train_epoch(
                    private,
                    dp_loader,
                    dp_optimizer,
                    loss_fn,
                    max_steps=steps - done,
                    mixed_precision=False,
                )
                done += int(stats["steps"])
                total_loss += stats["loss"] * stats["num_examples"]
                n_examples += int(stats["num_examples"])
    finally:
        private.remove_hooks()
    return {"loss": total_loss / max(n_examples, 1), "num_examples": n_examples, "steps": done}
