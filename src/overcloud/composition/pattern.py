"""A service pattern: Kubernetes-style manifests (Deployment, Service, ConfigMap), checked
against the subset OverCloud runs, and normalised into plain dataclasses.

The subset is a whitelist: every field a manifest carries is either understood or refused
with the manifest, the field's path and the reason (:class:`PatternError`). Nothing is
silently ignored, so a pattern that composes here means what it says on a real Kubernetes
cluster too (the manifests are valid ``apps/v1``/``v1`` objects).

A pattern arrives as a directory (its top-level ``*.yaml``/``*.yml`` files, like
``kubectl apply -f DIR``; images are under ``images/``), as multi-document YAML text, or as a
tar.gz of such a directory.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import re
import tarfile
import zlib
from pathlib import Path
from typing import Any

import yaml
import yaml.cyaml

from overcloud import limits
from overcloud.limits import MAX_PATTERN_BYTES, clip, shown

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # a Service name (RFC 1035 label)
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
VAR_REF = re.compile(r"\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")

KINDS = {"Deployment": "apps/v1", "Service": "v1", "ConfigMap": "v1"}
SERVICE_TYPES = ("ClusterIP", "NodePort")
NODE_PORTS = (30000, 32767)  # Kubernetes' default --service-node-port-range


class PatternError(ValueError):
    """One problem in a pattern: which manifest, which field, and why."""

    def __init__(self, manifest: str, field: str | None, reason: str):
        # names and paths come from the pattern: a message echoes at most ~200 characters of it
        manifest, field, reason = clip(manifest), (clip(field) if field else field), clip(reason, 4 * limits.ECHO_CHARS)
        self.manifest, self.field, self.reason = manifest, field, reason
        where = f"{manifest}: {field}" if field else manifest
        super().__init__(f"{where}: {reason}")


# -- quantities -------------------------------------------------------------
_MEM_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}


def parse_memory(value: Any) -> int:
    """A Kubernetes memory quantity ("128Mi", "1G", 1048576) in bytes; ValueError otherwise."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(value).strip())
    if not m:
        raise ValueError(f"{shown(value)} is not a memory quantity (like 128Mi or 1Gi)")
    n = float(m.group(1)) * _MEM_SUFFIX[m.group(2) or ""]
    if n >= 2**63:  # Kubernetes' quantities are int64 too
        raise ValueError(f"{shown(value)} is more memory than any machine has")
    return int(n)


