"""Gateway role: HTTP control plane and invoke data plane."""
