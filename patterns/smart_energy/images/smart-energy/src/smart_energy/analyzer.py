"""The anomaly analyzer: rolling statistics per device and metric, thresholds from its
ConfigMap. On an anomaly it sends ``power_save`` to the device, notifies the administrator's
webhook, and records the anomaly; the device's acknowledgement gives the sensor-to-action
latency (reading timestamp to command applied, both on the same host clock)."""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from collections import deque

from smart_energy.common import env, env_float, log, mqtt_client, post_json, serve, setup_logging


def main() -> None:
    setup_logging("analyzer")
    cpu_max = env_float("CPU_TEMP_MAX_C", 80.0)
    power_z = env_float("POWER_ZSCORE", 4.0)
    power_max = env_float("POWER_MAX_W", 900.0)
    window = int(env("WINDOW", "30"))
    cooldown = env_float("COOLDOWN_SECONDS", 10.0)
    webhook = env("NOTIFY_URL", "")
    history: dict[str, deque] = {}
    last_action: dict[str, float] = {}
    anomalies: deque = deque(maxlen=1000)
    by_id: dict[str, dict] = {}
    latencies: deque = deque(maxlen=10000)
    lock = threading.Lock()
    counts = {"readings": 0, "anomalies": 0, "actions_applied": 0, "notify_failures": 0}
    outbox: deque = deque()
    wake = threading.Event()

    def notify_loop():
        while True:
            wake.wait(1.0)
            wake.clear()
            while outbox:
                a = outbox.popleft()
                try:
                    post_json(webhook, a, timeout=2.0)
                    a["notified"] = True
                except OSError as exc:
                    counts["notify_failures"] += 1
                    log.warning("webhook %s: %s", webhook, exc)

    def check(r: dict) -> str | None:
        h = history.setdefault(r["device"], deque(maxlen=window))
        reason = None
        if r["cpu_temp_c"] > cpu_max:
            reason = f"CPU temperature {r['cpu_temp_c']:.1f} C above {cpu_max:.0f} C"
        elif r["power_w"] > power_max:
            reason = f"power draw {r['power_w']:.0f} W above {power_max:.0f} W"
        elif len(h) >= 10:
            mean = statistics.fmean(x["power_w"] for x in h)
            sd = statistics.pstdev(x["power_w"] for x in h) or 1.0
            if (r["power_w"] - mean) / sd > power_z:
                reason = f"power draw {r['power_w']:.0f} W is {(r['power_w'] - mean) / sd:.1f} sd above its mean {mean:.0f} W"
        if reason is None:
            h.append(r)  # anomalous readings stay out of the baseline
        return reason

    def on_message(client, userdata, msg):
        try:
            r = json.loads(msg.payload)
        except ValueError:
            return
        if msg.topic.startswith("se/ack/"):
            with lock:
                a = by_id.get(r.get("anomaly_id", ""))
                if a is not None and "applied_at" not in a:
                    a["applied_at"] = r["applied_at"]
                    a["latency_s"] = round(r["applied_at"] - a["reading_ts"], 4)
                    latencies.append(a["latency_s"])
                    counts["actions_applied"] += 1
            return
        with lock:
            counts["readings"] += 1
            if r.get("mode") == "power_save":
                history.setdefault(r["device"], deque(maxlen=window))
                return
            reason = check(r)
            now = time.time()
            if reason is None or now - last_action.get(r["device"], 0.0) < cooldown:
                return
            last_action[r["device"]] = now
            a = {"id": uuid.uuid4().hex[:12], "device": r["device"], "reason": reason, "reading_ts": r["ts"],
                 "detected_at": now, "reading": r, "action": "power_save"}
            anomalies.append(a)
            by_id[a["id"]] = a
            counts["anomalies"] += 1
        client.publish(f"se/cmd/{r['device']}", json.dumps({"action": "power_save", "anomaly_id": a["id"]}), qos=0)
        log.info("anomaly on %s: %s -> power_save", r["device"], reason)
        if webhook:
            outbox.append({"id": a["id"], "device": a["device"], "reason": reason, "at": now, "action": "power_save"})
            wake.set()

    threading.Thread(target=notify_loop, daemon=True).start()
    mqtt_client("analyzer", on_message, subscribe=["se/readings/+", "se/ack/+"])

    def summary(h):
        with lock:
            lat = sorted(latencies)
            pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None)
            return {"counts": dict(counts), "latency_s": {"n": len(lat), "p50": pct(0.5), "p99": pct(0.99)},
                    "anomalies": list(anomalies)[-int(h.query().get("limit", "50")):]}

    serve(int(env("HTTP_PORT", "8000")), {("GET", "/anomalies"): summary})
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
