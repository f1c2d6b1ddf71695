"""The pattern checker: the supported Kubernetes subset, and a refusal that names the manifest,
the field and the reason for everything else."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import yaml

from overcloud.composition import pattern as pat

ROOT = Path(__file__).resolve().parents[3]
SMART = ROOT / "patterns" / "smart_energy"

DEPLOY = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: localhost/overcloud/x:latest
          imagePullPolicy: Never
          command: [python3, -m, http.server, "8070"]
          ports: [{containerPort: 8070, name: http}]
          resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {memory: 128Mi}}
          readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 8070}]
"""


def docs(text: str = DEPLOY):
    return [d for d in yaml.safe_load_all(text) if d]


def refused(documents) -> pat.PatternError:
    with pytest.raises(pat.PatternError) as info:
        pat.parse(documents)
    return info.value


def test_smart_energy_pattern_is_accepted_and_ordered():
    p = pat.load(SMART)
    assert {d.name for d in p.deployments} == {"broker", "sensors", "collector", "analyzer", "notifier", "dashboard"}
    waves = p.start_order()
    assert waves[0] == ["broker", "notifier"] and waves[-1] == ["dashboard"]
    analyzer = p.deployment("analyzer")
    env = dict(analyzer.containers[0].env)
    assert env["NOTIFY_URL"] == "http://notifier:8060/notify" and env["MQTT_HOST"] == "mqtt"  # from ConfigMaps
    assert p.depends_on(analyzer) == ["mqtt", "notifier"]


def test_normalised_form_round_trips():
    p = pat.parse(docs())
    d = p.deployments[0]
    assert (d.replicas, d.cpu_request, d.memory_request) == (2, 0.1, 64 * 2**20)
    assert d.containers[0].readiness.port == 8070 and d.containers[0].memory_limit == 128 * 2**20
    again = pat.Pattern.from_dict(p.to_dict())
    assert again.deployments[0] == d and again.services == p.services


@pytest.mark.parametrize("path,value,manifest,field,words", [
    (("kind",), "Pod", "document 1", "kind", "not supported"),
    (("spec", "paused"), True, "Deployment/web", "spec.paused", "not supported"),
    (("spec", "template", "spec", "containers", 0, "volumeMounts"), [], "Deployment/web",
     "spec.template.spec.containers[0].volumeMounts", "not supported"),
    (("spec", "template", "spec", "containers", 0, "imagePullPolicy"), "Always", "Deployment/web",
     "spec.template.spec.containers[0].imagePullPolicy", "no registry"),
    (("spec", "template", "spec", "containers", 0, "resources", "requests", "memory"), "lots", "Deployment/web",
     "spec.template.spec.containers[0].resources.requests.memory", "not a memory quantity"),
    (("spec", "selector", "matchLabels", "app"), "other", "Deployment/web", "spec.selector.matchLabels", "template"),
    (("spec", "template", "spec", "hostNetwork"), True, "Deployment/web", "spec.template.spec.hostNetwork", "not supported"),
])
def test_unsupported_fields_are_refused_with_manifest_and_field(path, value, manifest, field, words):
    d = docs()
    node = d[0]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    err = refused(d)
    assert (err.manifest, err.field) == (manifest, field)
    assert words in err.reason


def test_service_problems():
    d = docs()
    d[1]["spec"]["ports"][0]["targetPort"] = 9000
    err = refused(d)
    assert (err.manifest, err.field) == ("Service/web", "spec.ports[0].targetPort")
    assert "declares no containerPort 9000" in err.reason
    d[1]["spec"]["ports"][0]["targetPort"] = "nope"
    assert "no container port named 'nope'" in refused(d).reason
    d = docs() + [docs()[1]]
    err = refused(d)
    assert err.field == "metadata.name" and "two Services" in err.reason
    d = docs()
    d[1]["spec"]["selector"] = {"app": "nothing"}
    assert "selects no Deployment" in refused(d).reason
    d = docs()
    d[1]["metadata"]["name"] = "Web_1"
    assert refused(d).field == "metadata.name"


