"""Files for `worker.child.bootstrap.warm_up`; see `pyfc_warm_up_handler`."""
