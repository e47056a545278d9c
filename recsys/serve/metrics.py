"""Prometheus metrics and the ASGI middleware that records them (and caps body sizes).

``recsys_http_requests_total{method, route, status}`` and
``recsys_http_request_duration_seconds{method, route}`` are labelled by the route
*template* (``/v1/users/{user_id}/recommendations``), never by the raw path, so ids do not
blow up the label set; requests that match no route are ``route="unmatched"``.

With several workers set ``PROMETHEUS_MULTIPROC_DIR`` (``recsys serve --workers N`` does)
so that ``/metrics`` aggregates all workers instead of answering for one at random.
"""

from __future__ import annotations

import json
import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BODY_METHODS = {"POST", "PUT", "PATCH"}


class Metrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "recsys_http_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recsys_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.items_added = Counter(
            "recsys_items_added", "items added through POST /v1/items", registry=self.registry
        )
        self.catalogue = Gauge(
            "recsys_catalogue_items",
            "items in the served catalogue, added ones included",
            registry=self.registry,
            multiprocess_mode="max",
        )

        self.journal_skipped = Gauge(
            "recsys_journal_skipped_lines",
            "corrupt lines of the adds journal skipped (as of the last /readyz)",
            registry=self.registry,
            multiprocess_mode="max",
        )

    def expose(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ObservabilityMiddleware:
    """Pure ASGI: times every HTTP request, counts it by route template and status, and
    answers 413 to bodies over ``max_body_bytes`` before the app parses them."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if scope["method"] in BODY_METHODS:
                receive = await self._buffer_body(scope, receive)
            if receive is None:
                await _too_large(send_wrapper, self.max_body_bytes)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = getattr(route, "path_format", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, label, str(status["code"])).inc()
            self.metrics.latency.labels(method, label).observe(time.perf_counter() - start)

    async def _buffer_body(self, scope, receive):
        """The whole body (≤ limit) replayed as one message; None when over the limit."""
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        return None
                except ValueError:
                    pass
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _replay([message], receive)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return _replay([body], receive)


def _replay(messages, upstream):
    """``messages`` first, then the server's own ``receive`` (e.g. to see a disconnect)."""
    queue = list(messages)

    async def receive():
        if queue:
            return queue.pop(0)
        return await upstream()

    return receive


async def _too_large(send, limit: int) -> None:
    body = json.dumps({"detail": f"request body exceeds {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