def test_a_service_port_leads_to_a_target_port_by_number_or_name():
    d = docs()
    d[1]["spec"]["ports"] = [{"port": 80, "targetPort": "http"}, {"port": 81, "targetPort": 8070}]
    p = pat.parse(d)
    assert [sp.target(p.deployments[0]) for sp in p.services[0].ports] == [8070, 8070]


def test_a_dependency_cycle_is_refused():
    a = docs()
    b = yaml.safe_load(yaml.safe_dump(a[0]).replace("web", "api"))
    sb = yaml.safe_load(yaml.safe_dump(a[1]).replace("web", "api"))
    a[0]["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "UP", "value": "http://api:8070"}]
    b["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "UP", "value": "http://web:8070"}]
    b["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": 8070, "name": "http"}]
    err = refused(a + [b, sb])
    assert "cycle" in err.reason and "api" in err.reason and "web" in err.reason


def test_configmap_references_must_exist():
    d = docs()
    d[0]["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "missing"}}]
    err = refused(d)
    assert err.field == "spec.template.spec.containers[0].envFrom[0].configMapRef.name"


def test_quantities():
    assert pat.parse_cpu("250m") == 0.25 and pat.parse_cpu(2) == 2.0
    assert pat.parse_memory("1Gi") == 2**30 and pat.parse_memory("128M") == 128 * 10**6
    with pytest.raises(ValueError):
        pat.parse_cpu("fast")
    # a number too large for a float was an OverflowError (a 500), or an infinite CPU request
    for parse in (pat.parse_cpu, pat.parse_memory):
        with pytest.raises(ValueError, match="than any machine has"):
            parse("9" * 400)


def test_sources_yaml_text_tar_and_size_limit(tmp_path):
    assert len(pat.load_documents(DEPLOY)) == 2
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(SMART, arcname="smart_energy")
    assert {d["kind"] for d in pat.load_documents(buf.getvalue())} == {"ConfigMap", "Deployment", "Service"}
    with pytest.raises(pat.PatternError, match="10 MiB"):
        pat.load_documents(b"#" * (pat.MAX_PATTERN_BYTES + 1))
    with pytest.raises(pat.PatternError, match="not valid YAML line"):
        pat.load_documents("kind: [")
    with pytest.raises(pat.PatternError, match="no \\*.yaml"):
        pat.load_documents(tmp_path)


def test_prometheus_annotations_ask_for_a_scrape_of_a_declared_port():
    d = docs()
    d[0]["spec"]["template"]["metadata"]["annotations"] = {"prometheus.io/scrape": "true", "prometheus.io/port": "8070"}
    assert pat.parse(d).deployments[0].scrape == {"port": 8070, "path": "/metrics"}
    d[0]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] = "9999"
    err = refused(d)
    assert err.field == "spec.template.metadata.annotations.prometheus.io/port" and "not a containerPort" in err.reason


# -- whatever arrives, the checker answers with a PatternError or a Pattern, never a crash ----
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=False), st.text(max_size=12))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                       max_leaves=20)


def mutated(data) -> list[dict]:
    """DEPLOY's two manifests with one value somewhere replaced by anything."""
    d = docs()
    node = d[data.draw(st.integers(0, 1))]
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        if data.draw(st.booleans()) or not isinstance(node[key], (dict, list)):
            node[key] = data.draw(_values)
            break
        node = node[key]
    return d


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_mutation_is_accepted_or_refused_cleanly(data):
    d = mutated(data)
    try:
        pat.parse(d)
    except pat.PatternError as exc:
        assert exc.manifest and exc.reason


@settings(max_examples=200, deadline=None)
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_any_bytes_are_accepted_or_refused_cleanly(raw):
    try:
        pat.load(raw)
    except pat.PatternError as exc:
        assert exc.reason


# -- what the checker accepts is valid Kubernetes (its OpenAPI schemas, strict: no unknown field) --
import kubernetes_validate  # noqa: E402

K8S = kubernetes_validate.latest_version()  # the newest schemas it carries; apps/v1 and v1 are stable since 1.9


def k8s_errors(documents) -> list[str]:
    errors = []
    for d in documents:
        try:
            kubernetes_validate.validate(d, K8S, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.InvalidSchemaError) as exc:
            errors.append(f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}: {exc}")
    return errors


