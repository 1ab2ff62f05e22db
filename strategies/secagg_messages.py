"""How the secure aggregation protocol travels in Flower messages (both sides use this).

Key stages go as ``query.secagg`` messages whose ``secagg`` ConfigRecord names the stage;
the masking stage rides on the ordinary train / evaluate message (the ciphertexts addressed
to the site), and the site's masked vector replaces its plaintext reply.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from omegaconf import DictConfig

from mpc.secagg.protocol import KeyAdvert, RoundId

MESSAGE_TYPE = "query.secagg"
RECORD = "secagg"  # ConfigRecord with the stage's payload, both ways
MASKED = "secagg-masked"  # ArrayRecord holding the masked vector
LAYOUT = "secagg-layout"  # ConfigRecord holding the vector's (data-free) layout
SITE_METRICS = "site-metrics"  # plaintext per-site metrics a site chose to share
STATE = "secagg-session"  # the site's session state in Context.state
ARRAYS, METRICS = "arrays/", "metrics/"  # name prefixes in the packed vector's layout
#: The ``secure`` config's target when secure aggregation is on; sites then refuse to send
#: any update or count in the clear.
SECURE_TARGET = "strategies.secure.SecureAggregation"


def round_record(round_id: RoundId, stage: str, **fields) -> ConfigRecord:
    return ConfigRecord(
        {"stage": stage, "run": round_id.run, "round": round_id.round, "kind": round_id.kind}
        | fields
    )


def round_id_of(record: ConfigRecord) -> RoundId:
    return RoundId(str(record["run"]), int(record["round"]), str(record["kind"]))


def advert_record(advert: KeyAdvert) -> ConfigRecord:
    return ConfigRecord(
        {
            "site": advert.site,
            "channel-pk": advert.channel_pk,
            "mask-pk": advert.mask_pk,
            "signature": advert.signature,
        }
    )


def advert_of(record: ConfigRecord) -> KeyAdvert:
    return KeyAdvert(
        str(record["site"]),
        bytes(record["channel-pk"]),
        bytes(record["mask-pk"]),
        bytes(record["signature"]),
    )


def adverts_fields(adverts: list[KeyAdvert]) -> dict:
    return {
        "sites": [a.site for a in adverts],
        "channel-pks": [a.channel_pk for a in adverts],
        "mask-pks": [a.mask_pk for a in adverts],
        "signatures": [a.signature for a in adverts],
    }


def adverts_of(record: ConfigRecord) -> list[KeyAdvert]:
    keys = ("sites", "channel-pks", "mask-pks", "signatures")
    return [KeyAdvert(*row) for row in zip(*(list(record[k]) for k in keys), strict=True)]


def blobs_fields(blobs: dict[str, bytes]) -> dict:
    return {"names": list(blobs), "blobs": list(blobs.values())}


def blobs_of(record: ConfigRecord) -> dict:
    return dict(zip(list(record["names"]), [bytes(b) for b in record["blobs"]], strict=True))


def masked_records(vector: np.ndarray, layout: list) -> tuple[ArrayRecord, ConfigRecord]:
    return (
        ArrayRecord({"masked": Array(np.asarray(vector, dtype=np.uint64))}),
        ConfigRecord({"layout": json.dumps(layout)}),
    )


def masked_of(msg: Message) -> tuple[np.ndarray, list]:
    vector = msg.content.array_records[MASKED]["masked"].numpy()
    if vector.dtype != np.uint64:
        raise ValueError(f"masked vector of dtype {vector.dtype}, expected uint64")
    return vector, json.loads(str(msg.content.config_records[LAYOUT]["layout"]))


def secure_enabled(cfg: DictConfig) -> bool:
    """Whether the composed config asks for secure aggregation (``secure=smpc``)."""
    return cfg.get("secure", {}).get("_target_") == SECURE_TARGET
