"""The Tower's /metrics counts SSH round trips per remote host, read at scrape time."""

from __future__ import annotations

from prometheus_client import generate_latest

from overcloud.metrics import TowerMetrics


def test_ssh_round_trips_are_read_from_the_transport_at_each_scrape():
    counts = {"och-a1": 3, "och-b1": 0}
    m = TowerMetrics()
    m.watch_ssh(lambda: dict(counts))
    text = generate_latest(m.registry).decode()
    assert 'overcloud_ssh_round_trips_total{host="och-a1"} 3.0' in text
    assert 'overcloud_ssh_round_trips_total{host="och-b1"} 0.0' in text
    assert "# TYPE overcloud_ssh_round_trips_total counter" in text
    counts["och-a1"] = 41
    assert 'overcloud_ssh_round_trips_total{host="och-a1"} 41.0' in generate_latest(m.registry).decode()


def test_a_tower_without_ssh_sites_reports_no_ssh_series():
    assert "overcloud_ssh_round_trips" not in generate_latest(TowerMetrics().registry).decode()


def test_kept_agent_requests_are_a_series_of_their_own():
    m = TowerMetrics()
    m.watch_ssh(lambda: {"och-a1": 2}, lambda: {"och-a1": 57})
    text = generate_latest(m.registry).decode()
    assert 'overcloud_ssh_round_trips_total{host="och-a1"} 2.0' in text
    assert 'overcloud_ssh_agent_calls_total{host="och-a1"} 57.0' in text
