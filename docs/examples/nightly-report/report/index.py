import json
import os


def handler(event, context):
    """Called by the timer with {"triggerTime", "triggerName", "payload"}, or by hand."""
    fire = json.loads(event) if event else {}
    payload = json.loads(fire.get("payload") or "{}")
    report = {
        "title": os.environ["REPORT_TITLE"],
        "day": payload.get("day", "today"),
        "scheduledFor": fire.get("triggerTime"),
    }
    print(json.dumps(report))  # kept in the service's log store
    return report
