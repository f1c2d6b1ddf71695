"""The collector: every reading into the OverCloud's DataLake (S3), batched, partitioned by
device and hour (``readings/device=<id>/hour=<YYYY-MM-DDTHH>/<first-ts>-<n>.jsonl``), and the
latest values as Prometheus metrics on /metrics."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

import boto3
from botocore.config import Config
from prometheus_client import Counter, Gauge, generate_latest

from smart_energy.common import env, env_float, log, mqtt_client, serve, setup_logging

GAUGES = {
    "room_temp_c": Gauge("se_room_temperature_celsius", "room temperature", ["device"]),
    "humidity_pct": Gauge("se_humidity_percent", "relative humidity", ["device"]),
    "power_w": Gauge("se_power_watts", "power draw", ["device"]),
    "cpu_temp_c": Gauge("se_cpu_temperature_celsius", "server CPU temperature", ["device"]),
}
READINGS = Counter("se_readings_total", "readings received")
STORED = Counter("se_readings_stored_total", "readings written to the DataLake")
BATCHES = Counter("se_batches_total", "objects written to the DataLake")


def main() -> None:
    setup_logging("collector")
    bucket = env("OVERCLOUD_S3_BUCKET")
    s3 = boto3.client("s3", endpoint_url=env("OVERCLOUD_S3_ENDPOINT"), region_name=env("AWS_DEFAULT_REGION", "us-east-1"),
                      config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}))
    flush_every = env_float("FLUSH_SECONDS", 2.0)
    pending: dict[tuple[str, str], list[dict]] = defaultdict(list)
    latest: dict[str, dict] = {}
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        try:
            r = json.loads(msg.payload)
            hour = time.strftime("%Y-%m-%dT%H", time.gmtime(r["ts"]))
        except (ValueError, KeyError):
            return
        READINGS.inc()
        with lock:
            pending[(r["device"], hour)].append(r)
            latest[r["device"]] = r
        for key, g in GAUGES.items():
            g.labels(r["device"]).set(r[key])

    def flush():
        with lock:
            batches = dict(pending)
            pending.clear()
        for (device, hour), rows in batches.items():
            key = f"readings/device={device}/hour={hour}/{rows[0]['ts']:.3f}-{len(rows)}.jsonl"
            body = "".join(json.dumps(r) + "\n" for r in rows).encode()
            try:
                s3.put_object(Bucket=bucket, Key=key, Body=body)
                STORED.inc(len(rows))
                BATCHES.inc()
            except Exception as exc:  # noqa: BLE001 - kept for the next flush
                log.warning("put %s failed: %s", key, exc)
                with lock:
                    pending[(device, hour)] = rows + pending.get((device, hour), [])

    mqtt_client("collector", on_message, subscribe=["se/readings/+"])
    serve(int(env("HTTP_PORT", "8000")), {
        ("GET", "/metrics"): lambda h: h.send(200, generate_latest(), "text/plain; version=0.0.4"),
        ("GET", "/latest"): lambda h: dict(latest),
    })
    log.info("writing readings to s3://%s/readings/ every %.1fs", bucket, flush_every)
    while True:
        time.sleep(flush_every)
        flush()


if __name__ == "__main__":
    main()