def test_the_shipped_pattern_is_valid_kubernetes():
    documents = pat.load_documents(SMART)
    assert len(documents) == 13 and k8s_errors(documents) == []
    assert k8s_errors(docs()) == []


def _mostly(good, bad):
    """Right values most of the time: enough get through the checker to test its verdicts."""
    return st.sampled_from([True, True, True, True, False]).flatmap(lambda right: good if right else bad)


_name = st.from_regex(r"[a-z]([-a-z0-9]{0,8}[a-z0-9])?", fullmatch=True)
_port = _mostly(st.integers(1, 65535), st.sampled_from([-1, 0, 65536, "80", 80.5]))
_cpu = _mostly(st.sampled_from(["100m", "0.5", "1", "1500m", 1, 0.25]), st.sampled_from(["abc", "-1", "0", "1e9"]))
_memory = _mostly(st.sampled_from(["64Mi", "1Gi", "128974848", 64, "0.5Gi", "64M"]), st.sampled_from(["12x", "1e3", "-1Mi"]))
_seconds = _mostly(st.integers(1, 30), st.sampled_from([-1, 0, 0.5, 4000]))


def _probe(port_names):
    port = st.one_of(_port, st.sampled_from(port_names + ["nope"]))
    handler = st.one_of(
        st.fixed_dictionaries({"httpGet": st.fixed_dictionaries({"port": port}, optional={"path": st.sampled_from(["/", "/healthz", "x"])})}),
        st.fixed_dictionaries({"tcpSocket": st.fixed_dictionaries({"port": port})}),
        st.fixed_dictionaries({"exec": st.fixed_dictionaries({"command": st.lists(st.text(max_size=5), max_size=3)})}))
    return handler.flatmap(lambda h: st.fixed_dictionaries(h and {k: st.just(v) for k, v in h.items()}, optional={
        "periodSeconds": _seconds, "initialDelaySeconds": _seconds, "timeoutSeconds": _seconds,
        "failureThreshold": _seconds, "successThreshold": _seconds}))


@st.composite
def manifests(draw):
    """A Deployment and a Service drawn from the fields the checker knows, with values both
    right and wrong: some are accepted, most are not."""
    app = draw(_name)
    port_names = draw(st.lists(_name, max_size=2, unique=True))
    ports = [{"containerPort": draw(_port), **({"name": n} if n else {})} for n in port_names or [None]]
    resources = draw(st.fixed_dictionaries({}, optional={
        "requests": st.fixed_dictionaries({}, optional={"cpu": _cpu, "memory": _memory}),
        "limits": st.fixed_dictionaries({}, optional={"cpu": _cpu, "memory": _memory})}))
    container = {"name": draw(_name), "image": draw(_mostly(st.just("localhost/overcloud/x:latest"), st.sampled_from(["x", ""]))),
                 "imagePullPolicy": draw(_mostly(st.just("Never"), st.sampled_from(["IfNotPresent", "Sometimes"]))),
                 "command": draw(st.lists(st.text(max_size=6), min_size=1, max_size=3)),
                 "ports": ports, "resources": resources,
                 "env": draw(st.lists(st.fixed_dictionaries({"name": st.from_regex(r"[A-Z][A-Z_]{0,6}", fullmatch=True),
                                                            "value": _mostly(st.text(max_size=6), st.integers())}),
                                      max_size=2))}
    for probe in ("readinessProbe", "livenessProbe"):
        if draw(st.booleans()):
            container[probe] = draw(_probe(port_names))
    spec = {"containers": [container]}
    if draw(st.booleans()):
        spec["nodeSelector"] = draw(st.dictionaries(st.sampled_from(["overcloud.io/tier", "disk"]),
                                                    _mostly(_name, st.integers()), max_size=2))
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app},
                  "spec": {"replicas": draw(_mostly(st.integers(0, 4), st.sampled_from([-1, 101, "2"]))),
                           "selector": {"matchLabels": {"app": app}},
                           "template": {"metadata": {"labels": {"app": app}}, "spec": spec}}}
    service_port = draw(st.fixed_dictionaries({"port": _port}, optional={
        "targetPort": st.one_of(_port, st.sampled_from(port_names + ["nope"])), "name": _name,
        "protocol": _mostly(st.just("TCP"), st.just("UDP")),
        "nodePort": _mostly(st.integers(30000, 32767), st.sampled_from([80, 29999, 32768, "30001"]))}))
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": draw(_name)},
               "spec": {"selector": {"app": app}, "ports": [service_port],
                        **draw(st.fixed_dictionaries({}, optional={"type": _mostly(st.just("ClusterIP"), st.just("NodePort"))}))}}
    return [deployment, service]


