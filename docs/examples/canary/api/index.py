import os


def handler(event, context):
    return f"release {os.environ['RELEASE']}: {event.decode() or 'hello'}"
