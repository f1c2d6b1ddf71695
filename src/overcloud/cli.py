"""The ``overcloud`` command: serve the Tower, and talk to it over HTTP.

Exit codes: 0 done, 1 failed (the Tower refused to or could not do it, or an OverCloud
ended FAILED), 2 bad usage (bad flags, or input the Tower rejected with 4xx).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from overcloud.config import DEFAULT_PORT, Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help="OverCloud: build, watch and delete OverClouds.")
db_app = typer.Typer(no_args_is_help=True, help="Repository schema.")
app.add_typer(db_app, name="db")
dl_app = typer.Typer(no_args_is_help=True, help="DataLakes: credentials, preserved archives.")
app.add_typer(dl_app, name="datalake")
store_app = typer.Typer(no_args_is_help=True, help="The Tower's Construction DataLake (it outlives the Tower).")
app.add_typer(store_app, name="store")
images_app = typer.Typer(no_args_is_help=True, help="Images built locally for service patterns (there is no registry).")
app.add_typer(images_app, name="images")
out = Console()
err = Console(stderr=True)


class Output(str, enum.Enum):
    table = "table"
    json = "json"
    dot = "dot"  # graphviz, for `topology`; other commands print tables


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


STATE = {"url": None, "token": None, "output": Output.table, "state_dir": None}
FINAL = {"READY", "FAILED", "DELETED", "DEGRADED"}


@app.callback()
def main_options(
    url: Annotated[Optional[str], typer.Option(envvar="OVERCLOUD_URL", help="the Tower's URL")] = None,
    token: Annotated[Optional[str], typer.Option(envvar="OVERCLOUD_TOKEN", help="bearer token (default: <state-dir>/admin.token)", show_default=False)] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="table for people, json for scripts")] = Output.table,
    state_dir: Annotated[Optional[Path], typer.Option(envvar="OVERCLOUD_STATE_DIR", help="the Tower's state dir")] = None,
) -> None:
    STATE.update(url=url, token=token, output=output, state_dir=state_dir)


def _settings(**overrides: Any) -> Settings:
    """The Tower's settings; a configuration that cannot be used (a sites file naming a missing
    key file, a bad value) is an error a person can act on, exit 2, never a traceback."""
    from pydantic import ValidationError

    if STATE["state_dir"] is not None:
        overrides.setdefault("state_dir", STATE["state_dir"])
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        reasons = "; ".join(str(e.get("msg", "")).removeprefix("Value error, ")
                            + (f" ({'.'.join(map(str, e['loc']))})" if e.get("loc") else "") for e in exc.errors())
        raise CliError(f"the Tower's configuration cannot be used: {reasons}", 2) from None


class Client:
    def __init__(self) -> None:
        self.url = (STATE["url"] or f"http://127.0.0.1:{DEFAULT_PORT}").rstrip("/")
        token = STATE["token"]
        if not token:
            path = _settings().token_path
            try:
                token = path.read_text().strip()
            except OSError:
                raise CliError(f"no token: pass --token, set OVERCLOUD_TOKEN, or run where {path} is readable", 2) from None
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the Tower at {self.url} ({exc.__class__.__name__}); is `overcloud serve` running?") from None
        if r.status_code >= 400:
            try:
                msg = r.json().get("message") or r.text
            except ValueError:
                msg = r.text
            raise CliError(f"{r.status_code}: {msg}", 2 if r.status_code < 500 else 1)
        return r.json() if r.content else None


def _emit(data: Any, table: Table | None = None) -> None:
    if STATE["output"] == Output.json or table is None:
        out.print_json(json.dumps(data))
    else:
        out.print(table)


def _task_table(wf: dict[str, Any], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("task", "state", "took", "message / error"):
        t.add_column(col)
    colors = {"SUCCESS": "green", "RUNNING": "yellow", "FAILURE": "red", "REVERTED": "magenta", "REVERTING": "magenta"}
    tasks = wf["workflows"].get(wf["current"], [])
    for task in tasks:
        took = f"{task['duration_s']:.2f}s" if task["duration_s"] is not None else ""
        c = colors.get(task["state"], "white")
        t.add_row(task["task"], f"[{c}]{task['state']}[/]", took, task["error"] or task["message"] or "")
    return t


def _watch(client: Client, overcloud_id: str, until: set[str], timeout: float = 600) -> dict[str, Any]:
    """Show the workflow's tasks live until the OverCloud reaches one of ``until``."""
    deadline = time.monotonic() + timeout
    live_view = STATE["output"] == Output.table and out.is_terminal
    detail = client.call("GET", f"/overclouds/{overcloud_id}")
    with Live(console=out, refresh_per_second=8, transient=False) if live_view else _Null() as live:
        while True:
            wf = detail["workflow"]
            if live_view:
                live.update(_task_table(wf, f"OverCloud {overcloud_id} — {detail['status']}"))
            if detail["status"] in until or time.monotonic() > deadline:
                break
            time.sleep(0.2)
            detail = client.call("GET", f"/overclouds/{overcloud_id}")
    if STATE["output"] == Output.table and not live_view:
        out.print(_task_table(detail["workflow"], f"OverCloud {overcloud_id} — {detail['status']}"))
    return detail


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, *_):
        pass