def parse_cpu(value: Any) -> float:
    """A Kubernetes CPU quantity ("250m", "0.5", 1) in cores; ValueError otherwise."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m)?", str(value).strip())
    if not m:
        raise ValueError(f"{shown(value)} is not a CPU quantity (like 250m or 0.5)")
    cores = float(m.group(1)) / (1000 if m.group(2) else 1)
    if cores >= 2**31:
        raise ValueError(f"{shown(value)} is more CPUs than any machine has")
    return cores


def format_memory(n: int) -> str:
    return f"{n // 2**20}Mi" if n % 2**20 == 0 or n >= 2**20 else f"{n}"


# -- the normalised pattern -------------------------------------------------
@dataclasses.dataclass
class Probe:
    kind: str  # "http" | "tcp" | "exec"
    port: int | None = None
    path: str = "/"
    command: list[str] = dataclasses.field(default_factory=list)
    initial_delay: float = 0.0
    period: float = 1.0
    timeout: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1


@dataclasses.dataclass
class Container:
    name: str
    image: str
    command: list[str]
    args: list[str]
    env: list[tuple[str, str]]  # resolved (ConfigMaps applied), in order
    ports: list[int]
    port_names: dict[str, int]
    working_dir: str | None
    cpu_request: float
    memory_request: int
    cpu_limit: float | None
    memory_limit: int | None
    readiness: Probe | None
    liveness: Probe | None
    security: "Security" = dataclasses.field(default_factory=lambda: Security())


@dataclasses.dataclass
class Security:
    """A container's ``securityContext``, the pod's merged in (the container's own values win).
    Whatever it says, a workload runs without capabilities beyond ``capabilities_add``, with
    ``no_new_privs``, and never as root on the host (see runtime.py)."""

    run_as_user: int | None = None  # None: the runtimes' unprivileged default (65534)
    run_as_group: int | None = None
    run_as_non_root: bool = False
    read_only_root_filesystem: bool = False
    capabilities_add: list[str] = dataclasses.field(default_factory=list)  # names without CAP_, upper case
    capabilities_drop: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Deployment:
    name: str
    replicas: int
    labels: dict[str, str]
    node_selector: dict[str, str]
    containers: list[Container]
    # from the pod template's prometheus.io/{scrape,port,path} annotations: the OverCloud's
    # Prometheus scrapes every ready replica there
    scrape: dict[str, Any] | None = None

    @property
    def cpu_request(self) -> float:
        return sum(c.cpu_request for c in self.containers)

    @property
    def memory_request(self) -> int:
        return sum(c.memory_request for c in self.containers)

    @property
    def images(self) -> set[str]:
        return {c.image for c in self.containers}

    def named_ports(self) -> dict[str, int]:
        return {name: port for c in self.containers for name, port in c.port_names.items()}


@dataclasses.dataclass
class ServicePort:
    name: str | None
    port: int  # on the Service's virtual IP
    target_port: int | str | None = None  # on the replicas: a number, a container port's name, or the same as port
    node_port: int | None = None  # type NodePort: on the site address of the boxes running its replicas

    def target(self, d: "Deployment") -> int:
        """The replica port this Service port leads to, in Deployment ``d``."""
        if self.target_port is None:
            return self.port
        if isinstance(self.target_port, int):
            return self.target_port
        return d.named_ports()[self.target_port]


@dataclasses.dataclass
class Service:
    name: str
    selector: dict[str, str]
    ports: list[ServicePort]
    type: str = "ClusterIP"  # or "NodePort": published on its replicas' boxes' site addresses

    def selects(self, d: Deployment) -> bool:
        return all(d.labels.get(k) == v for k, v in self.selector.items())


@dataclasses.dataclass
class Pattern:
    deployments: list[Deployment]
    services: list[Service]
    configmaps: dict[str, dict[str, str]]
    documents: list[dict[str, Any]]  # the manifests as given (for the record)

    def deployment(self, name: str) -> Deployment:
        return next(d for d in self.deployments if d.name == name)

    def services_of(self, d: Deployment) -> list[Service]:
        return [s for s in self.services if s.selects(d)]

    def depends_on(self, d: Deployment) -> list[str]:
        """Services this Deployment names in its environment (``mqtt``, ``http://notifier:8080``),
        other than its own: it starts once each has a ready endpoint."""
        own = {s.name for s in self.services_of(d)}
        names = {s.name for s in self.services} - own
        found: list[str] = []
        for c in d.containers:
            for _, value in c.env:
                for token in re.split(r"[^-a-z0-9]+", value.lower()):
                    if token in names and token not in found:
                        found.append(token)
        return found

    def start_order(self) -> list[list[str]]:
        """Deployments in waves: each wave only needs Services of earlier waves."""
        providers = {s.name: [d.name for d in self.deployments if s.selects(d)] for s in self.services}
        needs = {d.name: {p for svc in self.depends_on(d) for p in providers[svc]} - {d.name} for d in self.deployments}
        waves: list[list[str]] = []
        done: set[str] = set()
        while len(done) < len(needs):
            wave = [n for n in needs if n not in done and needs[n] <= done]
            if not wave:
                cycle = sorted(n for n in needs if n not in done)
                raise PatternError(
                    f"Deployment/{cycle[0]}", "spec.template.spec.containers[].env",
                    f"the Deployments {', '.join(cycle)} wait for each other's Services (a cycle); "
                    "break it so that one of them starts first",
                )
            waves.append(wave)
            done.update(wave)
        return waves

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Pattern":
        def probe(p):
            return Probe(**p) if p else None

        deployments = []
        for d in data["deployments"]:
            containers = [
                Container(**{"port_names": {}, **c, "env": [tuple(e) for e in c["env"]], "readiness": probe(c["readiness"]),
                             "liveness": probe(c["liveness"]), "security": Security(**(c.get("security") or {}))})
                for c in d["containers"]
            ]
            deployments.append(Deployment(**{**d, "containers": containers}))
        services = [Service(name=s["name"], selector=s["selector"], ports=[ServicePort(**p) for p in s["ports"]],
                            type=s.get("type", "ClusterIP")) for s in data["services"]]
        return cls(deployments, services, data["configmaps"], data["documents"])


def generation_of(record: dict[str, Any]) -> int:
    """The template generation of a stored Deployment spec or replica (1 before any update)."""
    return int(record.get("generation", 1))


def deployment_of(spec: dict[str, Any], generation: int | None = None) -> tuple[Deployment, list[Service]]:
    """One composed Deployment and the Services that select it, from its stored record. With
    ``generation``, the pod template of that generation: during a rolling update the old
    replicas still run the template they were started from (kept in ``spec["templates"]``)."""
    template = spec["deployment"]
    if generation is not None and generation != generation_of(spec):
        template = {**spec["templates"][str(generation)], "replicas": template["replicas"]}
    p = Pattern.from_dict({"deployments": [template], "services": spec["services"], "configmaps": {},
                           "documents": []})
    return p.deployments[0], p.services


def templates_of(spec: dict[str, Any], replicas: list[dict[str, Any]]) -> dict[int, Deployment]:
    """The template of every generation ``replicas`` run (one parse per generation, not per
    replica)."""
    return {g: deployment_of(spec, g)[0] for g in {generation_of(r) for r in replicas}}


# -- loading ----------------------------------------------------------------
def load_documents(source: str | bytes | Path) -> list[dict[str, Any]]:
    """Manifests from a directory, a YAML file, YAML text, or tar.gz bytes. Every source is
    held to the same caps (bytes, YAML nodes, nesting; members and unpacked bytes of a tar.gz),
    checked while it is read, so that a small input never costs the Tower much."""
    budget = _YamlBudget()
    if isinstance(source, Path):
        if source.is_dir():
            files = sorted(p for p in source.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if not files:
                raise PatternError(str(source), None, "no *.yaml or *.yml manifests in this directory")
            size = sum(p.stat().st_size for p in files)
            if size > MAX_PATTERN_BYTES:
                raise PatternError(str(source), None, f"the manifests are {size} bytes; a pattern is at most 10 MiB")
            docs: list[dict[str, Any]] = []
            for p in files:
                docs += _parse_yaml(p.read_text(), p.name, budget)
            return docs
        if source.stat().st_size > MAX_PATTERN_BYTES:
            raise PatternError(str(source), None, "the pattern is over 10 MiB")
        return _parse_yaml(source.read_text(), source.name, budget)
    if isinstance(source, bytes):
        if len(source) > MAX_PATTERN_BYTES:
            raise PatternError("pattern", None, f"the pattern is {len(source)} bytes; at most 10 MiB")
        if source[:2] == b"\x1f\x8b":
            return _from_tar(source, budget)
        try:
            text = source.decode()
        except UnicodeDecodeError:
            raise PatternError("pattern", None, "neither UTF-8 YAML nor a tar.gz") from None
        return _parse_yaml(text, "pattern", budget)
    if len(source.encode()) > MAX_PATTERN_BYTES:
        raise PatternError("pattern", None, "the pattern is over 10 MiB")
    return _parse_yaml(source, "pattern", budget)


class _Unpacked(io.RawIOBase):
    """The decompressed stream of a gzip, refused once it passes ``MAX_TAR_BYTES``: tarfile
    reads every member through it, skipped ones included, so nothing unpacks past the cap."""

    def __init__(self, data: bytes):
        self._gz = gzip.GzipFile(fileobj=io.BytesIO(data))
        self.left = limits.MAX_TAR_BYTES

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self._gz.readinto(memoryview(buf)[: self.left + 1])
        self.left -= n
        if self.left < 0:
            raise PatternError("pattern", None, f"the tar.gz unpacks to over {limits.MAX_TAR_BYTES // 2**20} MiB "
                               "(a pattern directory is its manifests and images/ sources)")
        return n


def _from_tar(data: bytes, budget: "_YamlBudget") -> list[dict[str, Any]]:
    """The top-level manifests of a tar.gz of a pattern directory, read as one stream: member
    by member (never extracted to disk), at most MAX_TAR_MEMBERS members and MAX_TAR_BYTES
    unpacked bytes."""
    texts: list[tuple[str, str]] = []
    total = 0
    try:
        with tarfile.open(fileobj=io.BufferedReader(_Unpacked(data)), mode="r|") as tar:
            for count, m in enumerate(tar, 1):
                if count > limits.MAX_TAR_MEMBERS:
                    raise PatternError("pattern", None, f"the tar.gz has over {limits.MAX_TAR_MEMBERS} members; "
                                       "a pattern directory holds its manifests and images/ sources")
                if not m.isfile():
                    continue
                parts = Path(m.name).parts
                parts = parts[1:] if len(parts) > 1 and parts[0] == "." else parts
                # like a directory: top-level manifests only (one optional leading folder)
                if Path(m.name).suffix not in (".yaml", ".yml") or len(parts) > 2 or "images" in parts:
                    continue
                total += m.size
                if total > MAX_PATTERN_BYTES:
                    raise PatternError("pattern", None, "the unpacked manifests are over 10 MiB")
                f = tar.extractfile(m)
                texts.append((m.name, f.read().decode()))
    except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
        raise PatternError("pattern", None, f"not a readable tar.gz of YAML manifests: {exc}") from None
    docs: list[dict[str, Any]] = []
    for name, text in sorted(texts):
        docs += _parse_yaml(text, name, budget)
    if not docs:
        raise PatternError("pattern", None, "the tar.gz holds no *.yaml or *.yml manifests")
    return docs


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that a pattern may not use (aliases), or over a cap."""


@dataclasses.dataclass
class _YamlBudget:
    nodes: int = limits.MAX_YAML_NODES  # left for the rest of the pattern


class _SafeConstructor(yaml.constructor.SafeConstructor):
    def construct_yaml_int(self, node):
        if len(node.value) > limits.MAX_YAML_INT_CHARS:
            raise _Refused(None, None, f"an integer of {len(node.value)} characters; at most "
                           f"{limits.MAX_YAML_INT_CHARS} (quote it if it is a string)", node.start_mark)
        return super().construct_yaml_int(node)


_SafeConstructor.add_constructor("tag:yaml.org,2002:int", _SafeConstructor.construct_yaml_int)


# libyaml's parser where PyYAML has it (~5x faster), else PyYAML's own reader, scanner and parser
_PARSER = (yaml.cyaml.CParser,) if yaml.__with_libyaml__ else (yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser)


class _Loader(yaml.composer.Composer, *_PARSER, _SafeConstructor, yaml.resolver.Resolver):
    """PyYAML's safe loader (libyaml's parser where there is one) with Python's composer, which
    refuses aliases and counts nodes and nesting as it goes: a 500-byte pattern of nested
    aliases once expanded to 72 MB, and 10 MiB of tiny nodes took 1.3 GB and 80 s to load."""

    def __init__(self, text: str, budget: _YamlBudget):
        if yaml.__with_libyaml__:
            yaml.cyaml.CParser.__init__(self, text)
        else:
            yaml.reader.Reader.__init__(self, text)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self.budget, self.depth = budget, 0

    def resolve(self, kind, value, implicit):
        # a long unquoted scalar that looks like a number stays a string: PyYAML's number
        # patterns backtrack on it (2 MB of "1:1:1..." took 250 MB and 0.5 s to resolve)
        if kind is yaml.ScalarNode and implicit[0] and len(value) > limits.MAX_YAML_INT_CHARS \
                and value[:1] in "+-.0123456789":
            return self.DEFAULT_SCALAR_TAG
        return super().resolve(kind, value, implicit)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(None, None, f"YAML aliases (*{clip(str(event.anchor), 60)}) are not supported; "
                           "write the value out in full", event.start_mark)
        self.budget.nodes -= 1
        if self.budget.nodes < 0:
            raise _Refused(None, None, f"over {limits.MAX_YAML_NODES} YAML nodes in the pattern", event.start_mark)
        self.depth += 1
        try:
            if self.depth > limits.MAX_YAML_DEPTH:
                raise _Refused(None, None, f"nested over {limits.MAX_YAML_DEPTH} levels deep", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _parse_yaml(text: str, source: str, budget: _YamlBudget | None = None) -> list[dict[str, Any]]:
    loader = _Loader(text, budget or _YamlBudget())
    try:
        docs = []
        while loader.check_data():
            d = loader.get_data()
            if d is not None:
                docs.append(d)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        what = "" if isinstance(exc, _Refused) else "not valid YAML"
        raise PatternError(source, None, f"{what}{where}: {getattr(exc, 'problem', exc)}".lstrip()) from None
    except (ValueError, RecursionError) as exc:  # e.g. a date out of range; nesting is capped above
        raise PatternError(source, None, f"not valid YAML: {clip(str(exc))}") from None
    finally:
        loader.dispose()
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise PatternError(f"{source} document {i + 1}", None, "a manifest must be a mapping with apiVersion and kind")
        if d.get("kind") == "List" and isinstance(d.get("items"), list):
            raise PatternError(f"{source} document {i + 1}", "kind", "List is not supported; give the items as YAML documents")
    if not docs:
        raise PatternError(source, None, "no manifests in it")
    return docs


# -- checking ---------------------------------------------------------------
@dataclasses.dataclass
class _Budget:
    chars: int = limits.MAX_SPEC_CHARS  # of the normalised pattern, left for the rest of it


SPEC_TOO_BIG = (f"the normalised pattern (commands, arguments and environments after ConfigMaps and $(VAR) "
                f"expansion, probes, labels: what the Tower stores and writes into every replica's launch script "
                f"and env file) is over {limits.MAX_SPEC_CHARS // 1024} Ki characters; keep large configuration "
                f"out of commands and environments (in the image, or in the DataLake)")


class _Check:
    """Field-by-field walk of one manifest against the whitelist."""

    def __init__(self, manifest: str, budget: _Budget | None = None):
        self.manifest = manifest
        self.budget = budget or _Budget()

    def fail(self, field: str | None, reason: str) -> PatternError:
        return PatternError(self.manifest, field, reason)

    def charge(self, chars: int, field: str | None) -> None:
        """Count ``chars`` of normalised output against the pattern's MAX_SPEC_CHARS, before
        they are made: ConfigMaps and $(VAR) expand, so a small pattern could make a large one."""
        self.budget.chars -= chars
        if self.budget.chars < 0:
            raise self.fail(field, SPEC_TOO_BIG)

    def mapping(self, value: Any, field: str, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, "must be a mapping")
        for key in value:
            if key not in allowed:
                raise self.fail(f"{field}.{key}" if field else key,
                                f"not supported by OverCloud (supported here: {', '.join(sorted(allowed))})")
        for key in required:
            if key not in value:
                raise self.fail(f"{field}.{key}" if field else key, "is required")
        return value

    def string(self, value: Any, field: str, pattern: re.Pattern | None = None, what: str = "") -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(field, "must be a non-empty string")
        if pattern is not None and not pattern.match(value):
            raise self.fail(field, f"{shown(value)} is not a valid {what or 'value'}")
        return value

    def strings(self, value: Any, field: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            raise self.fail(field, "must be a list of strings")
        return [str(v) for v in value]

    def integer(self, value: Any, field: str, low: int, high: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(field, f"must be an integer from {low} to {high}")
        return value

    def labels(self, value: Any, field: str) -> dict[str, str]:
        if not isinstance(value, dict):
            raise self.fail(field, "must be a mapping of label keys to values")
        for k, v in value.items():
            if not isinstance(k, str) or not LABEL_KEY.match(k):
                raise self.fail(f"{field}.{k}", "is not a valid label key")
            if not isinstance(v, str) or not LABEL_VALUE.match(v):
                raise self.fail(f"{field}.{k}", f"{shown(v)} is not a valid label value (a string; quote numbers and booleans)")
        return dict(value)


def _metadata(check: _Check, doc: dict[str, Any], name_rule: re.Pattern, what: str) -> str:
    meta = check.mapping(doc.get("metadata"), "metadata", {"name", "labels", "annotations", "namespace"}, {"name"})
    name = check.string(meta["name"], "metadata.name", name_rule, what)
    if "namespace" in meta and meta["namespace"] != "default":
        raise check.fail("metadata.namespace", "a pattern lives in the OverCloud's one namespace; leave it out or use 'default'")
    if "labels" in meta:
        check.labels(meta["labels"], "metadata.labels")
    if "annotations" in meta and not isinstance(meta["annotations"], dict):
        raise check.fail("metadata.annotations", "must be a mapping")
    return name


def _probe(check: _Check, value: Any, field: str, ports: dict[str, int]) -> Probe:
    p = check.mapping(value, field, {"httpGet", "tcpSocket", "exec", "initialDelaySeconds", "periodSeconds",
                                     "timeoutSeconds", "failureThreshold", "successThreshold"})
    handlers = [k for k in ("httpGet", "tcpSocket", "exec") if k in p]
    if len(handlers) != 1:
        raise check.fail(field, "needs exactly one of httpGet, tcpSocket, exec")
    kind = handlers[0]

    def port_of(v: Any, f: str) -> int:
        if isinstance(v, str):
            if v not in ports:
                raise check.fail(f, f"names no port of this container ({', '.join(ports) or 'it has no named ports'})")
            return ports[v]
        return check.integer(v, f, 1, 65535)

    probe = Probe(kind={"httpGet": "http", "tcpSocket": "tcp", "exec": "exec"}[kind])
    if kind == "httpGet":
        h = check.mapping(p[kind], f"{field}.httpGet", {"path", "port", "scheme"}, {"port"})
        if h.get("scheme", "HTTP") != "HTTP":
            raise check.fail(f"{field}.httpGet.scheme", "only HTTP probes are supported")
        probe.port = port_of(h["port"], f"{field}.httpGet.port")
        probe.path = check.string(h.get("path", "/"), f"{field}.httpGet.path")
    elif kind == "tcpSocket":
        t = check.mapping(p[kind], f"{field}.tcpSocket", {"port"}, {"port"})
        probe.port = port_of(t["port"], f"{field}.tcpSocket.port")
    else:
        e = check.mapping(p[kind], f"{field}.exec", {"command"}, {"command"})
        probe.command = check.strings(e["command"], f"{field}.exec.command")
        if not probe.command:
            raise check.fail(f"{field}.exec.command", "must not be empty")
    # whole seconds, as Kubernetes has them
    probe.initial_delay = check.integer(p.get("initialDelaySeconds", 0), f"{field}.initialDelaySeconds", 0, 3600)
    probe.period = check.integer(p.get("periodSeconds", 10), f"{field}.periodSeconds", 1, 3600)
    probe.timeout = check.integer(p.get("timeoutSeconds", 1), f"{field}.timeoutSeconds", 1, 60)
    probe.failure_threshold = check.integer(p.get("failureThreshold", 3), f"{field}.failureThreshold", 1, 100)
    probe.success_threshold = check.integer(p.get("successThreshold", 1), f"{field}.successThreshold", 1, 100)
    return probe


def _expand(check: _Check, field: str, text: str, values: dict[str, str]) -> str:
    """``text`` with each $(VAR) replaced by its value, as Kubernetes does; the result's length
    is charged before it is built (one short value can name a long one many times)."""
    refs = [m for m in VAR_REF.finditer(text) if m.group(1) in values]
    check.charge(len(text) + sum(len(values[m.group(1)]) - len(m.group(0)) for m in refs), field)
    return VAR_REF.sub(lambda m: values.get(m.group(1), m.group(0)), text) if refs else text


def _resources(check: _Check, value: Any, field: str) -> tuple[float, int, float | None, int | None]:
    r = check.mapping(value or {}, field, {"requests", "limits"})
    out: dict[str, dict[str, float | int]] = {}
    for part in ("requests", "limits"):
        q = check.mapping(r.get(part) or {}, f"{field}.{part}", {"cpu", "memory"})
        out[part] = {}
        for key, parse in (("cpu", parse_cpu), ("memory", parse_memory)):
            if key in q:
                try:
                    out[part][key] = parse(q[key])
                except ValueError as exc:
                    raise check.fail(f"{field}.{part}.{key}", str(exc)) from None
    req, lim = out["requests"], out["limits"]
    # as in Kubernetes: a limit without a request requests the limit
    cpu_req = req.get("cpu", lim.get("cpu", 0.0))
    mem_req = req.get("memory", lim.get("memory", 0))
    for key, have in (("cpu", cpu_req), ("memory", mem_req)):
        if key in lim and have > lim[key]:
            raise check.fail(f"{field}.requests.{key}", f"the request is above the limit ({lim[key]})")
    return float(cpu_req), int(mem_req), lim.get("cpu"), (int(lim["memory"]) if "memory" in lim else None)


def _env(check: _Check, c: dict[str, Any], field: str, configmaps: dict[str, dict[str, str]]) -> list[tuple[str, str]]:
    env: dict[str, str] = {}
    if not isinstance(c.get("envFrom", []), list):
        raise check.fail(f"{field}.envFrom", "must be a list")
    for i, src in enumerate(c.get("envFrom") or []):
        f = f"{field}.envFrom[{i}]"
        s = check.mapping(src, f, {"configMapRef", "prefix"}, {"configMapRef"})
        ref = check.mapping(s["configMapRef"], f"{f}.configMapRef", {"name", "optional"}, {"name"})
        cm = configmaps.get(check.string(ref["name"], f"{f}.configMapRef.name"))
        if cm is None:
            if ref.get("optional"):
                continue
            raise check.fail(f"{f}.configMapRef.name", f"no ConfigMap {shown(ref['name'])} in this pattern")
        prefix = str(s.get("prefix", ""))
        for k, v in cm.items():
            check.charge(len(prefix) + len(k) + len(v), f)
            env[prefix + k] = v
    if not isinstance(c.get("env", []), list):
        raise check.fail(f"{field}.env", "must be a list")
    for i, item in enumerate(c.get("env") or []):
        f = f"{field}.env[{i}]"
        e = check.mapping(item, f, {"name", "value", "valueFrom"}, {"name"})
        name = check.string(e["name"], f"{f}.name", ENV_NAME, "environment variable name")
        if "valueFrom" in e:
            vf = check.mapping(e["valueFrom"], f"{f}.valueFrom", {"configMapKeyRef"}, {"configMapKeyRef"})
            ref = check.mapping(vf["configMapKeyRef"], f"{f}.valueFrom.configMapKeyRef", {"name", "key", "optional"}, {"name", "key"})
            cm = configmaps.get(check.string(ref["name"], f"{f}.valueFrom.configMapKeyRef.name"))
            if cm is None or check.string(ref["key"], f"{f}.valueFrom.configMapKeyRef.key") not in cm:
                if ref.get("optional"):
                    continue
                raise check.fail(f"{f}.valueFrom.configMapKeyRef", f"no key {shown(ref['key'])} in ConfigMap {shown(ref['name'])}")
            value = cm[ref["key"]]
        else:
            value = e.get("value", "")
            if not isinstance(value, str):
                raise check.fail(f"{f}.value", "must be a string (quote numbers and booleans)")
        # $(VAR) refers to a variable defined earlier, as in Kubernetes
        env[name] = _expand(check, f, value, env)
    return list(env.items())


CONTAINER_FIELDS = {"name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "ports", "resources",
                    "readinessProbe", "livenessProbe", "workingDir", "securityContext"}
POD_SECURITY_FIELDS = {"runAsUser", "runAsGroup", "runAsNonRoot"}
CONTAINER_SECURITY_FIELDS = POD_SECURITY_FIELDS | {"readOnlyRootFilesystem", "allowPrivilegeEscalation", "capabilities",
                                                   "privileged"}
CAPABILITIES = {
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE"}
# what capabilities.add may name: Kubernetes' "restricted" Pod Security Standard allows this one
GRANTABLE = {"NET_BIND_SERVICE"}
MAX_ID = 65535  # each Podman container gets a user namespace of 65536 ids


def _security(check: _Check, value: Any, field: str, allowed: set[str]) -> dict[str, Any]:
    """One securityContext (pod or container level), checked; keys as in Security."""
    sc = check.mapping(value or {}, field, allowed)
    out: dict[str, Any] = {}
    for key, name in (("runAsUser", "run_as_user"), ("runAsGroup", "run_as_group")):
        if key in sc:
            out[name] = check.integer(sc[key], f"{field}.{key}", 0, MAX_ID)
    for key, name in (("runAsNonRoot", "run_as_non_root"), ("readOnlyRootFilesystem", "read_only_root_filesystem"),
                      ("privileged", None), ("allowPrivilegeEscalation", None)):
        if key in sc and not isinstance(sc[key], bool):
            raise check.fail(f"{field}.{key}", "must be true or false")
        if name and key in sc:
            out[name] = sc[key]
    if sc.get("privileged"):
        raise check.fail(f"{field}.privileged", "privileged containers are refused: a workload never runs as root "
                         "on the host (ask for a capability in capabilities.add instead)")
    if sc.get("allowPrivilegeEscalation"):
        raise check.fail(f"{field}.allowPrivilegeEscalation", "every workload runs with no_new_privs here; "
                         "leave it out or set it to false")
    if "capabilities" in sc:
        caps = check.mapping(sc["capabilities"], f"{field}.capabilities", {"add", "drop"})
        for part in ("add", "drop"):
            names = []
            for i, raw in enumerate(check.strings(caps.get(part, []), f"{field}.capabilities.{part}")):
                cap = raw.upper().removeprefix("CAP_")
                f = f"{field}.capabilities.{part}[{i}]"
                if cap not in CAPABILITIES and not (part == "drop" and cap == "ALL"):
                    raise check.fail(f, f"{raw[:40]!r} is not a Linux capability")
                if part == "add" and cap not in GRANTABLE:
                    raise check.fail(f, f"{cap} is not granted to workloads (only {', '.join(sorted(GRANTABLE))}, "
                                     "as Kubernetes' restricted Pod Security Standard allows)")
                names.append(cap)
            out[f"capabilities_{part}"] = sorted(set(names))
    return out


def _merged_security(check: _Check, pod: dict[str, Any], c: dict[str, Any], field: str) -> Security:
    """The container's securityContext over the pod's, as Kubernetes merges them."""
    own = _security(check, c.get("securityContext"), f"{field}.securityContext", CONTAINER_SECURITY_FIELDS)
    sec = Security(**{**pod, **own})
    if sec.run_as_non_root and sec.run_as_user == 0:
        where = f"{field}.securityContext" if "run_as_user" in own else "spec.template.spec.securityContext"
        raise check.fail(f"{where}.runAsUser", "runAsNonRoot is set, so the user cannot be 0 (root)")
    if "NET_BIND_SERVICE" in sec.capabilities_add and sec.run_as_user == 0:
        raise check.fail(f"{field}.securityContext.capabilities.add", "NET_BIND_SERVICE is granted only to a non-root "
                         "user (the container then runs without a user namespace of its own): drop runAsUser 0")
    return sec


def _container(check: _Check, c: Any, field: str, configmaps: dict[str, dict[str, str]],
               pod_security: dict[str, Any] | None = None) -> Container:
    c = check.mapping(c, field, CONTAINER_FIELDS, {"name", "image"})
    name = check.string(c["name"], f"{field}.name", DNS_LABEL, "container name")
    image = check.string(c["image"], f"{field}.image")
    policy = c.get("imagePullPolicy", "Never")
    if policy not in ("Never", "IfNotPresent"):
        raise check.fail(f"{field}.imagePullPolicy", "there is no registry: use Never (images are built locally with "
                         "`overcloud images build`)")
    if "command" not in c:
        raise check.fail(f"{field}.command", "is required here: images built by OverCloud have no entrypoint")
    command = check.strings(c["command"], f"{field}.command")
    if not command:
        raise check.fail(f"{field}.command", "must not be empty")
    args = check.strings(c.get("args", []), f"{field}.args")
    ports: dict[str, int] = {}
    plain: list[int] = []
    if not isinstance(c.get("ports", []), list):
        raise check.fail(f"{field}.ports", "must be a list")
    for i, p in enumerate(c.get("ports") or []):
        f = f"{field}.ports[{i}]"
        p = check.mapping(p, f, {"containerPort", "name", "protocol"}, {"containerPort"})
        port = check.integer(p["containerPort"], f"{f}.containerPort", 1, 65535)
        if p.get("protocol", "TCP") != "TCP":
            raise check.fail(f"{f}.protocol", "only TCP ports are supported")
        if "name" in p:
            ports[check.string(p["name"], f"{f}.name", DNS_LABEL, "port name")] = port
        plain.append(port)
    env = _env(check, c, field, configmaps)
    values = dict(env)

    def expand(s: str) -> str:
        return _expand(check, field, s, values)

    cpu_req, mem_req, cpu_lim, mem_lim = _resources(check, c.get("resources"), f"{field}.resources")
    working_dir = c.get("workingDir")
    if working_dir is not None and (not isinstance(working_dir, str) or not working_dir.startswith("/")):
        raise check.fail(f"{field}.workingDir", "must be an absolute path")
    return Container(
        name=name, image=image, command=[expand(s) for s in command], args=[expand(s) for s in args], env=env,
        ports=plain, port_names=ports, working_dir=working_dir, cpu_request=cpu_req, memory_request=mem_req, cpu_limit=cpu_lim,
        memory_limit=mem_lim,
        readiness=_probe(check, c["readinessProbe"], f"{field}.readinessProbe", ports) if "readinessProbe" in c else None,
        liveness=_probe(check, c["livenessProbe"], f"{field}.livenessProbe", ports) if "livenessProbe" in c else None,
        security=_merged_security(check, pod_security or {}, c, field),
    )


def _deployment(check: _Check, doc: dict[str, Any], name: str, configmaps: dict[str, dict[str, str]]) -> Deployment:
    spec = check.mapping(doc.get("spec"), "spec", {"replicas", "selector", "template"}, {"selector", "template"})
    replicas = check.integer(spec.get("replicas", 1), "spec.replicas", 0, 100)
    sel = check.mapping(spec["selector"], "spec.selector", {"matchLabels"}, {"matchLabels"})
    match = check.labels(sel["matchLabels"], "spec.selector.matchLabels")
    tmpl = check.mapping(spec["template"], "spec.template", {"metadata", "spec"}, {"metadata", "spec"})
    tmeta = check.mapping(tmpl["metadata"], "spec.template.metadata", {"labels", "annotations"}, {"labels"})
    labels = check.labels(tmeta["labels"], "spec.template.metadata.labels")
    notes = tmeta.get("annotations") or {}
    if not isinstance(notes, dict) or not all(isinstance(v, str) for v in notes.values()):
        raise check.fail("spec.template.metadata.annotations", "must map names to strings (quote numbers and booleans)")
    for k, v in match.items():
        if labels.get(k) != v:
            raise check.fail("spec.selector.matchLabels", f"{k}={v} is not among the template's labels "
                             "(Kubernetes refuses such a Deployment)")
    pod = check.mapping(tmpl["spec"], "spec.template.spec", {"containers", "nodeSelector", "restartPolicy", "securityContext"},
                        {"containers"})
    pod_security = _security(check, pod.get("securityContext"), "spec.template.spec.securityContext", POD_SECURITY_FIELDS)
    if pod.get("restartPolicy", "Always") != "Always":
        raise check.fail("spec.template.spec.restartPolicy", "a Deployment's pods restart Always (as in Kubernetes)")
    node_selector = check.labels(pod.get("nodeSelector") or {}, "spec.template.spec.nodeSelector")
    if not isinstance(pod["containers"], list) or not pod["containers"]:
        raise check.fail("spec.template.spec.containers", "must list at least one container")
    containers = [_container(check, c, f"spec.template.spec.containers[{i}]", configmaps, pod_security)
                  for i, c in enumerate(pod["containers"])]
    seen: set[str] = set()
    for i, c in enumerate(containers):
        if c.name in seen:
            raise check.fail(f"spec.template.spec.containers[{i}].name", f"two containers are named {c.name!r}")
        seen.add(c.name)
    ports = [p for c in containers for p in c.ports]
    if len(ports) != len(set(ports)):
        raise check.fail("spec.template.spec.containers", "two containers of one pod listen on the same port")
    scrape = None
    if notes.get("prometheus.io/scrape") == "true":
        f = "spec.template.metadata.annotations.prometheus.io/port"
        if not notes.get("prometheus.io/port", "").isdigit():
            raise check.fail(f, "names the port Prometheus scrapes (a containerPort, as a string)")
        port = int(notes["prometheus.io/port"])
        if port not in ports:
            raise check.fail(f, f"{port} is not a containerPort of this pod ({', '.join(map(str, ports)) or 'none'})")
        scrape = {"port": port, "path": notes.get("prometheus.io/path", "/metrics")}
    return Deployment(name=name, replicas=replicas, labels=labels, node_selector=node_selector, containers=containers,
                      scrape=scrape)


def _service(check: _Check, doc: dict[str, Any], name: str) -> Service:
    spec = check.mapping(doc.get("spec"), "spec", {"selector", "ports", "type"}, {"selector", "ports"})
    kind = spec.get("type", "ClusterIP")
    if kind not in SERVICE_TYPES:
        raise check.fail("spec.type", f"{shown(kind)} is not supported: ClusterIP (every box of the OverCloud reaches "
                         f"it) or NodePort (also published on the site address of the boxes running its replicas, "
                         f"ports {NODE_PORTS[0]}-{NODE_PORTS[1]})")
    selector = check.labels(spec["selector"], "spec.selector")
    if not selector:
        raise check.fail("spec.selector", "must select the pods it serves")
    if not isinstance(spec["ports"], list) or not spec["ports"]:
        raise check.fail("spec.ports", "must list at least one port")
    ports = []
    for i, p in enumerate(spec["ports"]):
        f = f"spec.ports[{i}]"
        p = check.mapping(p, f, {"name", "port", "targetPort", "protocol", "nodePort"}, {"port"})
        port = check.integer(p["port"], f"{f}.port", 1, 65535)
        node_port = p.get("nodePort")
        if node_port is not None:
            if kind != "NodePort":
                raise check.fail(f"{f}.nodePort", "only a Service of type: NodePort has a nodePort")
            node_port = check.integer(node_port, f"{f}.nodePort", *NODE_PORTS)
        if p.get("protocol", "TCP") != "TCP":
            raise check.fail(f"{f}.protocol", "only TCP is supported")
        target = p.get("targetPort")
        if target is not None:
            if isinstance(target, str) and not target.isdigit():
                check.string(target, f"{f}.targetPort", DNS_LABEL, "port name")
            else:
                target = check.integer(int(target) if isinstance(target, str) else target, f"{f}.targetPort", 1, 65535)
        ports.append(ServicePort(name=p.get("name"), port=port, target_port=target, node_port=node_port))
    return Service(name=name, selector=selector, ports=ports, type=kind)


def _configmap(check: _Check, doc: dict[str, Any]) -> dict[str, str]:
    check.mapping(doc, "", {"apiVersion", "kind", "metadata", "data"})
    data = doc.get("data") or {}
    if not isinstance(data, dict):
        raise check.fail("data", "must be a mapping of keys to strings")
    for k, v in data.items():
        if not isinstance(k, str) or not ENV_NAME.match(k):
            raise check.fail(f"data.{k}", "is not a valid ConfigMap key")
        if not isinstance(v, str):
            raise check.fail(f"data.{k}", "must be a string (quote numbers and booleans)")
    return dict(data)


def parse(documents: list[dict[str, Any]]) -> Pattern:
    """Check every manifest against the supported subset; raise the first problem found."""
    if len(documents) > 200:
        raise PatternError("pattern", None, f"{len(documents)} manifests; at most 200")
    named: dict[tuple[str, str], int] = {}
    configmaps: dict[str, dict[str, str]] = {}
    pending: list[tuple[_Check, dict[str, Any], str, str]] = []
    budget = _Budget()  # one for the whole pattern
    for i, doc in enumerate(documents):
        kind = doc.get("kind")
        label = f"document {i + 1}"
        if not isinstance(kind, str) or kind not in KINDS:
            raise PatternError(label, "kind", f"{shown(kind)} is not supported (supported: {', '.join(KINDS)})")
        raw_name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
        check = _Check(f"{kind}/{raw_name}" if isinstance(raw_name, str) else f"{kind} ({label})", budget)
        if doc.get("apiVersion") != KINDS[kind]:
            raise check.fail("apiVersion", f"a {kind} is apiVersion {KINDS[kind]!r}")
        check.mapping(doc, "", {"apiVersion", "kind", "metadata", "spec", "data"})
        name = _metadata(check, doc, DNS_LABEL if kind == "Service" else DNS_SUBDOMAIN,
                         "Service name (lower-case letters, digits and '-', starting with a letter)" if kind == "Service"
                         else "name")
        if (kind, name) in named:
            raise check.fail("metadata.name", f"two {kind}s are named {name!r} (documents {named[(kind, name)] + 1} and {i + 1})")
        named[(kind, name)] = i
        if kind == "ConfigMap":
            configmaps[name] = _configmap(check, doc)
        else:
            if "data" in doc:
                raise check.fail("data", f"a {kind} has no data field")
            pending.append((check, doc, kind, name))
    deployments, services = [], []
    for check, doc, kind, name in pending:
        if kind == "Deployment":
            deployments.append(_deployment(check, doc, name, configmaps))
        else:
            services.append(_service(check, doc, name))
    if not deployments:
        raise PatternError("pattern", None, "no Deployment: nothing to run")
    pattern = Pattern(deployments, services, configmaps, documents)
    asked: dict[int, str] = {}
    for s in services:
        for j, p in enumerate(s.ports):
            if p.node_port is not None:
                if p.node_port in asked:
                    raise PatternError(f"Service/{s.name}", f"spec.ports[{j}].nodePort",
                                       f"{p.node_port} is also asked for by {asked[p.node_port]}; a nodePort is one "
                                       f"Service's in an OverCloud")
                asked[p.node_port] = f"Service/{s.name}"
    for s in services:
        if not any(s.selects(d) for d in deployments):
            raise PatternError(f"Service/{s.name}", "spec.selector", f"{s.selector} selects no Deployment's pods")
        for d in pattern.deployments:
            if s.selects(d):
                listening = {p for c in d.containers for p in c.ports}
                for j, p in enumerate(s.ports):
                    field = f"spec.ports[{j}].targetPort" if p.target_port is not None else f"spec.ports[{j}].port"
                    if isinstance(p.target_port, str) and p.target_port not in d.named_ports():
                        raise PatternError(f"Service/{s.name}", field,
                                           f"Deployment/{d.name} has no container port named {p.target_port!r}")
                    if listening and p.target(d) not in listening:
                        raise PatternError(f"Service/{s.name}", field,
                                           f"Deployment/{d.name} declares no containerPort {p.target(d)}")
    pattern.start_order()  # raises on a cycle
    if sum(map(_chars, deployments)) + sum(map(_chars, services)) > limits.MAX_SPEC_CHARS:
        raise PatternError("pattern", None, SPEC_TOO_BIG)
    return pattern


def _chars(value: Any) -> int:
    """About how many characters ``value`` takes in the normalised pattern as stored."""
    if isinstance(value, str):
        return len(value)
    if dataclasses.is_dataclass(value):
        return sum(_chars(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return sum(_chars(k) + _chars(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(map(_chars, value))
    return 4  # a number, a flag, null


def load(source: str | bytes | Path) -> Pattern:
    return parse(load_documents(source))
