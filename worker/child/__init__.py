"""What runs inside an instance's child process: the bootstrap, its output capture, the
function's context, the frame protocol, the zygote that forks children and the uid drop.

The rule, checked by an import-linter contract (pyproject.toml): these modules import only
the standard library, msgspec and each other, never the rest of the worker, `shared`, or a
broker, database or HTTP client. A child must start fast, and a function must not find
the platform's clients loaded in its process. Keep this file free of imports too.
"""