@app.command()
def create(
    clusters: Annotated[int, typer.Option("--clusters", "-n", min=1, help="logical clusters")] = 3,
    size: Annotated[str, typer.Option(help="small, medium, large or m1.*")] = "m1.small",
    site: Annotated[Optional[list[str]], typer.Option("--site", help="site(s) to spread clusters over; repeat")] = None,
    name: Annotated[str, typer.Option(help="a name for people")] = "overcloud",
    restore_from: Annotated[Optional[str], typer.Option("--restore-from", help="start the DataLake with a preserved one (an old OverCloud id)")] = None,
    datalake: Annotated[bool, typer.Option("--datalake/--no-datalake", help="give the OverCloud a DataLake")] = True,
    preserve: Annotated[bool, typer.Option("--preserve/--no-preserve", help="keep the DataLake's data when deleted")] = True,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="watch the workflow until READY or FAILED")] = False,
) -> None:
    """Create an OverCloud: a DevOps Post and CLUSTERS logical clusters."""
    from overcloud.plan import spread

    client = Client()
    sites = site or ["local"]
    counts = spread(clusters, sites)
    body = {"name": name, "sites": [{"undercloud": s, "clusters": n, "size": size} for s, n in zip(sites, counts) if n],
            "datalake": {"enabled": datalake, "preserve": preserve, "restore_from": restore_from}}
    detail = client.call("POST", "/overclouds", json=body)
    oid = detail["overcloud_ID"]
    if not wait:
        _emit(detail) if STATE["output"] == Output.json else out.print(f"{oid} {detail['status']}")
        return
    if STATE["output"] == Output.table:
        err.print(f"creating OverCloud {oid} ...")
    detail = _watch(client, oid, {"READY", "FAILED"})
    _finish(detail, "READY")


def _finish(detail: dict[str, Any], wanted: str) -> None:
    if STATE["output"] == Output.json:
        _emit(detail)
    elif detail["status"] == wanted:
        secs = detail.get("create_seconds")
        extra = f" in {secs:.2f} s" if secs and wanted == "READY" else ""
        out.print(f"[green]{detail['overcloud_ID']} {detail['status']}{extra}[/]")
    if detail["status"] != wanted:
        e = detail.get("error") or {}
        raise CliError(f"OverCloud {detail['overcloud_ID']} is {detail['status']}: task {e.get('task')}: {e.get('cause')}")


@app.command("list")
def list_cmd(all_: Annotated[bool, typer.Option("--all", help="include DELETED")] = False) -> None:
    """List OverClouds."""
    rows = Client().call("GET", "/overclouds", params={"include_deleted": all_})
    t = Table("overcloud_ID", "name", "status", "created_at")
    for r in rows:
        t.add_row(r["overcloud_ID"], r["name"], r["status"], r["created_at"])
    _emit(rows, t)


