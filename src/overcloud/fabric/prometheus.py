"""The OverCloud Datastore: Prometheus + node-exporter on the DevOps Post, driven in-process.

Everything here is argv builders, a config generator and httpx calls; the calls take an
``http=`` client, so the Tower asks Prometheus from inside the Post over the Post's BoxSession
(``session.http_client()``: its connections are opened in the box).

Config choice: the whole ``prometheus.yml`` is regenerated (``scrape_config``) and applied with
SIGHUP, sent by the caller (the box's supervisord: ``signalProcess``). Prometheus runs WITHOUT
``--web.enable-lifecycle``: its ``/-/reload`` and ``/-/quit`` answer 403, so a workload that
reaches Prometheus' port cannot stop it or make it re-read its config; only whoever can signal
the process (the Tower, through the box's root-only supervisord socket) reloads it.
:func:`reload` then waits until Prometheus serves the written jobs and targets
(``/api/v1/status/config``), or reports that it refused the file
(``prometheus_config_last_reload_successful`` fell to 0; the old config stays in force), so the
caller still knows whether the targets it wrote are live. file_sd targets files would be picked
up silently, with errors only in Prometheus' log, and a new job still needs prometheus.yml
rewritten.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from overcloud.files import write_atomic

logger = logging.getLogger(__name__)

PROMETHEUS_DEBIAN = "/usr/bin/prometheus"
NODE_EXPORTER_DEBIAN = "/usr/bin/prometheus-node-exporter"
RANGE_POINT_LIMIT = 11000  # Prometheus' own limit on points per series in a range query

# Collectors node-exporter runs for a box: what the Datastore dashboards read. Everything else
# (hwmon, thermal, rapl, nvme, systemd, ...) reads host-wide hardware that a netns box does not
# own, or is slow; --collector.disable-defaults turns them all off, these are turned back on.
NODE_COLLECTORS = ("cpu", "meminfo", "netdev", "filesystem", "loadavg", "diskstats", "netstat", "uname", "time")


class BinaryMissing(RuntimeError):
    def __init__(self, binary: str, package: str) -> None:
        super().__init__(f"{binary} not found: install the Debian package `{package}` (apt-get install {package})")
        self.binary, self.package = binary, package


class PromQLError(Exception):
    """Prometheus refused a query (``status`` is the HTTP status, ``message`` Prometheus' own text)."""

    def __init__(self, status: int, message: str, error_type: str = "bad_data") -> None:
        super().__init__(f"{status} {error_type}: {message}")
        self.status, self.message, self.error_type = status, message, error_type


def _binary(debian_path: str, name: str, package: str) -> str:
    if os.access(debian_path, os.X_OK):
        return debian_path
    found = shutil.which(name)
    if found is None:
        raise BinaryMissing(name, package)
    return found


def prometheus_binary() -> str:
    return _binary(PROMETHEUS_DEBIAN, "prometheus", "prometheus")


def node_exporter_binary() -> str:
    try:
        return _binary(NODE_EXPORTER_DEBIAN, "prometheus-node-exporter", "prometheus-node-exporter")
    except BinaryMissing:
        return _binary(NODE_EXPORTER_DEBIAN, "node_exporter", "prometheus-node-exporter")


def node_exporter_argv(listen: str) -> list[str]:
    """argv for one box's node-exporter, listening on ``listen`` (IP:PORT) only."""
    return [
        node_exporter_binary(),
        f"--web.listen-address={listen}",
        "--collector.disable-defaults",
        *(f"--collector.{c}" for c in NODE_COLLECTORS),
    ]


def prometheus_argv(config_path: str | Path, data_dir: str | Path, listen: str, retention: str = "15d") -> list[str]:
    """argv for the Datastore's Prometheus; ``listen`` is IP:PORT, ``retention`` e.g. ``15d``."""
    return [
        prometheus_binary(),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={data_dir}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address={listen}",
        # no --web.enable-lifecycle (nor --web.enable-admin-api): reloads come by SIGHUP
    ]


def scrape_config(interval_s: float, targets: dict[str, list[dict[str, Any]]]) -> str:
    """The whole prometheus.yml: one scrape job per key of ``targets`` (node, flow, seaweedfs,
    prometheus, ...), each target ``{"target": "ip:port", "labels": {"box": ..., "site": ..., ...}}``.
    A target without ``box`` or ``site`` is refused (ValueError): every series must say where it
    comes from."""
    ms = max(1, round(interval_s * 1000))
    interval = f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
    jobs = []
    for job, items in targets.items():
        static = []
        for item in items:
            labels = {str(k): str(v) for k, v in item.get("labels", {}).items()}
            missing = {"box", "site"} - labels.keys()
            if missing:
                raise ValueError(f"target {item.get('target')!r} of job {job!r} lacks labels {sorted(missing)}")
            static.append({"targets": [str(item["target"])], "labels": labels})
        jobs.append({"job_name": job, "scrape_interval": interval, "scrape_timeout": interval,
                     "static_configs": static})
    doc = {"global": {"scrape_interval": interval, "evaluation_interval": interval}, "scrape_configs": jobs}
    return yaml.safe_dump(doc, sort_keys=False)


def write_config(path: str | Path, text: str) -> None:
    """Replace the config atomically (Prometheus must never read half a file)."""
    write_atomic(path, text)


def _jobs(doc: Any) -> dict[str, list[tuple[tuple[str, ...], tuple[tuple[str, str], ...]]]]:
    """The scrape jobs of a config: job name -> its static targets and labels, order-free."""
    jobs = {}
    for job in (doc or {}).get("scrape_configs") or []:
        static = [(tuple(sorted(str(t) for t in sc.get("targets") or [])),
                   tuple(sorted((str(k), str(v)) for k, v in (sc.get("labels") or {}).items())))
                  for sc in job.get("static_configs") or []]
        jobs[str(job.get("job_name"))] = sorted(static)
    return jobs


def _reload_ok(http: httpx.Client, prom_url: str) -> float | None:
    """``prometheus_config_last_reload_successful`` (1 or 0), None when not readable."""
    try:
        for line in http.get(f"{prom_url}/metrics").text.splitlines():
            if line.startswith("prometheus_config_last_reload_successful "):
                return float(line.split()[1])
    except (httpx.HTTPError, ValueError, IndexError):
        pass
    return None


def reload(prom_url: str, signal_hup, config_text: str, timeout: float = 10.0, http: httpx.Client | None = None) -> float:
    """Apply ``config_text`` (already written to Prometheus' config file): ``signal_hup()``
    sends Prometheus SIGHUP, then this waits until Prometheus serves exactly the jobs and
    targets of ``config_text``. Returns the seconds waited. RuntimeError when Prometheus
    refused the file (it keeps running the old config) or did not apply it within
    ``timeout``; the message names the jobs missing, never the file's content. ``http``: the
    client to ask with (a box session's, from inside the box's network), else a new one."""
    want = _jobs(yaml.safe_load(config_text))
    url = prom_url.rstrip("/")
    start = time.monotonic()
    with _client(http, 5.0) as http:
        before = _reload_ok(http, url)
        signal_hup()
        seen: Any = "nothing yet"
        while True:
            try:
                loaded = http.get(f"{url}/api/v1/status/config").raise_for_status().json()["data"]["yaml"]
                got = _jobs(yaml.safe_load(loaded))
                if got == want:
                    return time.monotonic() - start
                seen = f"jobs {sorted(got)} (want {sorted(want)})" if set(got) != set(want) else "other targets"
            except (httpx.HTTPError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
                seen = f"{type(exc).__name__}"
            if before == 1.0 and _reload_ok(http, url) == 0.0:
                raise RuntimeError("Prometheus refused the new config (prometheus_config_last_reload_successful"
                                   " = 0; the old one stays in force; its log says why)")
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"Prometheus did not apply the new config within {timeout:g} s after SIGHUP "
                                   f"(serving {seen}; refused if prometheus_config_last_reload_successful is 0)")
            time.sleep(0.05)


@contextlib.contextmanager
def _client(http: httpx.Client | None, timeout: float):
    """``http`` as it is (its owner closes it), or a client of our own for the block."""
    if http is not None:
        yield http
        return
    with httpx.Client(timeout=timeout, trust_env=False) as own:
        yield own


def wait_ready(prom_url: str, timeout: float = 30.0, http: httpx.Client | None = None) -> float:
    """Wait for ``/-/ready``; returns the seconds waited, TimeoutError after ``timeout``."""
    start = time.monotonic()
    last: object = None
    while time.monotonic() - start < timeout:
        try:
            r = (http or httpx).get(f"{prom_url.rstrip('/')}/-/ready", timeout=2.0)
            if r.status_code == 200:
                return time.monotonic() - start
            last = r.status_code
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"Prometheus at {prom_url} not ready after {timeout}s (last: {last})")


