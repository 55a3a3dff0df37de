"""Files for `worker.bootstrap.warm_up`; see `pyfc_warm_up_handler`."""