@app.command("underclouds")
def underclouds_cmd(json_: Annotated[bool, typer.Option("--json", help="print the Tower's JSON answer")] = False) -> None:
    """List the UnderClouds: each site's hosts (ssh) or bridge (local), capacity, health."""
    data = Client().call("GET", "/underclouds")
    if json_:
        STATE["output"] = Output.json
    t = Table("site", "kind", "host", "address", "lent", "used", "free", "WireGuard peers", "health",
              title="UnderClouds", title_justify="left")

    def res(d: dict[str, Any] | None) -> str:
        return "?" if not d else f"{d['cpus']:g} CPU {d['memory_mb']} MiB" + (f" {d['boxes']} boxes" if "boxes" in d else "")

    def health(ok: bool, problems: list[str]) -> Text:
        return Text("ok", style="green") if ok else Text("; ".join(problems) or "not healthy", style="red")

    for u in data["underclouds"]:
        if u["kind"] == "ssh":
            for h in u.get("hosts", []):
                hh = h["health"]
                wan = hh.get("wan") or {}
                peers = ", ".join(f"{p['host']} " + ("never" if p["latest_handshake_age_s"] is None
                                                     else f"{p['latest_handshake_age_s']}s")
                                  for p in wan.get("peers", []))
                if wan and not wan.get("interface_up"):
                    peers = "interface down"
                age = f" ({hh['checked_age_s']:g}s ago)" if hh.get("checked_age_s") is not None else ""
                t.add_row(u["name"], "ssh", h["name"], f"{h['address']}:{h['port']}", res(h["lent"]), res(h["used"]),
                          res(h["free"]), peers, health(hh["healthy"], hh["problems"]) + Text(age, style="dim"))
        elif u["kind"] == "local":
            b, cap = u.get("bridge") or {}, u.get("capacity") or {}
            lent = {"cpus": cap.get("cpus", 0), "memory_mb": cap.get("memory_mb", 0)} if cap else None
            t.add_row(u["name"], "local", f"bridge {b.get('name', '?')}", f"{b.get('gateway', '?')} ({b.get('cidr', '?')})",
                      res(lent), res(u.get("used")), "", "", health(u["healthy"], u["problems"]))
        else:
            t.add_row(u["name"], u["kind"], "", "", "", "", "", "", health(u.get("healthy", False), u.get("problems", [])))
    _emit(data, t)


@app.command()
def show(overcloud_id: str) -> None:
    """Show one OverCloud: Post, clusters, addresses, status."""
    d = Client().call("GET", f"/overclouds/{overcloud_id}")
    t = Table(title=f"{d['overcloud_ID']} {d['name']} — {d['status']}", title_justify="left")
    for col in ("box", "role", "site", "address", "overlay", "flavor", "state"):
        t.add_column(col)
    for b in ([d["post"]] if d["post"] else []) + d["clusters"]:
        f = b["flavor"]
        t.add_row(b["name"], b["role"], b["site"], b["address"], b["overlay_address"] or "", f"{f['name']} ({f['cpus']:g} CPU, {f['memory_mb']} MiB)", b["state"])
    _emit(d, t)
    if STATE["output"] == Output.table:  # what is published on site addresses: reachable from where the user is
        s3 = ((d.get("datalake") or {}).get("published") or {}).get("s3")
        for name, url in ([("datalake S3", s3)] if s3 else []) + [(s["name"], u) for s in d.get("services") or []
                                                                   for u in s.get("urls") or []]:
            out.print(f"published  {name:<14} {url}", highlight=False, soft_wrap=True)
    if STATE["output"] == Output.table and d.get("error"):
        out.print(f"[red]failed in {d['error']['task']}: {d['error']['cause']}[/]")


@app.command()
def workflow(overcloud_id: str) -> None:
    """Show every task of the OverCloud's current workflow."""
    wf = Client().call("GET", f"/overclouds/{overcloud_id}/workflow")
    _emit(wf, _task_table(wf, f"{wf['current']} — {wf['status']}"))


@app.command()
def delete(
    overcloud_id: str,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="watch until DELETED")] = False,
    force: Annotated[bool, typer.Option("--force", help="delete without preserving the DataLake (when its Post is gone)")] = False,
) -> None:
    """Delete an OverCloud and everything it has."""
    client = Client()
    res = client.call("DELETE", f"/overclouds/{overcloud_id}" + ("?preserve=false" if force else ""))
    if res.get("not_kept") and STATE["output"] != Output.json:
        err.print(f"not kept: {res['not_kept']}", highlight=False, soft_wrap=True)
    if not wait:
        _emit(res) if STATE["output"] == Output.json else out.print(f"{overcloud_id} {res['status']}")
        return
    detail = _watch(client, overcloud_id, {"DELETED", "FAILED"})
    _finish(detail, "DELETED")


