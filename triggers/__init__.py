"""Trigger adapters (S3/MinIO, cron, MQ, log streams): source events -> invocations."""
