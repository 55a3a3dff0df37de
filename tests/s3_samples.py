"""Object event messages as their senders document them, for tests of every path."""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import quote_plus

# MinIO's event as its AMQP and webhook targets send it (MinIO docs, "Publish Events to
# AMQP": `EventName`, `Key`, `Records`; keys URL-encoded in the record).
MINIO_EVENT: dict[str, Any] = {
    "EventName": "s3:ObjectCreated:Put",
    "Key": "images/myphoto.jpg",
    "Records": [
        {
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "awsRegion": "",
            "eventTime": "2019-09-10T17:41:54.000Z",
            "eventName": "s3:ObjectCreated:Put",
            "userIdentity": {"principalId": "AKIAIOSFODNN7EXAMPLE"},
            "requestParameters": {
                "accessKey": "AKIAIOSFODNN7EXAMPLE",
                "region": "",
                "sourceIPAddress": "192.168.56.192",
            },
            "responseElements": {
                "content-length": "0",
                "x-amz-request-id": "15C3249451E12784",
                "x-minio-deployment-id": "751a8ba6-acb2-42f6-a297-4cdf1cf1fa4f",
                "x-minio-origin-endpoint": "http://192.168.86.115:9000",
            },
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "Config",
                "bucket": {
                    "name": "images",
                    "ownerIdentity": {"principalId": "AKIAIOSFODNN7EXAMPLE"},
                    "arn": "arn:aws:s3:::images",
                },
                "object": {
                    "key": "myphoto.jpg",
                    "size": 6474,
                    "eTag": "430f89010c77aa34fc8760696da62d08-1",
                    "contentType": "image/jpeg",
                    "userMetadata": {"content-type": "image/jpeg"},
                    "versionId": "1",
                    "sequencer": "15C32494527B46C5",
                },
            },
            "source": {
                "host": "192.168.86.115",
                "port": "",
                "userAgent": "MinIO (linux; amd64) minio-go/v6.0.32 mc/DEVELOPMENT",
            },
        }
    ],
}


def minio_event(
    bucket: str,
    key: str,
    *,
    name: str = "s3:ObjectCreated:Put",
    sequencer: str = "15C32494527B46C5",
    metadata: dict[str, str] | None = None,
    size: int = 6474,
) -> dict[str, Any]:
    """MINIO_EVENT for another bucket, key (given decoded, sent encoded), name, sequencer."""
    event = copy.deepcopy(MINIO_EVENT)
    event["EventName"] = name
    event["Key"] = f"{bucket}/{key}"
    record = event["Records"][0]
    record["eventName"] = name
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    obj = record["s3"]["object"]
    obj["key"] = quote_plus(key)
    obj["sequencer"] = sequencer
    obj["size"] = size
    if metadata:
        obj["userMetadata"] = {**obj["userMetadata"], **metadata}
    return event


def minio_body(bucket: str, key: str, **kw: Any) -> bytes:
    return json.dumps(minio_event(bucket, key, **kw)).encode()