@app.command()
def sweep(yes: Annotated[bool, typer.Option("--yes", help="remove what is listed")] = False) -> None:
    """List (and with --yes remove) resources tagged with an OverCloud id that is not live."""
    from overcloud.tower import Tower

    tower = Tower(_settings())
    tower.repo.upgrade()
    tower._make_drivers()
    found = tower.sweep() if yes else tower.orphans()
    rows = [{"overcloud_id": r.overcloud_id, "kind": r.kind, "name": r.name} for r in found]
    t = Table("overcloud_id", "kind", "name", title="removed" if yes else "left behind (remove with --yes)")
    for r in rows:
        t.add_row(r["overcloud_id"], r["kind"], r["name"])
    if rows or STATE["output"] == Output.json:
        _emit(rows, t)
    else:
        out.print("nothing left behind")
    tower.close()


@app.command()
def topology(overcloud_id: str) -> None:
    """The OverCloud as a graph: sites, boxes, what runs on them, and who talks to whom."""
    topo = Client().call("GET", f"/overclouds/{overcloud_id}/topology")
    if STATE["output"] == Output.json:
        return _emit(topo)
    if STATE["output"] == Output.dot:
        out.print(_dot(topo), highlight=False, markup=False)
        return
    out.print(f"OverCloud {overcloud_id} — {topo['status']}", highlight=False)
    for site in topo["sites"]:
        out.print(f"  site {site['site']}", highlight=False)
        for b in site["boxes"]:
            bad = topo["degraded"].get(b["name"])
            extra = f"  [red]DEGRADED: {bad}[/]" if bad else ""
            own = [p for p in b["processes"] if not p.startswith("w-")]  # workloads are listed below
            out.print(f"    {b['name']:<4} {b['role']:<8} {b['overlay_address'] or '':<15} "
                      f"{', '.join(own) or '-'}{extra}", highlight=False)
            if b.get("workloads"):
                out.print("         workloads: " + ", ".join(f"{w['replica']} ({w['state']})" for w in b["workloads"]),
                          highlight=False)
    out.print("  flows (bytes/s, connections):", highlight=False)
    for f in topo["flows"] or []:
        served = ", ".join(f"{_server_name(p)}:{p['port']}" for p in f.get("ports", []) if _server_name(p))
        out.print(f"    {f['src']} -> {f['dst']}: {f['bytes_per_s']:.0f} B/s, {f['connections']} conn"
                  + (f"  ({served})" if served else ""), highlight=False, markup=False)
    if not topo["flows"]:
        out.print("    none yet", highlight=False)


def _server_name(port: dict[str, Any]) -> str | None:
    """What serves one port of a flow: a replica, a Service (its VIP), or an OverCloud program."""
    return port.get("replica") or port.get("service") or port.get("program")


def _dot(topo: dict[str, Any]) -> str:
    lines = ["digraph overcloud {", "  rankdir=LR;"]
    for site in topo["sites"]:
        name = site["site"].replace("-", "_")
        lines.append(f'  subgraph cluster_{name} {{ label="{site["site"]}";')
        for b in site["boxes"]:
            runs = "".join(f"\\n{w['replica']}" for w in b.get("workloads", []))
            lines.append(f'    "{b["name"]}" [label="{b["name"]}\\n{b["role"]}\\n{b["overlay_address"]}{runs}"];')
        lines.append("  }")
    for f in topo["flows"]:
        lines.append(f'  "{f["src"]}" -> "{f["dst"]}" [label="{f["bytes_per_s"]:.0f} B/s"];')
    lines.append("}")
    return "\n".join(lines)


TOP_QUERIES = {
    "cpu": 'sum by (box) (rate(overcloud_box_cpu_seconds_total[5s]))',
    "memory": 'max by (box) (overcloud_box_memory_bytes)',
    "rx": 'sum by (box) (rate(node_network_receive_bytes_total{device!="lo"}[5s]))',
    "tx": 'sum by (box) (rate(node_network_transmit_bytes_total{device!="lo"}[5s]))',
}


