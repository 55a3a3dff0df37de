def handler(event, context):
    """Echo the event back (bytes in, bytes out)."""
    print(f"echo {len(event)} bytes for request {context.request_id}")
    return event
