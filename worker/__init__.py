"""Worker role: hosts warm function instances and runs invocations on them.

What runs inside an instance's process is `worker.child` (see its docstring for the rule
it keeps). Keep this file free of imports: the child imports this package, and it must
start fast and never pull in broker or database clients.
"""