@app.command()
def top(
    overcloud_id: str,
    interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 2.0,
    count: Annotated[int, typer.Option(help="refreshes before exiting (0: until Ctrl-C)")] = 0,
) -> None:
    """A live table of the OverCloud's boxes (CPU, memory, network) and its busiest flows."""
    client = Client()

    def frame() -> Table:
        values: dict[str, dict[str, float]] = {}
        for key, q in TOP_QUERIES.items():
            res = client.call("GET", f"/overclouds/{overcloud_id}/metrics", params={"query": q})
            for r in res.get("result", []):
                values.setdefault(r["metric"].get("box", "?"), {})[key] = float(r["value"][1])
        topo = client.call("GET", f"/overclouds/{overcloud_id}/topology")
        t = Table(title=f"OverCloud {overcloud_id} — {topo['status']}", title_justify="left")
        for col in ("box", "site", "CPU (cores)", "memory", "rx", "tx"):
            t.add_column(col)
        for site in topo["sites"]:
            for b in site["boxes"]:
                v = values.get(b["name"], {})
                t.add_row(b["name"], site["site"], f"{v.get('cpu', 0):.3f}", _bytes(v.get("memory", 0)),
                          _bytes(v.get("rx", 0)) + "/s", _bytes(v.get("tx", 0)) + "/s")
        for f in topo["flows"][:5]:
            served = ", ".join(n for p in f.get("ports", [])[:2] if (n := _server_name(p)))
            t.add_row(f"{f['src']}→{f['dst']}", "flow", served, "", _bytes(f["bytes_per_s"]) + "/s", f"{f['connections']} conn")
        return t

    if STATE["output"] == Output.json or count == 1:
        return _emit(client.call("GET", f"/overclouds/{overcloud_id}/topology"), frame())
    n = 0
    with Live(console=out, refresh_per_second=4) as live:
        while count == 0 or n < count:
            live.update(frame())
            n += 1
            time.sleep(interval)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dl_app.command("credentials")
def datalake_credentials(overcloud_id: str) -> None:
    """Print the OverCloud's S3 keys and endpoints (treat the output as a secret)."""
    c = Client().call("GET", f"/overclouds/{overcloud_id}/datalake/credentials")
    t = Table("key", "value", title=f"DataLake of {overcloud_id}")
    for k, v in c.items():
        t.add_row(k, ", ".join(v) if isinstance(v, list) else str(v))
    _emit(c, t)


@dl_app.command("archives")
def datalake_archives() -> None:
    """List preserved DataLakes (archives of deleted OverClouds)."""
    rows = Client().call("GET", "/datalake/archives")
    t = Table("archive (old OverCloud id)", "complete", "created_at", "objects", "files", "bytes")
    for a in rows:
        counts, size = a.get("counts") or {}, a.get("bytes") or {}
        t.add_row(a["archive_id"], "yes" if a.get("complete") else "no (interrupted)", str(a.get("created_at") or ""),
                  str(counts.get("objects", "")), str(counts.get("files", "")), str(size.get("total", "")))
    _emit(rows, t)


@dl_app.command("purge")
def datalake_purge(archive_id: str) -> None:
    """Delete a preserved DataLake for good."""
    Client().call("DELETE", f"/datalake/archives/{archive_id}")
    _emit({"purged": archive_id}) if STATE["output"] == Output.json else out.print(f"archive {archive_id} purged")


# -- service composition --------------------------------------------------------------
def _pattern_bytes(path: Path) -> tuple[bytes, str]:
    """A pattern directory or file as a request body: the directory's top-level manifests
    (like ``kubectl apply -f DIR``) joined as one multi-document YAML."""
    if not path.exists():
        raise CliError(f"{path} does not exist", 2)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise CliError(f"{path} has no *.yaml or *.yml manifests", 2)
        return b"\n---\n".join(p.read_bytes() for p in files), "application/yaml"
    data = path.read_bytes()
    return data, "application/gzip" if data[:2] == b"\x1f\x8b" else "application/yaml"


