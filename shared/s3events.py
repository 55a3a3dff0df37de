"""Object storage events (S3, MinIO): decoding, matching a trigger, and the function's event.

Pure functions over plain data, shared by the s3 trigger process (MinIO over AMQP, SQS)
and the gateway's webhook endpoint, so every path reads a record the same way.

What arrives: S3's `{"Records": [...]}` (SQS, also wrapped in an SNS notification), MinIO's
`{"EventName", "Key", "Records": [...]}` (AMQP and webhook targets), and S3's
`s3:TestEvent` (sent once when a notification is configured: not an object event, skipped).
Keys in records are URL-encoded as S3 sends them (`+` for a space, `%2F` for `/` on
moto): filters match the decoded key. The `s3` event format hands the record as it came;
the `oss` format hands Function Compute's OSS trigger event with the decoded key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import msgspec

# One object event is one invocation; a message holding more records than this is foreign.
MAX_RECORDS = 100
# User metadata that carries a write's lineage mark (`shared.tokens.mark`); S3 lower-cases
# metadata names, MinIO sends them as `X-Amz-Meta-Pyfc-Lineage`.
LINEAGE_METADATA = "pyfc-lineage"

# The event names a trigger may ask for (S3's, as MinIO and AWS name them).
S3_EVENTS = frozenset(
    {
        "s3:ObjectCreated:*",
        "s3:ObjectCreated:Put",
        "s3:ObjectCreated:Post",
        "s3:ObjectCreated:Copy",
        "s3:ObjectCreated:CompleteMultipartUpload",
        "s3:ObjectCreated:PutRetention",
        "s3:ObjectCreated:PutLegalHold",
        "s3:ObjectRemoved:*",
        "s3:ObjectRemoved:Delete",
        "s3:ObjectRemoved:DeleteMarkerCreated",
        "s3:ObjectRestore:*",
        "s3:ObjectRestore:Post",
        "s3:ObjectRestore:Completed",
        "s3:ObjectTagging:*",
        "s3:ObjectTagging:Put",
        "s3:ObjectTagging:Delete",
    }
)
# FC's OSS event names, accepted in `events` too: OSS name -> S3 name.
OSS_TO_S3 = {
    "oss:ObjectCreated:*": "s3:ObjectCreated:*",
    "oss:ObjectCreated:PutObject": "s3:ObjectCreated:Put",
    "oss:ObjectCreated:PostObject": "s3:ObjectCreated:Post",
    "oss:ObjectCreated:CopyObject": "s3:ObjectCreated:Copy",
    "oss:ObjectCreated:CompleteMultipartUpload": "s3:ObjectCreated:CompleteMultipartUpload",
    "oss:ObjectRemoved:*": "s3:ObjectRemoved:*",
    "oss:ObjectRemoved:DeleteObject": "s3:ObjectRemoved:Delete",
    "oss:ObjectRemoved:DeleteObjects": "s3:ObjectRemoved:Delete",
}
# S3's action -> OSS's, for the `oss` event format's `eventName`.
_S3_TO_OSS_ACTION = {
    "Put": "PutObject",
    "Post": "PostObject",
    "Copy": "CopyObject",
    "CompleteMultipartUpload": "CompleteMultipartUpload",
    "Delete": "DeleteObject",
    "DeleteMarkerCreated": "DeleteObject",
}


class MalformedEvent(ValueError):
    """A message that is not an object event notification (parked, never retried)."""


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    """One record of a notification: the raw record and what matching needs from it."""

    record: dict[str, Any]
    bucket: str
    key: str  # decoded
    name: str  # "ObjectCreated:Put" (no "s3:" prefix)
    time: str = ""
    size: int = 0
    etag: str = ""
    sequencer: str = ""
    region: str = ""
    user_metadata: dict[str, str] = field(default_factory=dict)

    @property
    def dedup_key(self) -> str:
        """Identifies this event among all of the bucket's: two deliveries of one event
        give the same key (a request id per event and trigger: `event_id`)."""
        stamp = self.sequencer or f"{self.time}/{self.etag}"
        return f"{self.bucket}/{self.name}/{stamp}/{self.key}"

    @property
    def lineage_mark(self) -> str:
        """The writer's lineage mark from the record's user metadata ("" if none)."""
        for name, value in self.user_metadata.items():
            if name.lower() in (LINEAGE_METADATA, f"x-amz-meta-{LINEAGE_METADATA}"):
                return value
        return ""


def parse(body: bytes) -> list[ObjectEvent]:
    """The object events of one notification message; [] for S3's test event.

    Raises MalformedEvent for anything else (not JSON, not a notification, a record
    without bucket, key or event name)."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise MalformedEvent(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise MalformedEvent("not a JSON object")
    if doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        return parse(doc["Message"].encode())  # SNS fan-out to SQS wraps the S3 message
    if doc.get("Event") == "s3:TestEvent":
        return []
    records = doc.get("Records")
    if not isinstance(records, list) or not records:
        raise MalformedEvent("no Records")
    if len(records) > MAX_RECORDS:
        raise MalformedEvent(f"{len(records)} records (at most {MAX_RECORDS})")
    return [_event(i, r) for i, r in enumerate(records)]


