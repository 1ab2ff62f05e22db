"""What each party holds during a session reveals nothing of the other's secret.

Three real processes (model owner, data owner, TTP dealer) run the production party
functions (``run_model_owner``, ``run_data_owner``, ``run_dealer``), each observed from
inside its own process (:mod:`tests.mpc.inference.observe`): every value a party opens, and
its shares of the images, of the outputs and of the first weight tensor, which a curious
party could inspect.

Negative controls: the same session with every reveal made to all parties (a service that
forgot ``dst``) puts the logits among the model owner's openings; the sum of the two
parties' shares gives back the secrets the single shares are checked not to show.

Beneath CrypTen: CrypTen's own ``get_plain_text(dst=...)`` reveals through gloo's
``reduce``, which leaves part of the logits in the model owner's buffer (shown by a
control); the production reveal sends the model owner's share point to point, so its
memory holds shares only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpc.inference.model import load_served
from mpc.inference.party import (
    Session,
    prepare_data_owner,
    prepare_dealer,
    prepare_model_owner,
    run_data_owner,
    run_dealer,
    run_model_owner,
)
from mpc.inference.process import PreparedParty, run_parties
from mpc.parties import free_port
from tests.mpc.inference.observe import SCALE, decode, leaked, observer


def _session(checkpoint, images: torch.Tensor, *, reveal: str = "production") -> tuple[dict, dict]:
    """One session over ``images``: what the model owner and the data owner held."""
    served = load_served(checkpoint)
    width = len(served.config["classes"])
    # CrypTen's own transport: what each party holds does not depend on how bytes travel
    # (the channels' own claims are in tests/mpc/channel)
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    session = Session(len(images), len(images), transport="gloo", rendezvous=rendezvous)
    parties = [
        PreparedParty(
            "model-owner",
            prepare_model_owner,
            observer(run_model_owner, width, reveal=reveal),
            (str(checkpoint),),
        ),
        PreparedParty("dealer", prepare_dealer, run_dealer),
        PreparedParty(
            "data-owner",
            prepare_data_owner,
            observer(run_data_owner, width, reveal=reveal),
            (served.config, images.numpy()),
        ),
    ]
    owner, _, data = run_parties(parties, session, start_timeout=180, result_timeout=240)
    return owner, data


def _uncorrelated(share: torch.Tensor, secret: torch.Tensor) -> float:
    """|Pearson r| between a party's share and the encoded secret it hides."""
    a = share.double().flatten().numpy()
    b = (secret.double() * SCALE).round().flatten().numpy()
    return abs(float(np.corrcoef(a, b)[0, 1]))


def _image_share(held: dict, images: torch.Tensor) -> torch.Tensor:
    (share,) = [s for s in held["x_shares"] if s.shape == images.shape]
    return share


@pytest.fixture(scope="module")
def served_images(trained_checkpoint):
    served = load_served(trained_checkpoint)
    torch.manual_seed(0)
    images = torch.randn(8, *served.input_shape)
    with torch.no_grad():
        plain = served.model(images)
    return served, images, plain


@pytest.fixture(scope="module")
def sealed(trained_checkpoint, served_images) -> tuple[dict, dict]:
    """What the two parties held in a session of the production code as it is."""
    return _session(trained_checkpoint, served_images[1])


def test_no_party_holds_the_others_secret(served_images, sealed) -> None:
    served, images, plain = served_images
    owner, data = sealed
    # the data owner learns the outputs ...
    torch.testing.assert_close(torch.from_numpy(data["result"]["logits"]), plain, atol=0.02, rtol=0)
    # ... the model owner does not: none of the values it opened is the logits, and its
    # production function hands back communication counts only
    assert not leaked(owner["opened"], data["result"]["logits"])
    assert set(owner["result"]) == {"model_sharing", "inference", "seconds"}
    # its shares of the images and of the outputs are ring elements unrelated to them
    x_share, (y_share,) = _image_share(owner, images), owner["y_shares"]
    assert _uncorrelated(x_share, images) < 0.05
    # Encoded values here are < 2**23 (scale 2**16). Shares are uniform over the 64-bit
    # ring, or over ±2**47 after CrypTen's local truncation (division by the scale), so
    # |share| > 2**30 fails for one value in ~2**17: a clean test, not a coin flip.
    for share in (x_share, y_share):
        assert (share.abs() > 2**30).float().mean() > 0.95
    # the data owner's share of the first weight tensor says nothing about the weights
    assert data["w_name"] == owner["w_name"]
    weights = dict(served.model.named_parameters())
    same_shape = [p.detach() for p in weights.values() if p.shape == data["w_share"].shape]
    assert same_shape, data["w_name"]
    for true in same_shape:
        assert _uncorrelated(data["w_share"], true) < 0.2
    assert (data["w_share"].abs() > 2**30).float().mean() > 0.95
    # Controls: together the two shares are the secrets, which the checks above would see.
    x_sum = x_share + _image_share(data, images)  # int64 adds wrap round the ring
    assert _uncorrelated(x_sum, images) > 0.99
    (y_data,) = data["y_shares"]
    torch.testing.assert_close(decode(y_share + y_data).float(), plain, atol=0.02, rtol=0)
    w_sum = owner["w_share"] + data["w_share"]
    assert max(_uncorrelated(w_sum, true) for true in same_shape) > 0.99


def test_control_a_reveal_to_all_parties_is_detected(trained_checkpoint, served_images) -> None:
    """Negative control of the test above: the production parties with every
    ``get_plain_text`` made to reveal to all (``dst`` dropped): the model owner's openings
    now hold the logits, so the check ``not leaked(...)`` above can fail."""
    _, images, plain = served_images
    owner, data = _session(trained_checkpoint, images, reveal="to-all")
    torch.testing.assert_close(torch.from_numpy(data["result"]["logits"]), plain, atol=0.02, rtol=0)
    assert leaked(owner["opened"], data["result"]["logits"])


def test_the_model_owner_memory_never_holds_the_logits(sealed) -> None:
    """Beneath CrypTen's return values: what ``torch.distributed`` left in the model owner's
    buffers and what it received while the logits were revealed to the data owner. A
    curious model owner can read its own memory, so it must hold shares only. Its control
    is the next test."""
    owner, data = sealed
    held = owner["buffers"] + owner["received"] + owner["opened"]
    assert not leaked(held, data["result"]["logits"])


def test_control_crypten_reveal_leaves_logits_in_the_model_owner_buffer(
    trained_checkpoint, served_images
) -> None:
    """The control of the test above, and why production does not use CrypTen's reveal:
    ``get_plain_text(dst=DATA_OWNER)`` reduces through gloo, and the model owner's reduce
    buffer then holds part of each batch's logits, which the same check finds."""
    _, images, _ = served_images
    owner, data = _session(trained_checkpoint, images, reveal="crypten-dst")
    assert leaked(owner["buffers"], data["result"]["logits"])