def _replica_table(services: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("service", "replica", "box", "site", "state", "restarts", "endpoints", "message"):
        t.add_column(col)
    colors = {"READY": "green", "STARTING": "yellow", "UPDATING": "yellow", "PENDING": "white", "BACKOFF": "red",
              "UNPLACED": "red"}
    for s in services:
        eps = ", ".join(e for svc in s.get("services", []) for e in svc["endpoints"])
        for r in s.get("replicas", []):
            c = colors.get(r["state"], "magenta")
            t.add_row(s["name"], r["name"], r["box"], r["site"], f"[{c}]{r['state']}[/]", str(r["restarts"]), eps,
                      escape(r.get("message") or ""))
            eps = ""
    return t


PatternPath = Annotated[Path, typer.Argument(help="a pattern directory, a multi-document YAML, or a tar.gz")]
RuntimeOpt = Annotated[str, typer.Option(help="auto (podman where installed), podman or process")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="show replicas live until all are READY")]
TimeoutOpt = Annotated[float, typer.Option(help="seconds to wait for READY")]


@app.command()
def compose(
    overcloud_id: str,
    path: PatternPath,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the placement and start order; start nothing")] = False,
    runtime: RuntimeOpt = "auto",
    wait: WaitOpt = True,
    timeout: TimeoutOpt = 120,
) -> None:
    """Compose a service pattern onto a READY OverCloud (placement, stitching, start in order)."""
    _send_pattern("POST", overcloud_id, path, dry_run, runtime, wait, timeout)


@app.command()
def apply(
    overcloud_id: str,
    path: PatternPath,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what each Deployment would do; change nothing")] = False,
    runtime: RuntimeOpt = "auto",
    wait: WaitOpt = True,
    timeout: TimeoutOpt = 120,
) -> None:
    """Apply a changed pattern to a composed one (like kubectl apply): new Deployments are
    created, changed pod templates rolled out one replica at a time, counts scaled."""
    _send_pattern("PUT", overcloud_id, path, dry_run, runtime, wait, timeout)


def _send_pattern(method: str, overcloud_id: str, path: Path, dry_run: bool, runtime: str, wait: bool,
                  timeout: float) -> None:
    body, ctype = _pattern_bytes(path)
    client = Client()
    t0 = time.monotonic()
    result = client.call(method, f"/overclouds/{overcloud_id}/services",
                         params={"dry_run": str(dry_run).lower(), "runtime": runtime}, content=body,
                         headers={"Content-Type": ctype})
    actions = result.get("actions")
    if dry_run:
        t = Table("replica", "box", "site", "overlay address", title=f"placement ({result['runtime']} runtime)",
                  title_justify="left")
        for a in result["placement"]:
            t.add_row(a["replica"], a["box"], a["site"], a["address"] or "")
        if STATE["output"] == Output.table:
            if actions is not None:
                out.print(_actions_table(actions))
            if result["placement"]:
                out.print(t)
            if result["start_order"]:
                out.print("start order: " + "  →  ".join(", ".join(w) for w in result["start_order"]))
        else:
            _emit(result)
        return
    names = ([n for n, a in actions.items() if a["action"] != "unchanged"] if actions is not None
             else [d for wave in result["start_order"] for d in wave])
    deadline = time.monotonic() + timeout
    live_view = STATE["output"] == Output.table and out.is_terminal and wait
    services: list[dict[str, Any]] = []
    verb = "applying to" if actions is not None else "composing onto"
    with Live(console=out, refresh_per_second=8) if live_view else _Null() as live:
        while True:
            services = [s for s in client.call("GET", f"/overclouds/{overcloud_id}/services") if s["name"] in names]
            if live_view:
                live.update(_replica_table(services, f"{verb} {overcloud_id}"))
            if not wait or all(s["status"] == "READY" for s in services) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    if STATE["output"] == Output.json:
        _emit({**result, "services": services})
        return
    if actions is not None:
        out.print(_actions_table(actions))
    if not live_view and services:
        out.print(_replica_table(services, f"{verb} {overcloud_id}"))
    if wait:
        took = (max((s.get("ready_seconds") or 0) for s in services) if services else 0) if actions is None \
            else time.monotonic() - t0
        ready = all(s["status"] == "READY" for s in services)
        out.print(f"all {sum(len(s['replicas']) for s in services)} replicas READY in {took:.1f} s" if ready
                  else "[red]not every replica is READY yet[/]; `overcloud services ID` shows them")
        if not ready:
            raise typer.Exit(1)


