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


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_mutation_is_accepted_or_refused_cleanly(data):
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
