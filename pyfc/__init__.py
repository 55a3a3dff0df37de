"""The `pyfc` command: local stack supervisor, single roles, admin and client commands."""
