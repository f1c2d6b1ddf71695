"""The ``aws`` kind: EC2 through boto3 (real AWS, or moto in the lab via ``endpoint_url``).

Per OverCloud on a site it makes, all tagged with the OverCloud id and the Tower id:

* a VPC whose CIDR is the OverCloud's /24 of ``network.vpc_cidr`` and one subnet covering it
  (the /24 is chosen free among the region's VPCs, so two OverClouds never share addresses: the
  lab's bridges need that). With ``network.vpc_id`` the subnet is made in that VPC instead (a /24
  free among its subnets) and the VPC is never touched; with ``network.subnet_id`` that subnet is
  used and nothing of the network is made or deleted;
* a security group: TCP 22 from ``ssh_cidrs``, UDP 4789 (VXLAN) from the group itself, TCP
  30000-32767 from ``nodeport_cidrs``, UDP 51820 (WireGuard) from what ``allow_wan_peers`` adds;
* a key pair (the Tower's public key, imported);
* one instance per box (``run_instances`` with the cloud-init user data, tags on the instance and
  its volume, IMDSv2 only, ``ClientToken`` derived from Tower + OverCloud + server name).

The parts: ``aws_calls.py`` (session, client, retries only on throttling and server errors,
errors without secrets), ``aws_network.py`` (VPC, subnet, security group, key pair), this module
(check, limits, instances, waiters, listing and deleting by tag).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from overcloud.underclouds.base import TaggedResource, UnderCloudError
from overcloud.underclouds.cloud.aws_calls import (
    DEPENDENCY_CODES, PROPAGATION_CODES, THROTTLING_CODES, aws_retryable, error_code)
from overcloud.underclouds.cloud.aws_network import AWSNetwork
from overcloud.underclouds.cloud.provider import (
    ACTIVE, BUILDING, DELETED, ERROR, TAG_BOX, TAG_OVERCLOUD, CloudServerFailed, CloudUnavailable, Limits,
    NetworkInfo, Server, ServerRequest, network_name)

if TYPE_CHECKING:  # pragma: no cover
    from overcloud.underclouds.cloud.config import CloudSiteConfig

logger = logging.getLogger(__name__)

__all__ = ["AWSProvider", "THROTTLING_CODES", "aws_retryable"]

_NOT_FOUND_SUFFIX = ".NotFound"
_LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
_STATUS = {"pending": BUILDING, "running": ACTIVE, "stopping": ERROR, "stopped": ERROR,
           "shutting-down": DELETED, "terminated": DELETED}
_VCPU_QUOTA = ("ec2", "L-1216C47A")  # Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances, vCPUs


class AWSProvider(AWSNetwork):
    """EC2 for one site (region). Thread-safe."""

    kind = "aws"
    propagation_s = 60.0  # how long RunInstances waits for EC2 to see a group/subnet/key pair just made
    quota_ttl = 600.0  # seconds a vCPU quota read from Service Quotas is kept

    def __init__(self, config: "CloudSiteConfig", tower_id: str):
        super().__init__(config, tower_id)
        self._image_id: str | None = None
        self._flavor_table: dict[str, tuple[int, int]] | None = None
        self._quota: tuple[float, int | None] | None = None  # (when asked, vCPU quota)

    # -- site -------------------------------------------------------------------------------

    def check(self) -> None:
        """One DescribeRegions for the site's region, one attempt: auth + endpoint + region."""
        try:
            client = self._client("ec2", connect_timeout=5, read_timeout=15)
            self.stats.count()
            found = client.describe_regions(RegionNames=[self.config.region]).get("Regions") or []
        except Exception as exc:
            code = error_code(exc)
            if code in ("InvalidParameterValue", "InvalidRegion"):
                raise CloudUnavailable(f"site {self.site}: EC2 does not know region {self.config.region!r}",
                                       site=self.site) from None
            err = self._error(exc, "check the site (DescribeRegions)")
            if not isinstance(err, CloudUnavailable):  # any refusal of the cheapest call makes the site unusable
                err = CloudUnavailable(str(err), site=self.site)
            raise err from None
        if not found:
            raise CloudUnavailable(f"site {self.site}: EC2 does not list region {self.config.region!r}", site=self.site)

    def _flavors(self) -> dict[str, tuple[int, int]]:
        if self._flavor_table is None:
            types = sorted(set(self.config.flavors.values()))
            resp = self._call("describe the instance types " + ", ".join(types), "describe_instance_types",
                              InstanceTypes=types)
            by_type = {t["InstanceType"]: (int(t["VCpuInfo"]["DefaultVCpus"]), int(t["MemoryInfo"]["SizeInMiB"]))
                       for t in resp.get("InstanceTypes", [])}
            missing = [t for t in types if t not in by_type]
            if missing:
                raise UnderCloudError(f"site {self.site}: EC2 in {self.config.region} has no instance type "
                                      f"{', '.join(missing)} (instance_types in the site config)", site=self.site)
            self._flavor_table = {ours: by_type[t] for ours, t in self.config.flavors.items()}
        return dict(self._flavor_table)

    def limits(self) -> Limits:
        """``max-instances`` (account attribute), running/pending instances of the region and their
        vCPUs, and the vCPU quota of standard instances when Service Quotas answers (it needs
        ``servicequotas:GetServiceQuota``; moto has none: then ``max_cores`` is None)."""
        attrs = self._call("read the account attributes", "describe_account_attributes", AttributeNames=["max-instances"])
        max_instances = None
        for a in attrs.get("AccountAttributes", []):
            if a.get("AttributeName") == "max-instances" and a.get("AttributeValues"):
                max_instances = int(a["AttributeValues"][0]["AttributeValue"])
        types: dict[str, int] = {}
        used = 0
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Filters": [{"Name": "instance-state-name", "Values": ["pending", "running"]}],
                                  "MaxResults": 1000}
            if token:
                kw["NextToken"] = token
            page = self._call("count the running instances", "describe_instances", **kw)
            for r in page.get("Reservations", []):
                for i in r.get("Instances", []):
                    used += 1
                    types[i["InstanceType"]] = types.get(i["InstanceType"], 0) + 1
            token = page.get("NextToken")
            if not token:
                break
        used_cores = 0
        if types:
            resp = self._call("describe the running instance types", "describe_instance_types", InstanceTypes=sorted(types))
            vcpus = {t["InstanceType"]: int(t["VCpuInfo"]["DefaultVCpus"]) for t in resp.get("InstanceTypes", [])}
            used_cores = sum(vcpus.get(t, 0) * n for t, n in types.items())
        max_cores = self._vcpu_quota()
        return Limits(max_instances=max_instances, used_instances=used, max_cores=max_cores, used_cores=used_cores,
                      flavors=self._flavors())

    def _vcpu_quota(self) -> int | None:
        """The account's vCPU quota, asked at most every ``quota_ttl`` seconds (it changes only when
        AWS support raises it); None when Service Quotas does not answer (permission, moto)."""
        now = time.monotonic()
        if self._quota is not None and now - self._quota[0] < self.quota_ttl:
            return self._quota[1]
        value: int | None = None
        try:
            sq = self._client("service-quotas", connect_timeout=5, read_timeout=15)
            self.stats.count()
            q = sq.get_service_quota(ServiceCode=_VCPU_QUOTA[0], QuotaCode=_VCPU_QUOTA[1])
            value = int(q["Quota"]["Value"])
        except Exception as exc:  # noqa: BLE001 - optional: a missing permission or service leaves it unknown
            logger.debug("site %s: no vCPU quota from Service Quotas (%s)", self.site, error_code(exc) or type(exc).__name__)
        self._quota = (now, value)
        return value

    # -- servers ----------------------------------------------------------------------------

    def _image(self) -> str:
        with self._lock:
            if self._image_id is not None:
                return self._image_id
        image = self.config.image
        if not image.startswith("ami-"):
            found = self._call(f"find the image named {image}", "describe_images",
                               Filters=[{"Name": "name", "Values": [image]}]).get("Images", [])
            if not found:
                raise UnderCloudError(f"site {self.site}: no image named {image!r} in {self.config.region} (image in the site config)",
                                      site=self.site)
            owners = sorted({i.get("OwnerId", "?") for i in found})
            if len(owners) > 1:  # a public image of a stranger may share the name (or the pattern): never guess
                raise UnderCloudError(f"site {self.site}: images named {image!r} belong to {len(owners)} owners "
                                      f"({', '.join(owners[:5])}); name the AMI id in the site config", site=self.site)
            image = max(found, key=lambda i: i.get("CreationDate", ""))["ImageId"]
        with self._lock:
            self._image_id = image
        return image

    def _server(self, inst: dict[str, Any]) -> Server:
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        state = inst.get("State", {}).get("Name", "")
        status = _STATUS.get(state, BUILDING)
        fault = None
        if status in (ERROR, DELETED):
            reason = inst.get("StateReason") or {}
            fault = reason.get("Message") or inst.get("StateTransitionReason") or state
        return Server(id=inst["InstanceId"], name=tags.get("Name", inst["InstanceId"]), box=tags.get(TAG_BOX),
                      status=status, private_address=inst.get("PrivateIpAddress"),
                      public_address=inst.get("PublicIpAddress"), tags=tags, fault=fault)

    def _describe(self, what: str, **kw: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token = None
        while True:
            page = self._call(what, "describe_instances", **kw, **({"NextToken": token} if token else {}))
            out += [i for r in page.get("Reservations", []) for i in r.get("Instances", [])]
            token = page.get("NextToken")
            if not token:
                return out

    def list_servers(self, overcloud_id: str | None = None) -> list[Server]:
        found = self._describe("list the servers", Filters=self._tag_filters(overcloud_id)
                               + [{"Name": "instance-state-name", "Values": _LIVE_STATES}])
        return [self._server(i) for i in found if i.get("State", {}).get("Name") != "shutting-down"]

    def client_token(self, overcloud_id: str, name: str) -> str:
        """The idempotency token of one server: EC2 answers a repeated RunInstances with it with the
        instance the first one made (a Tower that died while the call was under way makes no twin)."""
        return hashlib.sha256(f"{self.tower_id}/{overcloud_id}/{name}".encode()).hexdigest()[:48]

    def create_servers(self, net: NetworkInfo, reqs: list[ServerRequest]) -> list[Server]:
        if not reqs:
            return []
        oc = net.overcloud_id
        existing = {s.name: s for s in self.list_servers(oc) if s.status in (BUILDING, ACTIVE, ERROR)}
        image = self._image()
        out: list[Server | None] = [existing.get(r.name) for r in reqs]
        todo = [(i, r) for i, r in enumerate(reqs) if out[i] is None]
        if len(todo) < len(reqs):
            logger.info("site %s: OverCloud %s: %d server(s) found already made, %d to make", self.site, oc,
                        len(reqs) - len(todo), len(todo))
        from overcloud.underclouds.base import parallel

        def launch(item: tuple[int, ServerRequest]) -> Server:
            _, r = item
            return self._launch(net, r, image)

        for (i, _), (_, server, err) in zip(todo, parallel(launch, todo, name="aws-run")):
            if err is not None:
                raise err
            out[i] = server
        return [s for s in out if s is not None]

    def _launch(self, net: NetworkInfo, r: ServerRequest, image: str) -> Server:
        oc = net.overcloud_id
        tags = {**dict(r.tags), TAG_BOX: r.box}
        kw: dict[str, Any] = dict(
            ImageId=image, InstanceType=self.config.cloud_flavor(r.flavor), MinCount=1, MaxCount=1,
            KeyName=network_name(oc), UserData=r.user_data, ClientToken=self.client_token(oc, r.name),
            InstanceInitiatedShutdownBehavior="terminate",
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
            TagSpecifications=[self._tag_spec("instance", oc, r.name, tags),
                               self._tag_spec("volume", oc, r.name, {TAG_BOX: r.box})])
        if self.config.network.public_ip:
            kw["NetworkInterfaces"] = [{"DeviceIndex": 0, "SubnetId": net.ids["subnet"], "AssociatePublicIpAddress": True,
                                        "Groups": [net.ids["security_group"]], "DeleteOnTermination": True}]
        else:
            kw.update(SubnetId=net.ids["subnet"], SecurityGroupIds=[net.ids["security_group"]])
        inst = self._run_instance(r.name, oc, kw)
        if inst.get("State", {}).get("Name") in ("shutting-down", "terminated"):
            # the token's instance is one that died earlier (list_servers left it out): a new token, a new instance
            kw["ClientToken"] = f"{kw['ClientToken'][:40]}-{int(time.time())}"
            inst = self._run_instance(r.name, oc, kw)
        logger.info("site %s: server %s is instance %s (%s)", self.site, r.name, inst["InstanceId"], kw["InstanceType"])
        return self._server(inst)

    def _run_instance(self, name: str, oc: str, kw: dict[str, Any]) -> dict[str, Any]:
        """RunInstances; while EC2 does not see yet the group, subnet or key pair just made (it is
        eventually consistent: AWS's advice is to wait and call again), called again with the same
        ClientToken for up to ``propagation_s``. Any other refusal is raised at once."""
        deadline = time.monotonic() + self.propagation_s
        while True:
            try:
                return self.ec2.run_instances(**kw)["Instances"][0]
            except Exception as exc:
                code = error_code(exc) or ""
                if code in PROPAGATION_CODES and time.monotonic() + self.poll < deadline:
                    logger.info("site %s: %s: EC2 does not see a just-made resource yet (%s): again in %.1f s",
                                self.site, name, code, self.poll)
                    with self.stats.waiting():
                        time.sleep(self.poll)
                    continue
                raise self._error(exc, f"start server {name}", overcloud_id=oc) from None

    def _wait(self, waiter_name: str, ids: list[str], timeout: float, what: str) -> Exception | None:
        """Run a boto3 waiter over ``ids``; None when it succeeded, else the WaiterError."""
        from botocore import xform_name
        from botocore.exceptions import WaiterError
        from botocore.waiter import WaiterModel, create_waiter_with_client

        # the waiter polls through the retrying client: a throttled poll is retried, not the end of the wait
        model = WaiterModel(self.ec2._client._get_waiter_config())
        names = {xform_name(n): n for n in model.waiter_names}
        waiter = create_waiter_with_client(names[waiter_name], model, self.ec2)
        attempts = max(1, math.ceil(timeout / self.poll))
        with self.stats.waiting():
            try:
                waiter.wait(InstanceIds=ids, WaiterConfig={"Delay": self.poll, "MaxAttempts": attempts})
            except WaiterError as exc:
                return exc
        return None

    def wait_servers(self, ids: list[str], timeout: float) -> list[Server]:
        if not ids:
            return []
        err = self._wait("instance_running", ids, timeout, "wait for the servers to run")
        servers = {s.id: s for s in (self._server(i) for i in self._describe(
            "read the servers", Filters=[{"Name": "instance-id", "Values": ids}]))}
        for i in ids:
            s = servers.get(i)
            if s is None:
                raise CloudServerFailed(f"site {self.site}: instance {i} is gone", server=i, fault="not found", site=self.site)
            if s.status in (ERROR, DELETED):
                raise CloudServerFailed(f"site {self.site}: server {s.name} ({i}) went to {s.status} while booting: {s.fault}",
                                        server=s.name, fault=s.fault, site=self.site, overcloud_id=s.overcloud_id)
        if err is not None:
            pending = [servers[i].name for i in ids if servers[i].status != ACTIVE]
            reason = self.scrub(str(err))
            if pending:
                raise UnderCloudError(f"site {self.site}: server(s) {', '.join(pending)} not running after {timeout:.0f} s "
                                      f"({reason})", site=self.site)
            raise self._error(err, "wait for the servers to run")
        return [servers[i] for i in ids]

    def delete_servers(self, ids: list[str], timeout: float) -> None:
        if not ids:
            return
        live = [i["InstanceId"] for i in self._describe("find the servers to delete", Filters=[
            {"Name": "instance-id", "Values": list(ids)}, {"Name": "instance-state-name", "Values": _LIVE_STATES}])]
        if live:
            self._call(f"terminate {', '.join(live)}", "terminate_instances", InstanceIds=live)
        known = [i["InstanceId"] for i in self._describe("find the servers to delete", Filters=[
            {"Name": "instance-id", "Values": list(ids)}])]
        if not known:
            return
        err = self._wait("instance_terminated", known, timeout, "wait for the servers to terminate")
        if err is not None:
            left = [f"{i['InstanceId']} ({i['State']['Name']})" for i in self._describe(
                "read the servers", Filters=[{"Name": "instance-id", "Values": known}]) if i["State"]["Name"] != "terminated"]
            raise UnderCloudError(f"site {self.site}: EC2 did not confirm the termination of {', '.join(left) or known} "
                                  f"within {timeout:.0f} s ({self.scrub(str(err))})", site=self.site)

    # -- what this Tower has, and deleting it -----------------------------------------------

    #: (kind, Describe* operation, answer key, id field) of everything but instances, in deletion order
    _KINDS = (("volume", "describe_volumes", "Volumes", "VolumeId"),
              ("key-pair", "describe_key_pairs", "KeyPairs", "KeyPairId"),
              ("security-group", "describe_security_groups", "SecurityGroups", "GroupId"),
              ("route-table", "describe_route_tables", "RouteTables", "RouteTableId"),
              ("internet-gateway", "describe_internet_gateways", "InternetGateways", "InternetGatewayId"),
              ("subnet", "describe_subnets", "Subnets", "SubnetId"),
              ("vpc", "describe_vpcs", "Vpcs", "VpcId"))

    def _resources(self, overcloud_id: str | None, kinds: set[str] | None = None
                   ) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        """(kind, id, overcloud id, name, raw) of every live resource of this Tower (of one
        OverCloud; of these kinds only), one Describe call per kind."""
        f = self._tag_filters(overcloud_id)
        out: list[tuple[str, str, str, str, dict[str, Any]]] = []

        def add(kind: str, rid: str, item: dict[str, Any]) -> None:
            tags = {t["Key"]: t["Value"] for t in item.get("Tags", [])}
            out.append((kind, rid, tags.get(TAG_OVERCLOUD, ""), tags.get("Name", rid), item))

        if kinds is None or "instance" in kinds:
            for i in self._describe("list the instances", Filters=f + [{"Name": "instance-state-name", "Values": _LIVE_STATES}]):
                add("instance", i["InstanceId"], i)
        for kind, op, key, id_field in self._KINDS:
            if kinds is not None and kind not in kinds:
                continue
            for item in self._call(f"list the {kind}s", op, Filters=f).get(key, []):
                if item.get("State") not in ("deleted", "deleting"):  # volumes
                    add(kind, item[id_field], item)
        return out

    def list_tagged(self, overcloud_id: str | None = None) -> list[TaggedResource]:
        return [TaggedResource(overcloud_id=oc, kind=kind, name=f"{kind} {rid} ({name})")
                for kind, rid, oc, name, _ in self._resources(overcloud_id)]

    def _until_gone(self, what: str, fn: Callable[[], Any], deadline: float, overcloud_id: str) -> None:
        """Call a delete until it is no longer refused for a dependency still going (ENIs of
        terminated instances detach some seconds after); NotFound counts as done."""
        while True:
            try:
                fn()
                return
            except Exception as exc:
                code = error_code(exc) or ""
                if code.endswith(_NOT_FOUND_SUFFIX):
                    return
                if code in DEPENDENCY_CODES and time.monotonic() + self.poll < deadline:
                    with self.stats.waiting():
                        time.sleep(self.poll)
                    continue
                raise self._error(exc, what, overcloud_id=overcloud_id) from None

    def delete_network(self, overcloud_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        res = self._resources(overcloud_id)
        live = [f"{rid} ({name})" for kind, rid, _, name, _ in res if kind == "instance"]
        if live:
            raise UnderCloudError(f"site {self.site}: OverCloud {overcloud_id} still has server(s) {', '.join(live)}: "
                                  "delete them first", site=self.site, overcloud_id=overcloud_id)
        self._delete_all(res, overcloud_id, deadline)
        self._confirm(overcloud_id, deadline, {kind for kind, *_ in res})

    def _delete_all(self, res: list[tuple[str, str, str, str, dict[str, Any]]], overcloud_id: str, deadline: float) -> None:
        """Delete in dependency order: volumes and key pairs, groups, route tables, gateways,
        subnets, VPCs. Only what carries our tags, so a configured VPC/subnet is never touched."""
        ec2 = self.ec2
        by_kind: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for kind, rid, _, _, raw in res:
            by_kind.setdefault(kind, []).append((rid, raw))
        for rid, _ in by_kind.get("volume", []):
            self._until_gone(f"delete volume {rid}", lambda rid=rid: ec2.delete_volume(VolumeId=rid), deadline, overcloud_id)
        for rid, raw in by_kind.get("key-pair", []):
            # by name: moto ignores KeyPairId here (answers success and keeps the key); AWS takes either
            self._until_gone(f"delete key pair {rid}", lambda raw=raw: ec2.delete_key_pair(KeyName=raw["KeyName"]),
                             deadline, overcloud_id)
        for rid, _ in by_kind.get("security-group", []):
            self._until_gone(f"delete security group {rid}", lambda rid=rid: ec2.delete_security_group(GroupId=rid),
                             deadline, overcloud_id)
        for rid, raw in by_kind.get("route-table", []):
            for a in raw.get("Associations", []):
                if not a.get("Main") and a.get("RouteTableAssociationId"):
                    self._until_gone(f"disassociate route table {rid}", lambda a=a: ec2.disassociate_route_table(
                        AssociationId=a["RouteTableAssociationId"]), deadline, overcloud_id)
            self._until_gone(f"delete route table {rid}", lambda rid=rid: ec2.delete_route_table(RouteTableId=rid),
                             deadline, overcloud_id)
        for rid, raw in by_kind.get("internet-gateway", []):
            for a in raw.get("Attachments", []):
                self._until_gone(f"detach internet gateway {rid}", lambda rid=rid, a=a: ec2.detach_internet_gateway(
                    InternetGatewayId=rid, VpcId=a["VpcId"]), deadline, overcloud_id)
            self._until_gone(f"delete internet gateway {rid}", lambda rid=rid: ec2.delete_internet_gateway(
                InternetGatewayId=rid), deadline, overcloud_id)
        for rid, _ in by_kind.get("subnet", []):
            self._until_gone(f"delete subnet {rid}", lambda rid=rid: ec2.delete_subnet(SubnetId=rid), deadline, overcloud_id)
        for rid, _ in by_kind.get("vpc", []):
            self._until_gone(f"delete VPC {rid}", lambda rid=rid: ec2.delete_vpc(VpcId=rid), deadline, overcloud_id)

    def _confirm(self, overcloud_id: str, deadline: float, kinds: set[str]) -> None:
        """Until listing by tag finds nothing of these kinds of the OverCloud (EC2 is eventually
        consistent); only the kinds that were there are asked again."""
        if not kinds:
            return
        with self.stats.waiting():
            while True:
                left = [f"{kind} {rid}" for kind, rid, _, _, _ in self._resources(overcloud_id, kinds)]
                if not left:
                    return
                if time.monotonic() + self.poll > deadline:
                    raise UnderCloudError(f"site {self.site}: OverCloud {overcloud_id}: still listed after deletion: "
                                          f"{', '.join(left)}", site=self.site, overcloud_id=overcloud_id)
                time.sleep(self.poll)

    def sweep(self, overcloud_ids: set[str]) -> list[TaggedResource]:
        gone: list[TaggedResource] = []
        timeout = self.config.delete_timeout
        for oc in sorted(overcloud_ids):
            res = self._resources(oc)
            if not res:
                continue
            instances = [rid for kind, rid, _, _, _ in res if kind == "instance"]
            self.delete_servers(instances, timeout)
            deadline = time.monotonic() + timeout
            rest = self._resources(oc)  # volumes deleted with their instances are no longer listed
            self._delete_all(rest, oc, deadline)
            self._confirm(oc, deadline, {kind for kind, *_ in rest})
            gone += [TaggedResource(overcloud_id=oc, kind=kind, name=f"{kind} {rid} ({name})") for kind, rid, _, name, _ in res]
            logger.info("site %s: swept OverCloud %s (%d resources)", self.site, oc, len(res))
        return gone