@settings(max_examples=400, deadline=None)
@given(documents=manifests())
def test_whatever_the_checker_accepts_applies_to_kubernetes(documents):
    try:
        pat.parse(documents)
    except pat.PatternError:
        return
    assert k8s_errors(documents) == [], documents


# -- no input amplifies: every cap is met while reading, with a message that names it ---------
import zlib  # noqa: E402

from overcloud import limits  # noqa: E402


def laughs(levels: int = 9) -> str:
    """The 500-byte "billion laughs": nine levels of nine aliases, 9**9 strings once expanded."""
    lines = ['a0: &a0 "lol"'] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_yaml_aliases_are_refused_before_anything_expands():
    err = refused_loading(laughs())
    assert "aliases" in err.reason and "line 2" in err.reason and len(str(err)) < 300
    merge = DEPLOY.replace("metadata: {name: web}\nspec:", "metadata: &m {name: web}\nspec:\n  x: *m", 1)
    assert "aliases (*m)" in refused_loading(merge).reason
    anchored = DEPLOY.replace("selector: {matchLabels: {app: web}}", "selector: &s {matchLabels: {app: web}}", 1)
    assert pat.load(anchored).deployments[0].name == "web"  # an anchor alone expands nothing


def refused_loading(source) -> pat.PatternError:
    with pytest.raises(pat.PatternError) as info:
        pat.load(source)
    return info.value


def test_yaml_nodes_nesting_and_integers_are_capped():
    many = "a: [" + ",".join(["1"] * (limits.MAX_YAML_NODES + 1)) + "]\n"
    assert f"over {limits.MAX_YAML_NODES} YAML nodes" in refused_loading(many).reason
    deep = "a:\n" + "".join("  " * i + "- \n" for i in range(1, 200))
    assert f"nested over {limits.MAX_YAML_DEPTH} levels" in refused_loading(deep).reason
    assert "maximum nesting depth" in refused_loading("[" * 200_000 + "]" * 200_000).reason  # flow: libyaml's own cap
    # !!int of 5,000 digits: Python would refuse it with a ValueError (a 500 before)
    assert "an integer of 5000 characters" in refused_loading("a: !!int " + "1" * 5000 + "\n").reason
    # a long unquoted number stays a string, so the checker refuses it as any other wrong value:
    # resolving 2 MB of "1:1:1..." (a base-60 integer) took 250 MB before
    text = DEPLOY.replace("replicas: 2", "replicas: 1" + ":1" * 1_000_000, 1)
    assert refused_loading(text).field == "spec.replicas"
    assert "not valid YAML" in refused_loading("a: 2001-13-45\n").reason  # a ValueError (a 500 before)


def tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tar_gz_is_read_as_a_stream_with_caps_on_members_and_unpacked_bytes():
    ok = tar_gz([("p/images/x/a.py", b"print(1)\n"), ("p/web.yaml", DEPLOY.encode())])
    assert [d["kind"] for d in pat.load_documents(ok)] == ["Deployment", "Service"]
    crowd = tar_gz([(f"p/images/x/{i}", b"") for i in range(limits.MAX_TAR_MEMBERS + 1)] + [("p/web.yaml", DEPLOY.encode())])
    assert f"over {limits.MAX_TAR_MEMBERS} members" in refused_loading(crowd).reason
    # a gzip that unpacks to 1 GiB of zeros (1 MB on the wire): refused at the cap, not unpacked
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    info = tarfile.TarInfo("p/images/zero.bin")
    info.size = 2**30
    parts = [z.compress(info.tobuf(format=tarfile.GNU_FORMAT))] + [z.compress(bytes(2**20)) for _ in range(1024)]
    bomb = b"".join(parts) + z.flush()
    assert len(bomb) < 2 * 2**20
    assert f"unpacks to over {limits.MAX_TAR_BYTES // 2**20} MiB" in refused_loading(bomb).reason


