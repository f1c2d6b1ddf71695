"""The network of an OverCloud on an ``aws`` site: VPC and subnet (or the configured ones), the
security group's rules, the key pair, and (``network.public_ip``) an internet gateway and route."""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from overcloud.underclouds.base import UnderCloudError
from overcloud.underclouds.cloud.aws_calls import AWSBase
from overcloud.underclouds.cloud.provider import (
    NODEPORT_RANGE, TAG_OVERCLOUD, TAG_TOWER, VXLAN_PORT, WG_PORT, CloudQuotaExceeded, NetworkInfo, network_name)

if TYPE_CHECKING:  # pragma: no cover
    from overcloud.underclouds.cloud.config import CloudSiteConfig

logger = logging.getLogger("overcloud.underclouds.cloud.aws")

__all__ = ["AWSNetwork"]

_NOT_FOUND_SUFFIX = ".NotFound"
_TAG_ROLE = "overcloud.io/role"  # what a resource is for, on VPCs/subnets (helps a person reading the console)


class AWSNetwork(AWSBase):
    """ensure_network and allow_wan_peers; /24s are chosen and made under one lock."""

    def __init__(self, config: "CloudSiteConfig", tower_id: str):
        super().__init__(config, tower_id)
        self._alloc_lock = threading.Lock()  # choosing and making a /24

    # -- network ----------------------------------------------------------------------------

    def _find_one(self, op: str, key: str, overcloud_id: str, what: str, extra: list[dict[str, Any]] | None = None) -> dict | None:
        resp = self._call(f"find the {what} of OverCloud {overcloud_id}", op, overcloud_id=overcloud_id,
                          Filters=self._tag_filters(overcloud_id) + (extra or []))
        items = resp.get(key, [])
        return items[0] if items else None

    def _free_slash24(self, pool: str, used: Iterable[str]) -> ipaddress.IPv4Network:
        taken = [ipaddress.IPv4Network(c) for c in used]
        for net in ipaddress.IPv4Network(pool).subnets(new_prefix=24):
            if not any(net.overlaps(t) for t in taken):
                return net
        raise CloudQuotaExceeded(f"site {self.site}: no free /24 left in network.vpc_cidr {pool}",
                                 {"networks": {"limit": 2 ** (24 - ipaddress.IPv4Network(pool).prefixlen),
                                               "used": len(taken), "asked": 1}}, site=self.site)

    def ensure_network(self, overcloud_id: str, public_key: str) -> NetworkInfo:
        name = network_name(overcloud_id)
        net = self.config.network
        ids: dict[str, str] = {}
        with self._alloc_lock:
            if net.subnet_id:
                sub = self._call("read the configured subnet", "describe_subnets", SubnetIds=[net.subnet_id])["Subnets"][0]
                ids["vpc"], ids["subnet"], cidr = sub["VpcId"], sub["SubnetId"], sub["CidrBlock"]
            else:
                vpc_id = net.vpc_id
                if vpc_id is None:
                    vpc = self._find_one("describe_vpcs", "Vpcs", overcloud_id, "VPC")
                    if vpc is None:
                        every = self._call("list the VPCs", "describe_vpcs").get("Vpcs", [])
                        used = [a["CidrBlock"] for v in every for a in v.get("CidrBlockAssociationSet", [])
                                if a.get("CidrBlockState", {}).get("State") in (None, "associated", "associating")]
                        used += [v["CidrBlock"] for v in every]
                        block = self._free_slash24(net.vpc_cidr, used)
                        vpc = self._call(f"create the VPC {name}", "create_vpc", overcloud_id=overcloud_id,
                                         CidrBlock=str(block),
                                         TagSpecifications=[self._tag_spec("vpc", overcloud_id, name, {_TAG_ROLE: "vpc"})])["Vpc"]
                        logger.info("site %s: VPC %s (%s) made for OverCloud %s", self.site, vpc["VpcId"], block, overcloud_id)
                    vpc_id = vpc["VpcId"]
                    ids["vpc"] = vpc_id
                else:
                    ids["vpc"] = vpc_id
                sub = self._find_one("describe_subnets", "Subnets", overcloud_id, "subnet")
                if sub is None:
                    if net.vpc_id is None:
                        block = ipaddress.IPv4Network(vpc["CidrBlock"])
                    else:
                        others = self._call("list the subnets of the VPC", "describe_subnets",
                                            Filters=[{"Name": "vpc-id", "Values": [vpc_id]}]).get("Subnets", [])
                        block = self._free_slash24(net.vpc_cidr, [s["CidrBlock"] for s in others])
                    sub = self._call(f"create the subnet {name}", "create_subnet", overcloud_id=overcloud_id, VpcId=vpc_id,
                                     CidrBlock=str(block),
                                     TagSpecifications=[self._tag_spec("subnet", overcloud_id, name, {_TAG_ROLE: "subnet"})])["Subnet"]
                ids["subnet"], cidr = sub["SubnetId"], sub["CidrBlock"]
        if net.public_ip and not net.vpc_id and not net.subnet_id:  # a configured VPC's routing is its owner's
            ids.update(self._ensure_internet(overcloud_id, ids["vpc"], ids["subnet"]))
        ids["security_group"] = self._ensure_group(overcloud_id, ids["vpc"])
        ids["key_pair"] = self._ensure_key_pair(overcloud_id, public_key)
        gateway = str(next(ipaddress.IPv4Network(cidr).hosts()))  # AWS: the VPC router is the subnet's .1
        return NetworkInfo(overcloud_id=overcloud_id, cidr=cidr, gateway=gateway, ids=ids)

    def _ensure_internet(self, overcloud_id: str, vpc_id: str, subnet_id: str) -> dict[str, str]:
        """An internet gateway and a route table 0.0.0.0/0 -> it for the subnet (``network.public_ip``)."""
        name = network_name(overcloud_id)
        igw = self._find_one("describe_internet_gateways", "InternetGateways", overcloud_id, "internet gateway")
        if igw is None:
            igw = self._call("create the internet gateway", "create_internet_gateway", overcloud_id=overcloud_id,
                             TagSpecifications=[self._tag_spec("internet-gateway", overcloud_id, name)])["InternetGateway"]
        if not any(a.get("VpcId") == vpc_id for a in igw.get("Attachments", [])):
            self._call("attach the internet gateway", "attach_internet_gateway", overcloud_id=overcloud_id,
                       InternetGatewayId=igw["InternetGatewayId"], VpcId=vpc_id)
        rtb = self._find_one("describe_route_tables", "RouteTables", overcloud_id, "route table")
        if rtb is None:
            rtb = self._call("create the route table", "create_route_table", overcloud_id=overcloud_id, VpcId=vpc_id,
                             TagSpecifications=[self._tag_spec("route-table", overcloud_id, name)])["RouteTable"]
        if not any(r.get("DestinationCidrBlock") == "0.0.0.0/0" for r in rtb.get("Routes", [])):
            self._call("add the default route", "create_route", overcloud_id=overcloud_id, RouteTableId=rtb["RouteTableId"],
                       DestinationCidrBlock="0.0.0.0/0", GatewayId=igw["InternetGatewayId"])
        if not any(a.get("SubnetId") == subnet_id for a in rtb.get("Associations", [])):
            self._call("associate the route table", "associate_route_table", overcloud_id=overcloud_id,
                       RouteTableId=rtb["RouteTableId"], SubnetId=subnet_id)
        return {"internet_gateway": igw["InternetGatewayId"], "route_table": rtb["RouteTableId"]}

    def _group_rules(self, group_id: str, wan_cidrs: Iterable[str] = ()) -> list[dict[str, Any]]:
        c = self.config
        rules = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": x} for x in c.ssh_cidrs]},
                 {"IpProtocol": "udp", "FromPort": VXLAN_PORT, "ToPort": VXLAN_PORT,
                  "UserIdGroupPairs": [{"GroupId": group_id}]}]
        if c.nodeport_cidrs:
            rules.append({"IpProtocol": "tcp", "FromPort": NODEPORT_RANGE[0], "ToPort": NODEPORT_RANGE[1],
                          "IpRanges": [{"CidrIp": x} for x in c.nodeport_cidrs]})
        wan = list(wan_cidrs)
        if wan:
            rules.append({"IpProtocol": "udp", "FromPort": WG_PORT, "ToPort": WG_PORT,
                          "IpRanges": [{"CidrIp": x} for x in wan]})
        return rules

    def _authorize_missing(self, group: dict[str, Any], wanted: list[dict[str, Any]], overcloud_id: str) -> None:
        """Authorize the (protocol, ports, source) pairs the group lacks; one call."""
        have: set[tuple] = set()
        for p in group.get("IpPermissions", []):
            key = (p.get("IpProtocol"), p.get("FromPort"), p.get("ToPort"))
            have |= {key + (r["CidrIp"],) for r in p.get("IpRanges", [])}
            have |= {key + (g["GroupId"],) for g in p.get("UserIdGroupPairs", [])}
        missing = []
        for p in wanted:
            key = (p["IpProtocol"], p["FromPort"], p["ToPort"])
            ranges = [r for r in p.get("IpRanges", []) if key + (r["CidrIp"],) not in have]
            pairs = [g for g in p.get("UserIdGroupPairs", []) if key + (g["GroupId"],) not in have]
            if ranges or pairs:
                q = {"IpProtocol": p["IpProtocol"], "FromPort": p["FromPort"], "ToPort": p["ToPort"]}
                if ranges:
                    q["IpRanges"] = ranges
                if pairs:
                    q["UserIdGroupPairs"] = pairs
                missing.append(q)
        if missing:
            # a rule another call just added answers InvalidPermission.Duplicate: fine
            self._call("open the security group's ports", "authorize_security_group_ingress", overcloud_id=overcloud_id,
                       ignore=(".Duplicate",), GroupId=group["GroupId"], IpPermissions=missing)

    def _ensure_group(self, overcloud_id: str, vpc_id: str) -> str:
        name = network_name(overcloud_id)
        group = self._find_one("describe_security_groups", "SecurityGroups", overcloud_id, "security group",
                               [{"Name": "vpc-id", "Values": [vpc_id]}])
        if group is None:
            made = self._call(f"create the security group {name}", "create_security_group", overcloud_id=overcloud_id,
                              GroupName=name, VpcId=vpc_id,
                              Description=f"OverCloud {overcloud_id} (Tower {self.tower_id})",
                              TagSpecifications=[self._tag_spec("security-group", overcloud_id, name)])
            group = {"GroupId": made["GroupId"], "IpPermissions": []}
        self._authorize_missing(group, self._group_rules(group["GroupId"]), overcloud_id)
        return group["GroupId"]

    def _ensure_key_pair(self, overcloud_id: str, public_key: str) -> str:
        name = network_name(overcloud_id)
        resp = self._call("find the key pair", "describe_key_pairs", overcloud_id=overcloud_id,
                          ignore=(_NOT_FOUND_SUFFIX,), KeyNames=[name])
        for kp in (resp or {}).get("KeyPairs", []):
            tags = {t["Key"]: t["Value"] for t in kp.get("Tags", [])}
            if tags.get(TAG_TOWER) != self.tower_id or tags.get(TAG_OVERCLOUD) != overcloud_id:
                raise UnderCloudError(f"site {self.site}: a key pair named {name} exists that is not this OverCloud's "
                                      "(no matching tags); delete it or use another account", site=self.site,
                                      overcloud_id=overcloud_id)
            return kp["KeyPairId"]
        made = self._call(f"import the key pair {name}", "import_key_pair", overcloud_id=overcloud_id, KeyName=name,
                          PublicKeyMaterial=public_key.strip().encode(),
                          TagSpecifications=[self._tag_spec("key-pair", overcloud_id, name)])
        return made["KeyPairId"]

    def allow_wan_peers(self, overcloud_id: str, cidrs: list[str]) -> None:
        group = self._find_one("describe_security_groups", "SecurityGroups", overcloud_id, "security group")
        if group is None:
            raise UnderCloudError(f"site {self.site}: OverCloud {overcloud_id} has no security group here (ensure_network first)",
                                  site=self.site, overcloud_id=overcloud_id)
        wanted = [r for r in self._group_rules(group["GroupId"], cidrs) if r["FromPort"] == WG_PORT]
        self._authorize_missing(group, wanted, overcloud_id)
