"""Inputs that once made a small request cost the Tower much (issue 10, point 7), with the
answer each must get now: a 4xx naming the cap. Shared by test_amplification.py and
bench/amplification.py (which prints how long each refusal takes)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import tarfile

YAML = "application/yaml"
GZIP = "application/gzip"
JSON = "application/json"

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: amp}}
spec:
  selector: {{matchLabels: {{app: amp}}}}
  template:
    metadata: {{labels: {{app: amp}}}}
    spec:
      containers:
        - name: amp
          image: localhost/overcloud/amp:latest
          command: [sleep, "3600"]
          resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}
{extra}"""


@dataclasses.dataclass
class Input:
    name: str
    method: str
    path: str  # {oc}: the OverCloud's id
    body: bytes
    content_type: str
    status: int
    words: str  # in the answer's message


def laughs() -> bytes:
    """500 bytes; nine levels of nine aliases expand to 9**9 strings (a 72 MB answer before)."""
    lines = ['a0: &a0 "lol"'] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return ("\n".join(lines) + "\n").encode()


def aliased_args() -> bytes:
    """101 KB: a 100 KB string named 400 times in args (a 40 MB row and a 20 MB launch script before)."""
    extra = f'          env: [{{name: BIG, value: &big "{"x" * 100_000}"}}]\n          args: [' + ", ".join(["*big"] * 400) + "]\n"
    return DEPLOYMENT.format(extra=extra).encode()


def many_nodes() -> bytes:
    """5 MiB of one-character list items: 2.6M nodes (80 s and 1.3 GB to load before)."""
    return ("a: [" + ",".join(["1"] * (5 * 2**20 // 2)) + "]\n").encode()


def deep_yaml() -> bytes:
    return ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 2000))).encode()


def base60() -> bytes:
    """10 MiB of "1:1:1...": PyYAML's number patterns backtrack over it (~600 MB before)."""
    return ("kind: 1" + ":1" * (5 * 2**20 - 8) + "\n").encode()


def gzip_bomb(total: int = 4 * 2**30) -> bytes:
    """A 4 MB gzip of a tar holding 4 GiB of zeros (17 s to open before): gzip members joined,
    as gzip allows, so it takes no time to make."""
    info = tarfile.TarInfo("p/images/zero.bin")
    info.size = total
    zeros = gzip.compress(bytes(2**20), 9)
    return gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)) + zeros * (total // 2**20) + gzip.compress(bytes(1024))


def many_members(n: int = 200_000) -> bytes:
    """A ~1.5 MB tar.gz of 200k empty members (12 s before); headers made from one template."""
    template = tarfile.TarInfo("p/images/x/000000").tobuf(format=tarfile.USTAR_FORMAT)
    headers = []
    for i in range(n):
        h = bytearray(template)
        h[0:17] = b"p/images/x/%06d" % i
        h[148:156] = b" " * 8
        h[148:155] = b"%06o\0" % sum(h)
        headers.append(bytes(h))
    return gzip.compress(b"".join(headers) + bytes(1024), 6)


def var_expansion() -> bytes:
    """$(A) names a 100 KB value 1,000 times: 100 MB of environment once expanded."""
    extra = f'          env: [{{name: A, value: "{"x" * 100_000}"}}, {{name: B, value: "{"$(A)" * 1000}"}}]\n'
    return DEPLOYMENT.format(extra=extra).encode()


def envfrom_fanout() -> bytes:
    """One 500 KB ConfigMap poured into 50 Deployments' environments (25 MB stored)."""
    cm = f'apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata: {{V: "{"x" * 500_000}"}}\n'
    extra = "          envFrom: [{configMapRef: {name: big}}]\n"
    deps = [DEPLOYMENT.format(extra=extra).replace("amp", f"amp{i}") for i in range(50)]
    return "---\n".join([cm, *deps]).encode()


def long_int_yaml() -> bytes:
    return DEPLOYMENT.format(extra="").replace("spec:\n  selector", "spec:\n  replicas: !!int " + "9" * 5000 + "\n  selector", 1).encode()


def deep_json() -> bytes:
    return b"[" * 200_000 + b"]" * 200_000


def long_number_json() -> bytes:
    return b'{"provider": "local", "number": ' + b"1" * 5000 + b', "size": "small"}'


def long_provider() -> bytes:
    return json.dumps({"provider": "x" * 100_000, "number": "1", "size": "small"}).encode()


def inputs() -> list[Input]:
    services = "/overclouds/{oc}/services"
    return [
        Input("billion laughs (500 B)", "POST", services, laughs(), YAML, 422, "aliases"),
        Input("aliased args (101 KB)", "POST", services, aliased_args(), YAML, 422, "aliases"),
        Input("2.6M YAML nodes (5 MiB)", "POST", services, many_nodes(), YAML, 422, "YAML nodes"),
        Input("YAML nested 2,000 deep", "POST", services, deep_yaml(), YAML, 422, "levels deep"),
        Input("10 MiB base-60 integer", "PUT", services, base60(), YAML, 422, "not supported"),
        Input("!!int of 5,000 digits", "POST", services, long_int_yaml(), YAML, 422, "5000 characters"),
        Input("gzip of 4 GiB (4 MB)", "POST", services, gzip_bomb(), GZIP, 422, "unpacks to over"),
        Input("tar.gz of 200k members", "POST", services, many_members(), GZIP, 422, "members"),
        Input("$(VAR) expansion to 100 MB", "POST", services, var_expansion(), YAML, 422, "normalised pattern"),
        Input("envFrom fan-out to 25 MB", "PUT", services, envfrom_fanout(), YAML, 422, "normalised pattern"),
        Input("JSON nested 200k deep (create)", "POST", "/overclouds", deep_json(), JSON, 400, "nests too deeply"),
        Input("5,000-digit number (create)", "POST", "/overclouds", long_number_json(), JSON, 400, "number too long"),
        Input("JSON nested 200k deep (scale)", "PATCH", services + "/amp", deep_json(), JSON, 400, "parsing the body"),
        Input("JSON nested 200k deep (seed delete)", "DELETE", "/overclouds", deep_json(), JSON, 400, "nests too deeply"),
        Input("100 KB provider", "POST", "/overclouds", long_provider(), JSON, 422, "100000 characters"),
    ]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise LookupError(pid)