def with_env(env: list[dict], containers: int = 1) -> list[dict]:
    d = docs()
    c = d[0]["spec"]["template"]["spec"]["containers"][0]
    c["env"] = env
    del c["readinessProbe"]
    d[0]["spec"]["template"]["spec"]["containers"] = [
        {**c, "name": f"c{i}", "ports": [{"containerPort": 8070 + i}]} for i in range(containers)]
    d[1]["spec"]["ports"] = [{"port": 8070}]
    return d


def test_the_normalised_pattern_is_capped_before_it_is_built():
    # $(VAR) names a 100 KB value 1,000 times: 100 MB once expanded (Kubernetes expands it too)
    big = "x" * 100_000
    err = refused(with_env([{"name": "A", "value": big}, {"name": "B", "value": "$(A)" * 1000}]))
    assert err.field == "spec.template.spec.containers[0].env[1]" and f"{limits.MAX_SPEC_CHARS // 1024} Ki" in err.reason
    # a ConfigMap poured into many containers by envFrom
    d = with_env([], containers=20)
    for c in d[0]["spec"]["template"]["spec"]["containers"]:
        c["envFrom"] = [{"configMapRef": {"name": "big"}}]
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"V": "x" * 100_000}}
    assert "normalised pattern" in refused([cm] + d).reason
    # and the same, plainly written out: commands and labels count too
    d = docs()
    d[0]["spec"]["template"]["spec"]["containers"][0]["args"] = ["y" * 1000] * 1100
    assert refused(d).field == "spec.template.spec.containers[0]"
    d = docs()
    d[0]["spec"]["template"]["metadata"]["labels"].update({f"k{i}": "v" * 60 for i in range(20_000)})
    err = refused(d)
    assert err.manifest == "pattern" and "normalised pattern" in err.reason
    # what fits is accepted, expanded as before
    p = pat.parse(with_env([{"name": "A", "value": "ab"}, {"name": "B", "value": "$(A)-$(A)-$(NOPE)"}]))
    assert dict(p.deployments[0].containers[0].env)["B"] == "ab-ab-$(NOPE)"


def test_refusals_echo_at_most_about_200_characters_of_the_input():
    long = "Q" * 100_000
    d = docs()
    d[0]["metadata"]["name"] = long
    d[0]["spec"]["template"]["spec"]["containers"][0][long] = 1
    d[1]["kind"] = long
    for documents in (d, d[:1], [{**docs()[0], long: 1}]):
        err = refused(documents)
        assert len(str(err)) < 1200 and len(err.manifest) < 260 and len(err.field or "") < 260, str(err)[:300]
    c = docs()
    c[0]["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"memory": long}}
    assert len(str(refused(c))) < 600
    assert len(str(refused_loading(f"a: [{long}"))) < 1200


@pytest.mark.parametrize("edit,field", [
    (lambda c: c.update(envFrom=[{"configMapRef": {"name": [1]}}]), "envFrom[0].configMapRef.name"),
    (lambda c: c.update(envFrom=5), "envFrom"),
    (lambda c: c.update(env=[{"name": "A", "valueFrom": {"configMapKeyRef": {"name": [1], "key": "k"}}}]),
     "env[0].valueFrom.configMapKeyRef.name"),
    (lambda c: c.update(env=[{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": {"a": 1}}}}]),
     "env[0].valueFrom.configMapKeyRef.key"),
])
def test_configmap_references_of_the_wrong_type_are_refused_not_a_crash(edit, field):
    d = docs()
    edit(d[0]["spec"]["template"]["spec"]["containers"][0])
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"k": "v"}}
    assert refused([cm] + d).field == f"spec.template.spec.containers[0].{field}"  # a TypeError (500) before
