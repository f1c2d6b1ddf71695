"""The web dashboard: live readings (from MQTT), anomalies and actions (from the analyzer),
notifications (from the notifier). HTML at /, the same as JSON at /api/state."""

from __future__ import annotations

import html
import json
import threading
import time

from smart_energy.common import env, get_json, mqtt_client, serve, setup_logging


def main() -> None:
    setup_logging("dashboard")
    analyzer, notifier = env("ANALYZER_URL"), env("NOTIFIER_URL")
    readings: dict[str, dict] = {}
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        try:
            r = json.loads(msg.payload)
        except ValueError:
            return
        with lock:
            readings[r["device"]] = r

    mqtt_client("dashboard", on_message, subscribe=["se/readings/+"])

    def state(h=None):
        try:
            a = get_json(analyzer + "/anomalies?limit=20")
        except OSError as exc:
            a = {"error": str(exc)}
        try:
            n = get_json(notifier + "/notifications")[-20:]
        except OSError as exc:
            n = [{"error": str(exc)}]
        with lock:
            return {"readings": dict(sorted(readings.items())), "analyzer": a, "notifications": n, "at": time.time()}

    def page(h):
        s = state()
        esc = html.escape
        rows = "".join(
            f"<tr><td>{esc(d)}</td><td>{r['room_temp_c']}</td><td>{r['humidity_pct']}</td><td>{r['power_w']}</td>"
            f"<td{' style=color:red' if r['cpu_temp_c'] > 80 else ''}>{r['cpu_temp_c']}</td><td>{esc(r['mode'])}</td>"
            f"<td>{esc(str(r.get('fault') or ''))}</td></tr>" for d, r in s["readings"].items())
        anomalies = "".join(
            f"<li>{esc(a['device'])}: {esc(a['reason'])} &rarr; {esc(a['action'])}"
            f"{' applied in %.0f ms' % (a['latency_s'] * 1000) if 'latency_s' in a else ''}</li>"
            for a in reversed(s["analyzer"].get("anomalies", [])))
        notes = "".join(f"<li>{esc(str(n.get('device')))}: {esc(str(n.get('reason')))}</li>" for n in reversed(s["notifications"]))
        h.send(200, f"""<html><head><title>Smart energy</title><meta http-equiv="refresh" content="2"></head>
<body style="font-family:sans-serif"><h1>Smart energy &mdash; {len(s['readings'])} devices</h1>
<table border=1 cellpadding=4><tr><th>device</th><th>room &deg;C</th><th>humidity %</th><th>power W</th>
<th>CPU &deg;C</th><th>mode</th><th>fault</th></tr>{rows}</table>
<h2>Anomalies and actions</h2><ul>{anomalies}</ul><h2>Notifications</h2><ul>{notes}</ul></body></html>""", "text/html")

    serve(int(env("HTTP_PORT", "8080")), {("GET", "/"): page, ("GET", "/api/state"): state})
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
