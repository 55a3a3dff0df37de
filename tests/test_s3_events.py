"""Object events: decoding what S3, moto and MinIO send, matching triggers, event formats,
and the `s3` trigger config's validation (tables; no broker, no store)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared import s3events
from shared.errors import BadRequest
from shared.s3events import MalformedEvent
from shared.trigger_types import S3, Limits, S3Config, decode_config, public_config
from tests.s3_samples import MINIO_EVENT, minio_body

LIMITS = Limits(max_event_bytes=6 * 1024 * 1024, namespace="pyfc")


def config(**fields: Any) -> S3Config:
    raw = {"bucket": "images", "events": ["s3:ObjectCreated:*"], **fields}
    parsed: S3Config = decode_config(S3, raw)
    S3.check(parsed, LIMITS)
    return parsed


def test_minio_documented_event_decodes() -> None:
    [event] = s3events.parse(json.dumps(MINIO_EVENT).encode())
    assert event.bucket == "images" and event.key == "myphoto.jpg"
    assert event.name == "ObjectCreated:Put" and event.size == 6474
    assert event.sequencer == "15C32494527B46C5"
    assert event.record is not None and event.record["eventSource"] == "minio:s3"


@pytest.mark.parametrize(
    ("sent", "decoded"),
    [
        ("a+b.jpg", "a b.jpg"),  # S3 sends a space as +
        ("a%2Bb.jpg", "a+b.jpg"),  # and a + as %2B
        ("100%25.txt", "100%.txt"),
        ("dir%2Fsub%2Fx.png", "dir/sub/x.png"),  # moto encodes /
        ("dir/sub/x.png", "dir/sub/x.png"),  # AWS and MinIO do not
        ("%E5%9B%BE%E7%89%87.png", "图片.png"),
        ("caf%C3%A9+%26+cr%C3%A8me", "café & crème"),
    ],
)
def test_keys_are_decoded(sent: str, decoded: str) -> None:
    doc = json.loads(minio_body("images", "x"))
    doc["Records"][0]["s3"]["object"]["key"] = sent
    [event] = s3events.parse(json.dumps(doc).encode())
    assert event.key == decoded


def test_quote_plus_round_trip_of_samples() -> None:
    for key in ["a b+c%d/é/图.png", "x y"]:
        [event] = s3events.parse(minio_body("images", key))
        assert event.key == key


def test_test_event_is_skipped_and_sns_wrapping_is_read() -> None:
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "images"}
    assert s3events.parse(json.dumps(test_event).encode()) == []
    wrapped = {"Type": "Notification", "Message": minio_body("images", "a.jpg").decode()}
    [event] = s3events.parse(json.dumps(wrapped).encode())
    assert event.key == "a.jpg"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b"{}",
        b'{"Records": []}',
        b'{"Records": [1]}',
        b'{"Records": [{"eventName": "s3:ObjectCreated:Put"}]}',
        b'{"Records": [{"eventName": "x", "s3": {"bucket": {"name": "b"}, "object": {}}}]}',
        b'{"Records": [{"eventName": "x", "s3": {"bucket": {}, "object": {"key": "k"}}}]}',
        b'{"Records": [{"s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}}]}',
        json.dumps({"Records": [MINIO_EVENT["Records"][0]] * 101}).encode(),
    ],
)
def test_malformed_messages_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedEvent):
        s3events.parse(body)


@pytest.mark.parametrize(
    ("events", "prefix", "suffix", "key", "name", "expected"),
    [
        (["s3:ObjectCreated:*"], "", "", "a.jpg", "s3:ObjectCreated:Put", True),
        (["s3:ObjectCreated:*"], "", "", "a.jpg", "s3:ObjectRemoved:Delete", False),
        (["s3:ObjectCreated:Put"], "", "", "a.jpg", "s3:ObjectCreated:Copy", False),
        (["s3:ObjectCreated:Put"], "", "", "a.jpg", "s3:ObjectCreated:Put", True),
        (["s3:ObjectRemoved:*"], "", "", "a.jpg", "s3:ObjectRemoved:Delete", True),
        (["oss:ObjectCreated:PutObject"], "", "", "a.jpg", "s3:ObjectCreated:Put", True),
        (["oss:ObjectRemoved:DeleteObject"], "", "", "a", "s3:ObjectRemoved:Delete", True),
        (["s3:ObjectCreated:*"], "in/", "", "in/a.jpg", "s3:ObjectCreated:Put", True),
        (["s3:ObjectCreated:*"], "in/", "", "out/a.jpg", "s3:ObjectCreated:Put", False),
        (["s3:ObjectCreated:*"], "", ".jpg", "in/a.png", "s3:ObjectCreated:Put", False),
        (["s3:ObjectCreated:*"], "in/", ".jpg", "in/a b.jpg", "s3:ObjectCreated:Put", True),
        # unicode prefixes match the decoded key
        (["s3:ObjectCreated:*"], "in/ü", "", "in/ü x", "s3:ObjectCreated:Put", True),
    ],
)
def test_matching(
    events: list[str], prefix: str, suffix: str, key: str, name: str, expected: bool
) -> None:
    trigger = config(events=events, filter={"key": {"prefix": prefix, "suffix": suffix}})
    [event] = s3events.parse(minio_body("images", key, name=name))
    assert trigger.takes(event) is expected
    [other] = s3events.parse(minio_body("other-bucket", key, name=name))
    assert trigger.takes(other) is False


def test_s3_format_hands_the_record_as_sent() -> None:
    body = minio_body("images", "in/a b.jpg")
    [event] = s3events.parse(body)
    handed = json.loads(s3events.payload("s3", event))
    assert handed == {"Records": json.loads(body)["Records"]}
    assert handed["Records"][0]["s3"]["object"]["key"] == "in%2Fa+b.jpg"


def test_oss_format_is_fc_oss_event() -> None:
    [event] = s3events.parse(minio_body("images", "in/a b.jpg", size=12))
    [oss] = json.loads(s3events.payload("oss", event))["events"]
    assert oss["eventName"] == "ObjectCreated:PutObject"
    assert oss["eventSource"] == "acs:oss"
    assert oss["eventTime"] == "2019-09-10T17:41:54.000Z"
    assert oss["region"]
    assert oss["oss"]["bucket"]["name"] == "images"
    assert oss["oss"]["bucket"]["arn"] == "arn:aws:s3:::images"
    assert oss["oss"]["object"] == {
        "key": "in/a b.jpg",
        "size": 12,
        "eTag": "430f89010c77aa34fc8760696da62d08-1",
        "deltaSize": 12,
    }
    [removed] = s3events.parse(minio_body("images", "k", name="s3:ObjectRemoved:Delete"))
    assert json.loads(s3events.payload("oss", removed))["events"][0]["eventName"] == (
        "ObjectRemoved:DeleteObject"
    )


def test_dedup_key_is_per_event() -> None:
    [a] = s3events.parse(minio_body("images", "k", sequencer="1"))
    [a_again] = s3events.parse(minio_body("images", "k", sequencer="1"))
    [b] = s3events.parse(minio_body("images", "k", sequencer="2"))
    [gone] = s3events.parse(
        minio_body("images", "k", sequencer="1", name="s3:ObjectRemoved:Delete")
    )
    assert a.dedup_key == a_again.dedup_key
    assert len({a.dedup_key, b.dedup_key, gone.dedup_key}) == 3


def test_lineage_mark_is_read_from_user_metadata() -> None:
    [minio] = s3events.parse(
        minio_body("images", "k", metadata={"X-Amz-Meta-Pyfc-Lineage": "pyfcm1.x.y"})
    )
    assert minio.lineage_mark == "pyfcm1.x.y"
    [plain] = s3events.parse(minio_body("images", "k"))
    assert plain.lineage_mark == ""


def test_config_defaults_and_sources() -> None:
    c = config()
    assert c.event_format == "s3" and c.filter.key.prefix == ""
    assert type(c.source).__name__ == "MinioAmqpSource" and c.source.exchange == ""
    sqs = config(
        source={
            "type": "sqs",
            "queueUrl": "http://127.0.0.1:5000/123456789012/q",
            "endpointUrl": "http://127.0.0.1:5000",
            "accessKeyId": "a",
            "secretAccessKey": "s",
        }
    )
    assert type(sqs.source).__name__ == "SqsSource"
    assert type(config(source={"type": "webhook"}).source).__name__ == "WebhookSource"
    assert config(eventFormat="oss", events=["oss:ObjectCreated:*"]).event_format == "oss"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"bucket": "ab"}, "triggerConfig.bucket"),
        ({"bucket": "Images"}, "triggerConfig.bucket"),
        ({"bucket": "a..b"}, "triggerConfig.bucket"),
        ({"events": []}, "triggerConfig.events"),
        ({"events": ["s3:ObjectCreated:Sideways"]}, "triggerConfig.events"),
        ({"events": "s3:ObjectCreated:*"}, "triggerConfig.events"),
        ({"eventFormat": "json"}, "triggerConfig.eventFormat"),
        ({"filter": {"key": {"prefix": "x" * 1025}}}, "triggerConfig.filter.key.prefix"),
        ({"filter": {"prefix": "x"}}, "triggerConfig.filter"),
        ({"source": {"type": "ftp"}}, "triggerConfig.source"),
        ({"source": {"type": "sqs"}}, "triggerConfig.source"),
        ({"source": {"type": "sqs", "queueUrl": "queue"}}, "triggerConfig.source.queueUrl"),
        (
            {"source": {"type": "sqs", "queueUrl": "http://h/q", "accessKeyId": "a"}},
            "triggerConfig.source",
        ),
        (
            {"source": {"type": "minio-amqp", "endpointUrl": "minio:9000"}},
            "triggerConfig.source.endpointUrl",
        ),
        (
            {"source": {"type": "minio-amqp", "exchange": "pyfc.invoke"}},
            "triggerConfig.source.exchange",
        ),
        ({"source": {"type": "webhook", "token": "x"}}, "triggerConfig.source"),
        ({"unknown": 1}, "triggerConfig"),
    ],
)
def test_bad_configs_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest) as e:
        config(**fields)
    assert field in e.value.message, e.value.message


def test_the_deployments_exchange_is_allowed() -> None:
    assert config(source={"type": "minio-amqp", "exchange": "pyfc.s3-events"}).source


def test_secrets_are_not_shown() -> None:
    stored = {"bucket": "b", "source": {"type": "sqs", "secretAccessKey": "s", "accessKeyId": "a"}}
    assert public_config(stored) == {
        "bucket": "b",
        "source": {"type": "sqs", "secretAccessKey": "", "accessKeyId": "a"},
    }