def _event(index: int, record: Any) -> ObjectEvent:
    where = f"Records[{index}]"
    if not isinstance(record, dict):
        raise MalformedEvent(f"{where}: not an object")
    name = record.get("eventName")
    s3 = record.get("s3")
    if not isinstance(name, str) or not name or not isinstance(s3, dict):
        raise MalformedEvent(f"{where}: no eventName or s3")
    bucket, obj = s3.get("bucket"), s3.get("object")
    if not isinstance(bucket, dict) or not isinstance(obj, dict):
        raise MalformedEvent(f"{where}: no s3.bucket or s3.object")
    bucket_name, key = bucket.get("name"), obj.get("key")
    if not isinstance(bucket_name, str) or not bucket_name or not isinstance(key, str) or not key:
        raise MalformedEvent(f"{where}: no s3.bucket.name or s3.object.key")
    size = obj.get("size", 0)
    metadata = obj.get("userMetadata")
    return ObjectEvent(
        record=record,
        bucket=bucket_name,
        key=unquote_plus(key),
        name=name.removeprefix("s3:"),
        time=str(record.get("eventTime", "")),
        size=size if isinstance(size, int) and not isinstance(size, bool) else 0,
        etag=str(obj.get("eTag", "")),
        sequencer=str(obj.get("sequencer", "")),
        region=str(record.get("awsRegion", "")),
        user_metadata=(
            {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
        ),
    )


def s3_name(event: str) -> str:
    """A configured event name as S3 names it (`oss:` names mapped)."""
    return OSS_TO_S3.get(event, event)


def name_matches(pattern: str, name: str) -> bool:
    """Whether a configured event (`s3:ObjectCreated:*`, `s3:ObjectCreated:Put`) covers a
    record's event name (`ObjectCreated:Put`)."""
    wanted = s3_name(pattern).removeprefix("s3:")
    if wanted.endswith(":*"):
        return name.startswith(wanted[:-1])
    return name == wanted


def matches(
    event: ObjectEvent, *, bucket: str, events: list[str], prefix: str, suffix: str
) -> bool:
    """Whether a trigger with this bucket, events and key filter takes `event`."""
    return (
        event.bucket == bucket
        and event.key.startswith(prefix)
        and event.key.endswith(suffix)
        and any(name_matches(p, event.name) for p in events)
    )


def s3_payload(event: ObjectEvent) -> bytes:
    """The `s3` format: `{"Records": [record]}`, the record as S3 or MinIO sent it."""
    return msgspec.json.encode({"Records": [event.record]})


def oss_payload(event: ObjectEvent) -> bytes:
    """The `oss` format: Function Compute's OSS trigger event for this record."""
    category, _, action = event.name.partition(":")
    region = event.region or "us-east-1"
    record = event.record
    identity = record.get("userIdentity")
    principal = identity.get("principalId", "") if isinstance(identity, dict) else ""
    params = record.get("requestParameters")
    source_ip = params.get("sourceIPAddress", "") if isinstance(params, dict) else ""
    elements = record.get("responseElements")
    request_id = elements.get("x-amz-request-id", "") if isinstance(elements, dict) else ""
    bucket = record["s3"]["bucket"]
    arn = bucket.get("arn") if isinstance(bucket.get("arn"), str) else ""
    return msgspec.json.encode(
        {
            "events": [
                {
                    "eventName": f"{category}:{_S3_TO_OSS_ACTION.get(action, action)}",
                    "eventSource": "acs:oss",
                    "eventTime": event.time,
                    "eventVersion": "1.0",
                    "region": region,
                    "oss": {
                        "bucket": {
                            "name": event.bucket,
                            "arn": arn or f"acs:oss:{region}::{event.bucket}",
                            "ownerIdentity": principal,
                        },
                        "object": {
                            "key": event.key,
                            "size": event.size,
                            "eTag": event.etag.strip('"'),
                            "deltaSize": event.size,
                        },
                        "ossSchemaVersion": "1.0",
                        "ruleId": "",
                    },
                    "requestParameters": {"sourceIPAddress": source_ip},
                    "responseElements": {"requestId": request_id},
                    "userIdentity": {"principalId": principal},
                }
            ]
        }
    )


def payload(event_format: str, event: ObjectEvent) -> bytes:
    """The function's event in the trigger's `eventFormat`."""
    return oss_payload(event) if event_format == "oss" else s3_payload(event)