def targets_health(prom_url: str, http: httpx.Client | None = None) -> list[dict[str, Any]]:
    """Active targets: job, instance, box, health (up/down/unknown), lastError, lastScrape."""
    r = (http or httpx).get(f"{prom_url.rstrip('/')}/api/v1/targets", params={"state": "active"}, timeout=10.0)
    r.raise_for_status()
    out = []
    for t in r.json()["data"]["activeTargets"]:
        labels = t.get("labels", {})
        out.append({"job": labels.get("job"), "instance": labels.get("instance"), "box": labels.get("box"),
                    "health": t.get("health"), "lastError": t.get("lastError", ""),
                    "lastScrape": t.get("lastScrape")})
    return out


def wait_all_up(prom_url: str, expected_instances, timeout: float = 30.0, http: httpx.Client | None = None) -> float:
    """Wait until every instance in ``expected_instances`` is scraped UP; returns seconds waited.
    TimeoutError names each target still down with its last error."""
    start = time.monotonic()
    expected = set(expected_instances)
    down: dict[str, str] = {i: "not a target" for i in expected}
    while time.monotonic() - start < timeout:
        health = {t["instance"]: t for t in targets_health(prom_url, http)}
        down = {i: ("not a target" if i not in health else f"{health[i]['health']}: {health[i]['lastError'] or '-'}")
                for i in expected if health.get(i, {}).get("health") != "up"}
        if not down:
            return time.monotonic() - start
        time.sleep(0.25)
    listing = ", ".join(f"{i} ({why})" for i, why in sorted(down.items()))
    raise TimeoutError(f"targets still down after {timeout}s: {listing}")


