"""A small handler module for `worker.child.bootstrap.warm_up`: a zygote's spare child imports it
as `pyfc_warm_up_handler`, from this directory put first on `sys.path` for the moment, the
way an instance imports its function's module, then forgets it, so the import machinery's
first run happens before the child is handed a function. Nothing else imports it."""

import time


def handler(event: bytes, context: object) -> object:
    return {"at": time.time(), "event": event}
