"""Flower ClientApp: a thin adapter over the Flower-free site loops in ``task/``.

With ``secure=smpc`` the replies leave the site only masked (:mod:`client.secure`). Every
reply, masked or not, error or not, is first appended to the site's audit log
(:mod:`client.site_log_mod`), the outermost mod of every handler.

Records in (global arrays, round config), one engine call, records out (arrays, metrics
with the true number of examples, the site's name). An exception in a handler becomes an
error reply, which the strategy counts and skips.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.policy import DEFAULT, SitePolicy, make_policy_mod
from client.run_config import run_config
from client.secure import make_secure
from client.site_log_mod import make_site_log_mod
from client.transport import unpack_mod


def make_client_app(
    overrides: Sequence[str] | None = None, default_policy: SitePolicy | None = None
) -> ClientApp:
    """A ClientApp; ``overrides=None`` reads them from the run config (deployment).

    ``default_policy``: the site policy of a node whose config names no ``site-policy``
    file; by default :data:`client.policy.DEFAULT` in a deployment (the coordinator's run
    config cannot loosen it) and :meth:`SitePolicy.lab` where the caller gives the
    overrides (a simulation's sites belong to whoever runs it).
    """
    if default_policy is None:
        default_policy = DEFAULT if overrides is None else SitePolicy.lab()

    def get_cfg(context: Context):
        return run_config(context, overrides)

    # The app's own mods wrap every handler's mods (Flower: first in the list = outermost),
    # so the log records each reply as it leaves: after masking, key stages included. Then
    # the records a deployed server packed are restored, and the site's policy is checked
    # before any handler touches data or keys.
    mods = [make_site_log_mod(get_cfg), unpack_mod, make_policy_mod(get_cfg, default_policy)]
    app = ClientApp(mods=mods)
    # Secure aggregation (secure=smpc): key stages as queries, masking as a mod.
    secure_query, secure_mod = make_secure(get_cfg, default_policy)
    app.query("secagg")(secure_query)

    # Imported on the first message that needs the data (client.local): the key stages,
    # each its own process in a deployment, never pay for torch, MONAI or the images.
    @app.train(mods=[secure_mod])
    def train(msg: Message, context: Context) -> Message:
        from client import local

        return local.train(msg, context, overrides)

    @app.query("intensity", mods=[secure_mod])
    def intensity(msg: Message, context: Context) -> Message:
        from client import local

        return local.intensity(msg, context, overrides)

    @app.evaluate(mods=[secure_mod])
    def evaluate(msg: Message, context: Context) -> Message:
        from client import local

        return local.evaluate(msg, context, overrides)

    return app


app = make_client_app()