def _ts(t: float | dt.datetime) -> float:
    return t.timestamp() if isinstance(t, dt.datetime) else float(t)


def check_range_points(start: float | dt.datetime, end: float | dt.datetime, step: float,
                       limit: int = RANGE_POINT_LIMIT) -> int:
    """Points per series a range query would return; PromQLError(400) above ``limit``."""
    if step <= 0:
        raise PromQLError(400, f"step must be positive, got {step}")
    points = int((_ts(end) - _ts(start)) // step) + 1
    if points > limit:
        raise PromQLError(400, f"range query would return {points} points per series, over the limit of {limit}: "
                               f"widen the step or shorten the range")
    return points


def _api(prom_url: str, path: str, params: dict[str, Any], http: httpx.Client | None = None) -> Any:
    r = (http or httpx).post(f"{prom_url.rstrip('/')}/api/v1/{path}", data=params, timeout=60.0)
    try:
        body = r.json()
    except ValueError:
        r.raise_for_status()
        raise PromQLError(r.status_code, r.text.strip(), "unparsable") from None
    if body.get("status") != "success":
        raise PromQLError(r.status_code, body.get("error", r.text.strip()), body.get("errorType", "unknown"))
    return body["data"]


def query(prom_url: str, promql: str, time: float | dt.datetime | None = None, http: httpx.Client | None = None) -> Any:
    """Instant query; returns Prometheus' ``data`` ({"resultType", "result"})."""
    params: dict[str, Any] = {"query": promql}
    if time is not None:
        params["time"] = _ts(time)
    return _api(prom_url, "query", params, http)


def query_range(prom_url: str, promql: str, start: float | dt.datetime, end: float | dt.datetime,
                step: float, http: httpx.Client | None = None) -> Any:
    """Range query; refused before sending when it would exceed RANGE_POINT_LIMIT points."""
    check_range_points(start, end, step)
    return _api(prom_url, "query_range", {"query": promql, "start": _ts(start), "end": _ts(end), "step": step}, http)
