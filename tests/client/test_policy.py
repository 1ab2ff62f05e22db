"""A site's policy against a coordinator that loosens the run: each loosening is refused
at the site, before any data is touched, naming the policy line it breaks; without the
policy (the control) the same run is served."""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import client.local as local
from client.client_app import make_client_app
from client.policy import DEFAULT, PolicyViolation, SitePolicy
from task.config import compose_config
from task.models.factory import build_model

BASE = ["experiment=fed_quick", "logger=none"]
POLICY = """\
require_secure: true
min_threshold: 0.66
min_cohort: 3
require_dp: true
max_epsilon: 3.0
lifetime_epsilon: 8.0
"""


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def untouched(monkeypatch):
    """Records whether a handler reached the site's data or its training."""
    touched = []
    real = local._prepared

    def prepared(*args, **kwargs):
        touched.append("data")
        return real(*args, **kwargs)

    monkeypatch.setattr(local, "_prepared", prepared)
    return touched


def _train(app, node_config, overrides=None) -> str | None:
    """The train handler's error (what Flower sends as the error reply), or None."""
    cfg = compose_config([*BASE, "secure=none"])
    arrays = ArrayRecord(build_model(cfg.model, (1, 28, 28), 2).state_dict())
    run_config = {} if overrides is None else {"overrides": " ".join(overrides)}
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 3} | node_config,
        state=RecordDict(),
        run_config=run_config,
    )
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    try:
        app(Message(content=content, message_type="train", dst_node_id=1), context)
    except PolicyViolation as err:
        return str(err)
    return None


LOOSENINGS = {
    "secure=none": (["secure=none", "privacy=local_dp"], "require_secure: true"),
    "threshold": (["secure.threshold=0.5", "privacy=local_dp"], "min_threshold: 0.66"),
    "privacy=none": (["privacy=none"], "require_dp: true"),
    "epsilon": (["privacy=local_dp", "privacy.epsilon=10"], "max_epsilon: 3.0"),
}


@pytest.mark.parametrize("case", LOOSENINGS)
def test_a_run_that_loosens_the_policy_is_refused_before_any_data(policy_file, untouched, case):
    overrides, line = LOOSENINGS[case]
    app = make_client_app([*BASE, *overrides])
    error = _train(app, {"site-policy": str(policy_file)})
    assert error is not None and f"site policy {policy_file}: {line}" in error
    assert "refused before any data was touched" in error
    assert untouched == []


def test_without_a_policy_file_the_same_loosened_run_is_served(untouched):
    """The control: a simulation's sites (no policy file) train the secure=none run."""
    assert _train(make_client_app([*BASE, "secure=none"]), {}) is None
    assert untouched == ["data"]


def test_a_deployed_site_gets_the_default_policy_without_writing_anything(untouched):
    """A deployment's ClientApp reads the run config: secure=none there is refused."""
    error = _train(make_client_app(), {}, overrides=[*BASE, "secure=none"])
    assert error is not None and "the default site policy: require_secure: true" in error
    assert untouched == []


def test_the_run_may_tighten_the_policy():
    cfg = compose_config([*BASE, "secure.threshold=0.9", "secure.min_cohort=4", "privacy=local_dp"])
    assert DEFAULT.violations(cfg) == []
    strict = SitePolicy(require_dp=True, max_epsilon=3.0, lifetime_epsilon=3.0, max_rounds=36)
    assert strict.violations(cfg) == []
    with pytest.raises(PolicyViolation, match="max_rounds: 36, but the server sent round 37"):
        strict.check(cfg, server_round=37)


def test_each_policy_line_is_checked_by_name(tmp_path):
    cfg = compose_config(
        [
            *BASE,
            "privacy=local_dp",
            "privacy.epsilon=null",
            "privacy.noise_multiplier=1.0",
            "secure.min_cohort=2",
            "federation.num_rounds=50",
        ]
    )
    policy = SitePolicy(max_epsilon=3.0, max_rounds=40)
    broken = policy.violations(cfg)
    assert "min_cohort: 3, but the run asks secure.min_cohort=2" in broken
    assert "max_epsilon: 3.0, but the run asks privacy.epsilon=None" in broken
    assert "max_rounds: 40, but the run asks federation.num_rounds=50" in broken


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("require_secure: yes please\n", "require_secure: 'yes please' must be true or false"),
        ("min_threshold: 1.5\n", "min_threshold: 1.5 must be a fraction in (0, 1]"),
        ("min_cohort: 1\n", "min_cohort: 1 must be an integer of at least 2"),
        ("max_epsilon: -1\n", "max_epsilon: -1 must be a positive number or null"),
        ("secure: false\n", "unknown lines ['secure']"),
        ("- a list\n", "must be a mapping of policy lines"),
    ],
)
def test_a_bad_policy_file_is_refused_by_name(tmp_path, text, message):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=None) as err:
        SitePolicy.from_file(path)
    assert message in str(err.value) and str(path) in str(err.value)