def _actions_table(actions: dict[str, dict[str, Any]]) -> Table:
    t = Table("deployment", "action", "detail", title="apply", title_justify="left")
    for name, a in sorted(actions.items()):
        detail = {k: v for k, v in a.items() if k != "action"}
        if a["action"] == "update":
            text = f"generation {detail['generation']}: {', '.join(detail['changed'])}"
        elif a["action"] == "scale":
            text = f"{detail['from']} → {detail['to']} replicas"
        elif a["action"] == "services":
            text = ", ".join(detail["changed"])
        elif a["action"] == "create":
            text = f"{detail['replicas']} replicas"
        else:
            text = ""
        t.add_row(name, a["action"], escape(text))  # field paths carry [container] names: not markup
    return t


@app.command()
def services(overcloud_id: str) -> None:
    """The services composed onto an OverCloud, replica by replica."""
    rows = Client().call("GET", f"/overclouds/{overcloud_id}/services")
    _emit(rows, _replica_table(rows, f"services of {overcloud_id}"))


@app.command()
def scale(overcloud_id: str, service: str, replicas: Annotated[int, typer.Argument(min=0, max=100)]) -> None:
    """Set a service's replica count (new replicas are placed by the same rules)."""
    result = Client().call("PATCH", f"/overclouds/{overcloud_id}/services/{service}", json={"replicas": replicas})
    if STATE["output"] == Output.json:
        _emit(result)
    else:
        what = result.get("added") or result.get("removed") or []
        out.print(f"{service}: {replicas} replicas ({'added' if 'added' in result else 'removed'} {', '.join(what) or 'none'})")


@app.command()
def logs(
    overcloud_id: str,
    service: str,
    lines: Annotated[int, typer.Option("--lines", "-n", help="lines per replica")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines (Ctrl-C stops)")] = False,
) -> None:
    """Recent log lines of every replica of a service."""
    client = Client()
    seen: dict[str, list[str]] = {}
    while True:
        detail = client.call("GET", f"/overclouds/{overcloud_id}/services/{service}", params={"logs": lines})
        for r in detail["replicas"]:
            got = r.get("logs") or []
            old = seen.get(r["name"], [])
            new = got
            if old:  # print what follows the last line printed before
                last = old[-1]
                new = got[len(got) - got[::-1].index(last):] if last in got else got
            for line in new:  # log lines are text, never markup: "[collector] ..." must print as is
                out.print(Text.assemble((r["name"], "cyan"), " ", line), highlight=False, soft_wrap=True)
            seen[r["name"]] = got
        if not follow:
            return
        time.sleep(1.0)


@images_app.command("build")
def images_build(
    path: Annotated[Path, typer.Argument(help="a pattern directory with images/<name>/{packages,src/}")],
    runtime: Annotated[str, typer.Option(help="auto (podman where installed), podman or process")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="rebuild even when up to date")] = False,
) -> None:
    """Build a pattern's images on this host (mmdebstrap + podman import, or a process image)."""
    from overcloud.composition import images as img
    from overcloud.composition import runtime as rt

    try:
        chosen = rt.choose(runtime if runtime != "auto" else _settings().runtime)
        results = img.Images(_settings().state_dir).build_pattern(
            path, chosen, progress=lambda m: err.print(f"[dim]{m}[/]"), force=force)
    except (img.ImageError, RuntimeError) as exc:
        raise CliError(str(exc), 2) from None
    t = Table("image", "runtime", "hash", "built now")
    for r in results:
        t.add_row(r["image"], r["runtime"], r["hash"], "yes" if r["built"] else "no (up to date)")
    _emit(results, t)


@images_app.command("list")
def images_list() -> None:
    """Images this host has built, and for which runtimes."""
    from overcloud.composition import images as img

    rows = img.Images(_settings().state_dir).list()
    t = Table("image", "hash", "runtimes", "built_at")
    for r in rows:
        t.add_row(r["image"], r["hash"], ", ".join(sorted(r.get("runtimes", {}))), r.get("built_at", ""))
    _emit(rows, t)


