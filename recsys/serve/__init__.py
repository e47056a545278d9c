"""The HTTP API over a run folder: ``create_app`` (``app``), settings (``config``), the
serving state with copy-on-write adds (``state``), the added-items journal shared by
workers (``journal``), the content-encoder protocol (``content``), request and response
models (``schemas``) and Prometheus metrics (``metrics``).

Reads the run folder only (``recsys.artifacts.RunFolder``), never the training code.
"""
