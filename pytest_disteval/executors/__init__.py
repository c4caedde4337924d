"""Executors start workers: ``local`` as subprocesses on this host."""
