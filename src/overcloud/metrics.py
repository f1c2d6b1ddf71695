"""The Tower's own Prometheus metrics (scraped by the operator's Prometheus, not ours).

Each Tower gets its own ``CollectorRegistry`` so several Towers (tests) never clash.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)


class TowerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "overcloud_http_requests_total", "API requests", ["method", "route", "status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "overcloud_http_request_seconds", "API request latency", ["method", "route"], buckets=BUCKETS, registry=self.registry
        )
        self.workflow_seconds = Histogram(
            "overcloud_workflow_seconds", "Workflow wall time", ["workflow", "outcome"], buckets=BUCKETS, registry=self.registry
        )
        self.task_seconds = Histogram(
            "overcloud_workflow_task_seconds", "Workflow task durations", ["workflow", "task", "state"], buckets=BUCKETS,
            registry=self.registry,
        )

    def observe_workflow(self, workflow: str, outcome: str, seconds: float) -> None:
        self.workflow_seconds.labels(workflow, outcome).observe(seconds)

    def observe_task(self, workflow: str, task: str, state: str, seconds: float | None) -> None:
        if seconds is not None:
            self.task_seconds.labels(workflow, task, state).observe(seconds)

    def watch_status(self, counts: Callable[[], dict[str, int]]) -> None:
        """Report OverClouds by status, read from the repository at scrape time."""

        class _StatusCollector:
            def collect(self):
                g = GaugeMetricFamily("overcloud_overclouds", "OverClouds by status", labels=["status"])
                for status, n in counts().items():
                    g.add_metric([status], n)
                yield g

        self.registry.register(_StatusCollector())

    def watch_ssh(self, round_trips: Callable[[], dict[str, int]],
                  agent_calls: Callable[[], dict[str, int]] | None = None) -> None:
        """Report, per remote host since the Tower started and read at scrape time, the SSH
        channel exchanges (commands, file transfers, streams opened: the transport's round
        trips) and the requests to the host's kept agent (each a round trip over a stream it
        keeps open): what creates and deletes cost in exchanges with the hosts (bench/remote.py)."""

        class _SSHCollector:
            def collect(self):
                c = CounterMetricFamily("overcloud_ssh_round_trips", "SSH channel exchanges per remote host",
                                        labels=["host"])
                for host, n in sorted(round_trips().items()):
                    c.add_metric([host], n)
                yield c
                if agent_calls is not None:
                    a = CounterMetricFamily("overcloud_ssh_agent_calls", "Requests to the kept agent per remote host",
                                            labels=["host"])
                    for host, n in sorted(agent_calls().items()):
                        a.add_metric([host], n)
                    yield a

        self.registry.register(_SSHCollector())
