"""`pyfc.plan`: the desired App against what the gateway shows, as tables (no server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pyfc import descriptor, yamldoc
from pyfc.plan import FunctionState, ServiceState, State, _same, plan, resend_secrets

S3_TRIGGER = """\
        triggers:
          up:
            type: oss
            config:
              bucket: photos
              events: ["oss:ObjectCreated:*"]
              source:
                type: sqs
                queueUrl: http://127.0.0.1:9/q
                endpointUrl: http://127.0.0.1:9
                accessKeyId: AKID
                secretAccessKey: {secret}
"""


def _app(tmp_path: Path, triggers: str = "") -> descriptor.App:
    (tmp_path / "fn").mkdir(exist_ok=True)
    (tmp_path / "fn" / "index.py").write_text("def handler(e, c):\n    return e\n")
    text = f"services:\n  s:\n    functions:\n      f:\n        code: ./fn\n{triggers}"
    return descriptor.validate(yamldoc.loads(text, tmp_path / "pyfc.yaml"))


def _state_of(app: descriptor.App, triggers: dict[str, dict[str, Any]]) -> State:
    """What the gateway would show after deploying `app` (secrets blanked)."""
    fn = app.services["s"].functions["f"]
    fields = {**fn.fields, "functionName": "f", "codeChecksum": fn.code.checksum, "revision": 3}
    service = ServiceState({"description": "", "environmentVariables": {}})
    service.functions["f"] = FunctionState(fields, None, None, triggers)
    return State({"s": service})


@pytest.mark.parametrize(
    ("desired", "current", "same"),
    [
        (3, 3.0, True),
        ("", None, True),
        ({}, None, True),
        (None, 0, False),
        (None, None, True),
        ({"A": "1"}, {"A": "1", "B": "2"}, False),  # a variable removed from the file
        ({"A": "1"}, {"A": "1", "B": ""}, True),
        (True, 1, False),
        ({"a": {"b": 1}}, {"a": {"b": 1.0}}, True),
    ],
)
def test_same(desired: Any, current: Any, same: bool) -> None:
    assert _same(desired, current) is same


def test_an_unchanged_app_plans_nothing(tmp_path: Path) -> None:
    app = _app(tmp_path)
    assert plan(app, _state_of(app, {}), prune=True) == []


def test_a_changed_secret_is_not_seen_but_resent_on_request(tmp_path: Path) -> None:
    app = _app(tmp_path, S3_TRIGGER.format(secret="one"))
    trig = app.services["s"].functions["f"].triggers["up"]
    assert trig.type == "s3"  # FC's oss is pyfc's s3
    shown = {"triggerName": "up", "triggerType": "s3", "qualifier": "LATEST", "enabled": True,
             "description": "",
             "triggerConfig": {**trig.config, "source": {**trig.config["source"],
                                                         "secretAccessKey": ""}}}  # fmt: skip
    state = _state_of(app, {"up": shown})
    assert plan(app, state) == []  # blanked secrets compare equal
    (resent,) = resend_secrets(app, state)
    assert resent.method == "PUT" and resent.body is not None
    assert resent.body["triggerConfig"]["source"]["secretAccessKey"] == "one"
    # Any other field of the config still shows.
    changed = {**shown, "triggerConfig": {**shown["triggerConfig"], "bucket": "old"}}
    (update,) = plan(app, _state_of(app, {"up": changed}))
    assert update.action == "update" and update.details[0].startswith("triggerConfig: ")
    assert "'bucket': 'old'" in update.details[0] and "'bucket': 'photos'" in update.details[0]


def test_prune_deletes_triggers_before_their_function(tmp_path: Path) -> None:
    app = _app(tmp_path)
    state = _state_of(app, {})
    gone = FunctionState({"functionName": "g"}, {"maxAsyncRetryAttempts": 1}, 2,
                         {"t": {"triggerName": "t", "triggerType": "timer"}})  # fmt: skip
    state.services["s"].functions["g"] = gone
    state.services["s"].aliases["old"] = {"aliasName": "old", "versionId": "1"}
    assert plan(app, state) == []  # nothing deleted without prune
    order = [(c.action, c.kind, c.target) for c in plan(app, state, prune=True)]
    assert order == [
        ("delete", "trigger", "s/g/t"),
        ("delete", "alias", "s:old"),
        ("delete", "function", "s/g"),
    ]