@app.command()
def demo(
    overcloud_id: Annotated[Optional[str], typer.Argument(help="a READY OverCloud (default: the newest READY one named demo)")] = None,
    pattern_dir: Annotated[Path, typer.Option("--pattern", help="the pattern to compose")] = Path("patterns/smart_energy"),
) -> None:
    """Compose the smart-energy pattern onto the demo OverCloud and print the dashboard's URL."""
    client = Client()
    if overcloud_id is None:
        ready = [o for o in client.call("GET", "/overclouds") if o["status"] == "READY" and o["name"] == "demo"]
        if not ready:
            raise CliError("no READY OverCloud named demo; `make demo` creates one", 2)
        overcloud_id = ready[-1]["overcloud_ID"]
    images_build(pattern_dir, runtime="auto", force=False)
    existing = {s["name"] for s in client.call("GET", f"/overclouds/{overcloud_id}/services")}
    if "dashboard" not in existing:
        compose(overcloud_id, pattern_dir, dry_run=False, runtime="auto", wait=True, timeout=120)
    dash = client.call("GET", f"/overclouds/{overcloud_id}/services/dashboard", params={"logs": 0})
    urls = [u + "/" for s in dash["services"] for u in s.get("urls", [])]
    url = "   ".join(urls) or "(not published: no ready replica yet, or not a NodePort Service)"
    detail = client.call("GET", f"/overclouds/{overcloud_id}")
    s3 = ((detail.get("datalake") or {}).get("published") or {}).get("s3")
    edge = next((r for s in client.call("GET", f"/overclouds/{overcloud_id}/services") if s["name"] == "broker"
                 for r in s["replicas"]), None)
    handle = f"oc-{overcloud_id[:8]}-{edge['box']}" if edge else "oc-<id>-<box>"
    out.print(f"""
[bold]smart-energy is running on {overcloud_id}[/]
  dashboard      {url}   (NodePort: its box's site address, or its host's on an ssh site)
  datalake S3    {s3 or "(no DataLake)"}   (the Post's site address, or its host's on an ssh site; authenticated S3 only: `overcloud datalake credentials {overcloud_id}`)
  services       .venv/bin/overcloud services {overcloud_id}
  logs           .venv/bin/overcloud logs {overcloud_id} analyzer -f
  inject a fault ip netns exec {handle} mosquitto_pub -h mqtt -t se/fault/all -m '{{"kind":"overheat"}}'
                 (then watch the dashboard: anomaly, power_save applied, notification)
""", highlight=False, soft_wrap=True)


@store_app.command("stop")
def store_stop() -> None:
    """Stop this state dir's Construction DataLake (its data stays; `overcloud serve` starts it again)."""
    from overcloud.components.construction import ConstructionDataLake

    settings = _settings()
    cdl = ConstructionDataLake(settings.state_dir)
    pids = cdl.pids()
    cdl.stop()  # also when nothing runs: a store killed some other way leaves its firewall table
    if not pids:
        out.print(f"no Construction DataLake runs for {settings.state_dir}")
        return
    out.print(f"Construction DataLake of {settings.state_dir} stopped ({len(pids)} processes); "
              f"its data stays in {settings.state_dir / 'construction'}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the repository schema to the newest version."""
    from overcloud.repository import Repository

    settings = _settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    repo = Repository(settings.db_url)
    repo.upgrade()
    repo.close()
    out.print("repository schema is up to date")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = DEFAULT_PORT,
    state_dir: Annotated[Optional[Path], typer.Option("--state-dir", envvar="OVERCLOUD_STATE_DIR", help="where the Tower keeps its data")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Run the Tower: API, workflow engine, repository and UnderCloud drivers."""
    # everything the Tower writes (databases, keys, box state, logs) is root's alone; files that
    # boxes must read (their /etc/hosts) are opened up one by one
    os.umask(0o077)
    if state_dir is not None:
        STATE["state_dir"] = state_dir
    from overcloud.api import server
    from overcloud.api.app import create_app
    from overcloud.tower import Tower

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "botocore", "boto3", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    settings = _settings(host=host, port=port)
    tower = Tower(settings)
    tower.start()
    api = create_app(tower)
    logging.getLogger(__name__).info("Tower on http://%s:%s, state in %s", host, port, settings.state_dir)
    try:
        server.run(api, settings, host=host, port=port, log_level=log_level.lower())
    finally:
        tower.close()


def main() -> None:
    from overcloud.underclouds.base import UnderCloudError

    try:
        app()  # usage errors: typer prints them and exits 2
    except CliError as exc:
        err.print(f"error: {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.code)
    except UnderCloudError as exc:
        err.print(f"error: {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
