"""Dispatcher role: admits every invocation and routes it to the worker fleet."""
