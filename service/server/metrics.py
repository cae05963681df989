"""Prometheus metrics, one registry per app (so tests and several apps in one process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("byol_requests_total", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("byol_request_latency_seconds", "request latency", ["route"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.in_flight = Gauge("byol_requests_in_flight", "embedding and search requests being answered",
                               registry=self.registry)
        self.draining = Gauge("byol_draining", "1 while the server drains after SIGTERM", registry=self.registry)
        self.queue_depth = Gauge("byol_queue_depth", "images waiting for inference", registry=self.registry)
        self.batch_size = Histogram("byol_batch_size", "images per inference batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.images = Counter("byol_images_embedded_total", "images embedded", registry=self.registry)
        self.decode_errors = Counter("byol_decode_errors_total", "images refused at decoding", registry=self.registry)
        self.searches = Counter("byol_searches_total", "nearest-neighbour queries answered", registry=self.registry)
        self.duplicate_checks = Counter("byol_duplicate_checks_total", "/search duplicates=true queries, by whether "
                                        "the image was already in the set", ["found"], registry=self.registry)
        self.index_generation = Gauge("byol_index_generation", "the embedding folder's generation being served",
                                      registry=self.registry)
        self.index_switches = Counter("byol_index_switches_total", "switches to a new generation of the index",
                                      registry=self.registry)
        self.index_switch_seconds = Gauge("byol_index_switch_seconds", "how long the last switch took, from noticing "
                                          "the new generation to serving it", registry=self.registry)
        self.index_poll_errors = Counter("byol_index_poll_errors_total", "failed checks or loads of a new index "
                                         "generation (the old one goes on serving)", registry=self.registry)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.images.inc(size)
