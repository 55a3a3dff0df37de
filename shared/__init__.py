"""What every pyfc role imports: protocol, settings, metadata, blobs, topology, errors.

Nothing here imports a role (checked by import-linter) and nothing runs at import time.
"""
