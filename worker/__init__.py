"""Worker role: hosts warm function instances and runs invocations on them.

Keep this file free of imports: `worker.bootstrap` (the instance child process) imports
this package, and it must start fast and never pull in broker or database clients.
"""
