"""What each party holds during a session reveals nothing of the other's secret.

Three real processes (model owner, data owner, TTP dealer) run the production preparation
and session setup; the test parties also hand back the shares they held, which a curious
party could inspect: the model owner's shares of the images and of the outputs, the data
owner's shares of the weights.
"""

from __future__ import annotations

import numpy as np
import torch

from mpc.inference.model import load_served
from mpc.inference.party import (
    DATA_OWNER,
    MODEL_OWNER,
    PreparedParty,
    Session,
    encrypted_session,
    prepare_data_owner,
    prepare_dealer,
    prepare_model_owner,
    run_dealer,
)
from mpc.parties import free_port

SCALE = 2**16  # CrypTen's fixed-point scale


def _owner(state, session: Session) -> dict:
    graph = state["graph"]
    with encrypted_session(MODEL_OWNER, session, graph) as (crypten, _):
        x = crypten.cryptensor(torch.zeros(session.n_images, *state["shape"]), src=DATA_OWNER)
        y = graph(x)
        here = y.get_plain_text(dst=DATA_OWNER)
        return {"x_share": x.share.clone(), "y_share": y.share.clone(), "revealed_here": here}


def _data_owner(state, session: Session) -> dict:
    graph = state["graph"]
    with encrypted_session(DATA_OWNER, session, graph) as (crypten, _):
        name, weight = next(iter(graph.named_parameters()))
        logits = graph(crypten.cryptensor(state["images"], src=DATA_OWNER))
        plain = logits.get_plain_text(dst=DATA_OWNER)
        return {"w_name": name, "w_share": weight.share.clone(), "logits": plain}


def _uncorrelated(share: torch.Tensor, secret: torch.Tensor) -> float:
    """|Pearson r| between a party's share and the encoded secret it hides."""
    a = share.double().flatten().numpy()
    b = (secret.double() * SCALE).round().flatten().numpy()
    return abs(float(np.corrcoef(a, b)[0, 1]))


def test_no_party_holds_the_others_secret(trained_checkpoint) -> None:
    served = load_served(trained_checkpoint)
    torch.manual_seed(0)
    images = torch.randn(8, *served.input_shape)
    session = Session(f"tcp://127.0.0.1:{free_port()}", len(images), len(images))
    parties = [
        PreparedParty("model-owner", prepare_model_owner, _owner, (str(trained_checkpoint),)),
        PreparedParty("dealer", prepare_dealer, run_dealer),
        PreparedParty(
            "data-owner", prepare_data_owner, _data_owner, (served.config, images.numpy())
        ),
    ]
    try:
        for party in parties:
            party.start(session, timeout=180)
        owner, _, data = (party.result(240) for party in parties)
    finally:
        for party in parties:
            party.kill()
    with torch.no_grad():
        plain = served.model(images)
    # the data owner learns the outputs ...
    torch.testing.assert_close(data["logits"], plain, atol=0.02, rtol=0)
    # ... the model owner does not: the reveal to the data owner gives it nothing
    assert owner["revealed_here"] is None
    # its shares of the images and of the outputs are ring elements unrelated to them
    assert _uncorrelated(owner["x_share"], images) < 0.05
    # Encoded values here are < 2**23 (scale 2**16). Shares are uniform over the 64-bit
    # ring, or over ±2**47 after CrypTen's local truncation (division by the scale), so
    # |share| > 2**30 fails for one value in ~2**17: a clean test, not a coin flip.
    for share in (owner["x_share"], owner["y_share"]):
        assert (share.abs() > 2**30).float().mean() > 0.95
    # the data owner's share of the first weight tensor says nothing about the weights
    same_shape = [p.detach() for p in served.model.parameters() if p.shape == data["w_share"].shape]
    assert same_shape, data["w_name"]
    for true in same_shape:
        assert _uncorrelated(data["w_share"], true) < 0.2
    assert (data["w_share"].abs() > 2**30).float().mean() > 0.95
