"""Simulated Raspberry Pis in a server room: room temperature, humidity, power draw and the
server's CPU temperature, with a daily pattern, noise, and injectable faults.

Each device publishes ``se/readings/<device>`` every INTERVAL seconds, obeys commands on
``se/cmd/<device>`` (``power_save`` lowers its power draw and lets the CPU cool; ``normal``
returns) and acknowledges them on ``se/ack/<device>``. Faults are injected over MQTT:
``se/fault/<device>`` (or ``se/fault/all``) with ``{"kind": "overheat" | "power_spike" | "clear"}``.
It listens on no port, so any number of simulators share a box.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time

from smart_energy.common import env, env_float, log, mqtt_client, setup_logging


class Device:
    def __init__(self, device_id: str, seed: int):
        self.id = device_id
        self.rng = random.Random(seed)
        self.phase = self.rng.uniform(0, 2 * math.pi)
        self.fault: str | None = None
        self.fault_since = 0.0
        self.mode = "normal"
        self.commands: list[dict] = []
        self.seq = 0
        self.last: dict = {}
        self.lock = threading.Lock()

    def reading(self, now: float, day: float) -> dict:
        with self.lock:
            self.seq += 1
            daily = math.sin(2 * math.pi * (now % day) / day + self.phase)  # -1 .. 1 over a (short) day
            room = 22.0 + 3.0 * daily + self.rng.gauss(0, 0.2)
            humidity = 45.0 - 8.0 * daily + self.rng.gauss(0, 0.8)
            load = 0.5 + 0.3 * daily + self.rng.gauss(0, 0.03)
            power = 300.0 + 250.0 * load + self.rng.gauss(0, 5)
            cpu = room + 20.0 + 25.0 * load + self.rng.gauss(0, 0.5)
            if self.fault == "overheat":
                cpu += min(40.0, 15.0 + 10.0 * (now - self.fault_since))
            elif self.fault == "power_spike":
                power *= 3.0
            if self.mode == "power_save":
                power *= 0.4
                cpu -= 25.0
            self.last = {"device": self.id, "ts": now, "seq": self.seq, "room_temp_c": round(room, 2),
                         "humidity_pct": round(humidity, 1), "power_w": round(power, 1), "cpu_temp_c": round(cpu, 2),
                         "mode": self.mode, "fault": self.fault}
            return self.last

    def inject(self, kind: str) -> None:
        with self.lock:
            if kind == "clear":
                self.fault, self.mode = None, "normal"
            elif kind in ("overheat", "power_spike"):
                self.fault, self.fault_since = kind, time.time()
            else:
                raise ValueError(f"unknown fault {kind!r} (overheat, power_spike, clear)")

    def command(self, cmd: dict) -> dict:
        with self.lock:
            action = cmd.get("action")
            if action == "power_save":
                self.mode = "power_save"
            elif action == "normal":
                self.mode = "normal"
            else:
                raise ValueError(f"unknown action {action!r}")
            done = {**cmd, "device": self.id, "applied_at": time.time()}
            self.commands = (self.commands + [done])[-50:]
            return done


def main() -> None:
    setup_logging("sensor")
    replica = env("OVERCLOUD_REPLICA", "sensor-0")
    count = int(env("DEVICES_PER_REPLICA", "1"))
    interval = env_float("INTERVAL", 1.0)
    day = env_float("DAY_SECONDS", 600.0)
    devices = {f"{replica}-pi{k}": Device(f"{replica}-pi{k}", hash((replica, k)) & 0xFFFF) for k in range(count)}

    def on_message(client, userdata, msg):
        parts = msg.topic.split("/")
        try:
            payload = json.loads(msg.payload or b"{}")
            targets = list(devices.values()) if parts[-1] == "all" else [devices[parts[-1]]] if parts[-1] in devices else []
            for d in targets:
                if parts[1] == "cmd":
                    done = d.command(payload)
                    client.publish(f"se/ack/{d.id}", json.dumps(done), qos=0)
                    log.info("%s: %s applied", d.id, payload.get("action"))
                elif parts[1] == "fault":
                    d.inject(payload.get("kind", ""))
        except (ValueError, KeyError) as exc:
            log.warning("ignored %s: %s", msg.topic, exc)

    client = mqtt_client(f"sensor-{replica}", on_message,
                         subscribe=["se/cmd/+", "se/fault/+"])

    log.info("%d devices publishing every %.2fs", len(devices), interval)
    start = time.time()
    ticks = 0
    while True:
        now = time.time()
        for d in devices.values():
            client.publish(f"se/readings/{d.id}", json.dumps(d.reading(now, day)), qos=0)
        ticks += 1
        time.sleep(max(0.0, start + ticks * interval - time.time()))


if __name__ == "__main__":
    main()
