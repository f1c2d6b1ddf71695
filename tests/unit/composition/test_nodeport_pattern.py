"""NodePort Services (issue 11, point 6): the pattern rules (type, nodePort range, one
nodePort per Service in an OverCloud), the controller's allocation (the asked one, else the one
it had, else the lowest free; stable across re-applies) and the published chain of the box
table (only boxes running a ready replica publish, on their own site address)."""

from __future__ import annotations

import dataclasses
import types

import pytest
import yaml

from overcloud.composition import controller as ctl
from overcloud.composition import pattern as pat
from overcloud.composition import stitching
from test_pattern import DEPLOY, SMART, k8s_errors


def service(name="web", type_="NodePort", ports="[{port: 8070}]", app="web") -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  type: {type_}
  selector: {{app: {app}}}
  ports: {ports}
"""


def docs(*services: str):
    deploy = DEPLOY.split("---")[0]
    return [d for d in yaml.safe_load_all(deploy + "---" + "---".join(services)) if d]


def refused(documents) -> pat.PatternError:
    with pytest.raises(pat.PatternError) as info:
        pat.parse(documents)
    return info.value


def test_a_nodeport_service_is_accepted_and_kept_through_the_stored_spec():
    p = pat.parse(docs(service(ports="[{port: 8070, nodePort: 30080}]")))
    s = p.services[0]
    assert (s.type, s.ports[0].node_port) == ("NodePort", 30080)
    again = pat.Pattern.from_dict({"deployments": [dataclasses.asdict(p.deployments[0])],
                                   "services": [dataclasses.asdict(s)], "configmaps": {}, "documents": []})
    assert again.services[0] == s
    # a spec stored before NodePorts existed reads as ClusterIP without a nodePort
    old = {"name": "web", "selector": {"app": "web"}, "ports": [{"name": None, "port": 8070, "target_port": None}]}
    legacy = pat.Pattern.from_dict({"deployments": [dataclasses.asdict(p.deployments[0])], "services": [old],
                                    "configmaps": {}, "documents": []}).services[0]
    assert (legacy.type, legacy.ports[0].node_port) == ("ClusterIP", None)
    assert pat.parse(docs(service(ports="[{port: 8070}]"))).services[0].ports[0].node_port is None  # allocated later


@pytest.mark.parametrize("text,field,words", [
    (service(ports="[{port: 8070, nodePort: 29999}]"), "spec.ports[0].nodePort", "from 30000 to 32767"),
    (service(ports="[{port: 8070, nodePort: 32768}]"), "spec.ports[0].nodePort", "from 30000 to 32767"),
    (service(ports="[{port: 8070, nodePort: '30080'}]"), "spec.ports[0].nodePort", "an integer"),
    (service(type_="ClusterIP", ports="[{port: 8070, nodePort: 30080}]"), "spec.ports[0].nodePort", "type: NodePort"),
    (service(type_="LoadBalancer"), "spec.type", "not supported"),
    (service(ports="[{port: 8070, nodePort: 30080}, {port: 8071, targetPort: 8070, nodePort: 30080}]"),
     "spec.ports[1].nodePort", "also asked for by Service/web"),
])
def test_bad_nodeports_are_refused_naming_the_field(text, field, words):
    err = refused(docs(text))
    assert (err.manifest, err.field) == ("Service/web", field) and words in err.reason, err


def test_two_services_asking_for_one_nodeport_are_refused():
    err = refused(docs(service(ports="[{port: 8070, nodePort: 30080}]"),
                       service(name="web2", ports="[{port: 8070, nodePort: 30080}]")))
    assert (err.manifest, err.field) == ("Service/web2", "spec.ports[0].nodePort") and "Service/web" in err.reason


def test_the_shipped_dashboard_is_a_nodeport_and_valid_kubernetes():
    p = pat.load(SMART)
    dash = next(s for s in p.services if s.name == "dashboard")
    assert (dash.type, [x.node_port for x in dash.ports]) == ("NodePort", [30850])
    assert all(s.type == "ClusterIP" for s in p.services if s.name != "dashboard")
    assert k8s_errors(pat.load_documents(SMART)) == []


def _row(name: str, services: list[pat.Service]):
    return types.SimpleNamespace(name=name, spec={"services": [dataclasses.asdict(s) for s in services]})


def test_the_controller_gives_free_nodeports_and_keeps_them_across_applies():
    p = pat.parse(docs(service(ports="[{port: 8070}, {port: 8071, targetPort: 8070}]")))
    other = pat.parse(docs(service(name="other", ports="[{port: 8070, nodePort: 30000}]"))).services
    existing = {"other": _row("other", other)}
    ctl._node_ports(p, existing, {})
    assert [x.node_port for x in p.services[0].ports] == [30001, 30002]  # 30000 is another Service's
    # re-applied without nodePorts, the Service keeps what it had
    again = pat.parse(docs(service(ports="[{port: 8071, targetPort: 8070}, {port: 8070}]")))
    existing["web"] = _row("web", p.services)
    ctl._node_ports(again, existing, {"web": existing["web"]})
    assert {x.port: x.node_port for x in again.services[0].ports} == {8070: 30001, 8071: 30002}
    # one another composed Service publishes is refused, naming the field
    taken = pat.parse(docs(service(ports="[{port: 8070, nodePort: 30000}]")))
    with pytest.raises(pat.PatternError) as info:
        ctl._node_ports(taken, existing, {"web": existing["web"]})
    assert (info.value.manifest, info.value.field) == ("Service/web", "spec.ports[0].nodePort")
    assert "Service/other" in info.value.reason
    # a ClusterIP Service gets none
    plain = pat.parse(docs(service(type_="ClusterIP")))
    ctl._node_ports(plain, {}, {})
    assert plain.services[0].ports[0].node_port is None


def test_only_boxes_running_a_ready_replica_publish_on_their_site_address():
    p = pat.parse(docs(service(ports="[{port: 80, targetPort: http, nodePort: 30080}]")))
    spec = {"deployment": dataclasses.asdict(p.deployments[0]),
            "services": [{**dataclasses.asdict(p.services[0]), "vip": stitching.vip(0)}]}
    replicas = [{"name": "web-0", "box": "c1", "ready": True}, {"name": "web-1", "box": "c2", "ready": False}]
    boxes = {n: types.SimpleNamespace(name=n, site="local-a", overlay_address=f"10.9.0.{i + 2}",
                                      address=f"10.8.0.{i + 2}", role="cluster") for i, n in enumerate(["c1", "c2", "c3"])}
    svcs = stitching.services([types.SimpleNamespace(spec=spec, replicas=replicas, name="web")], boxes)
    c1 = stitching.nat_script(svcs, "local-a", boxes["c1"])
    assert "type nat hook prerouting priority -100" in c1
    assert 'ip daddr 10.8.0.2 tcp dport 30080 dnat to 10.9.0.2:8070 comment "web"' in c1
    for other in ("c2", "c3"):  # not ready, or no replica: nothing published
        assert "dport 30080" not in stitching.nat_script(svcs, "local-a", boxes[other])
    assert stitching.node_port_urls(svcs, "web") == ["http://10.8.0.2:30080"]
    plain = pat.parse(docs(service(type_="ClusterIP", ports="[{port: 80, targetPort: http}]")))
    spec["services"] = [{**dataclasses.asdict(plain.services[0]), "vip": stitching.vip(0)}]
    svcs = stitching.services([types.SimpleNamespace(spec=spec, replicas=replicas, name="web")], boxes)
    assert "dnat to" not in stitching.nat_script(svcs, "local-a", boxes["c1"]).split("chain published")[1]
    assert stitching.node_port_urls(svcs, "web") == []
