"""AWSProvider against a real moto server (EC2 in server mode on loopback, started here).

What is checked, through boto3 and HTTP for real (no mock of our code):
* a whole OverCloud's life: network, security group rules, key pair, four instances (tags on
  instances and volumes, IMDSv2, user data, the /24), waiters, then delete: nothing left by tag;
* idempotency: ensure_network and create_servers twice make nothing twice; a create cut short
  (two of four made) resumed makes only the two missing;
* sweep by tag, one OverCloud at a time;
* bad credentials (moto's IAM auth switched on), an unreachable endpoint, a missing profile:
  CloudUnavailable with a clear reason and no secret in it or in the log;
* throttling: a fault-injecting HTTP proxy of ours answers 503 RequestLimitExceeded (and 500):
  retried and done; an InvalidParameterValue is not retried; retries used up give CloudUnavailable.
"""

from __future__ import annotations

import logging
import uuid

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ec2lab import FaultProxy, MotoServer
from overcloud.underclouds.base import UnderCloudError
from overcloud.underclouds.cloud.aws import AWSProvider
from overcloud.underclouds.cloud.config import parse_cloud_sites
from overcloud.underclouds.cloud.provider import (
    ACTIVE, TAG_BOX, TAG_BOX_CIDR, TAG_HOST_KEY, TAG_OVERCLOUD, TAG_TOWER, CloudUnavailable, ServerRequest,
    network_name, server_name)

TOWER = "tower-" + uuid.uuid4().hex[:8]
SECRET = "s3cr3t-" + uuid.uuid4().hex  # the lab's secret key: must never show up in a message
ACCESS = "AKIAOVERCLOUDTEST01"


def _pubkey() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture(scope="module")
def moto():
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    """Only the site's credentials file counts; botocore never asks an instance metadata service
    (the network rule: nothing leaves loopback)."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/overcloud-test-aws-config")


def make_site(tmp_path, endpoint: str, *, profile: str = "lab", access: str = ACCESS, secret: str = SECRET, **extra):
    creds = tmp_path / "aws-credentials"
    creds.write_text(f"[lab]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n")
    raw = {"name": "aws-1", "kind": "aws", "region": "us-east-1", "profile": profile, "credentials_file": str(creds),
           "endpoint_url": endpoint, "image": "ami-03cf127a",
           "instance_types": {"small": "t3.micro", "medium": "t3.small", "large": "t3.medium"},
           "network": {"vpc_cidr": "10.91.0.0/16"}, "ssh_cidrs": ["10.91.0.0/16"], "nodeport_cidrs": ["192.0.2.0/24"],
           "box_pool": "10.97.0.0/16", **extra}
    return parse_cloud_sites([raw])[0]


@pytest.fixture
def provider(moto, tmp_path):
    moto.reset()
    p = AWSProvider(make_site(tmp_path, moto.url), TOWER)
    p.poll = 0.2
    yield p


def raw_ec2(url: str):
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=url, aws_access_key_id=ACCESS,
                        aws_secret_access_key=SECRET)


def requests(oc: str, boxes=("p0", "c0", "c1", "c2")) -> list[ServerRequest]:
    out = []
    for i, box in enumerate(boxes):
        tags = {TAG_OVERCLOUD: oc, TAG_TOWER: TOWER, TAG_BOX: box, TAG_HOST_KEY: f"ssh-ed25519 AAAAC3Nza{box}",
                TAG_BOX_CIDR: f"10.97.0.{64 * i}/26"}
        out.append(ServerRequest(overcloud_id=oc, box=box, name=server_name(oc, box), flavor="small",
                                 user_data=f"#cloud-config\nhostname: {box}\n", tags=tags))
    return out


def ours(ec2, oc: str | None = None) -> dict[str, list[str]]:
    """What the raw API lists with our tags (instances not yet terminated)."""
    f = [{"Name": f"tag:{TAG_TOWER}", "Values": [TOWER]}]
    if oc:
        f.append({"Name": f"tag:{TAG_OVERCLOUD}", "Values": [oc]})
    live = [{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]}]
    return {
        "instances": [i["InstanceId"] for r in ec2.describe_instances(Filters=f + live)["Reservations"] for i in r["Instances"]],
        "vpcs": [v["VpcId"] for v in ec2.describe_vpcs(Filters=f)["Vpcs"]],
        "subnets": [s["SubnetId"] for s in ec2.describe_subnets(Filters=f)["Subnets"]],
        "groups": [g["GroupId"] for g in ec2.describe_security_groups(Filters=f)["SecurityGroups"]],
        "key_pairs": [k["KeyPairId"] for k in ec2.describe_key_pairs(Filters=f)["KeyPairs"]],
        "volumes": [v["VolumeId"] for v in ec2.describe_volumes(Filters=f)["Volumes"]],
    }


def nothing(d: dict[str, list[str]]) -> bool:
    return not any(d.values())


def test_overcloud_life_leaves_nothing(provider, moto, caplog):
    caplog.set_level(logging.DEBUG, logger="overcloud")
    ec2 = raw_ec2(moto.url)
    oc = uuid.uuid4().hex
    provider.check()
    lim = provider.limits()
    print("limits:", lim)
    assert lim.max_instances is not None and lim.flavors["small"][0] >= 1

    net = provider.ensure_network(oc, _pubkey())
    assert net.cidr.startswith("10.91.") and net.cidr.endswith("/24") and net.gateway == net.cidr[:-4] + "1"
    assert set(net.ids) >= {"vpc", "subnet", "security_group", "key_pair"}
    provider.allow_wan_peers(oc, ["198.51.100.7/32"])
    provider.allow_wan_peers(oc, ["198.51.100.7/32", "198.51.100.8/32"])  # again, plus one: no error, no duplicate
    group = ec2.describe_security_groups(GroupIds=[net.ids["security_group"]])["SecurityGroups"][0]
    assert group["GroupName"] == network_name(oc)
    rules = {(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")): p for p in group["IpPermissions"]}
    assert [r["CidrIp"] for r in rules[("tcp", 22, 22)]["IpRanges"]] == ["10.91.0.0/16"]
    assert [g["GroupId"] for g in rules[("udp", 4789, 4789)]["UserIdGroupPairs"]] == [group["GroupId"]]
    assert [r["CidrIp"] for r in rules[("tcp", 30000, 32767)]["IpRanges"]] == ["192.0.2.0/24"]
    assert sorted(r["CidrIp"] for r in rules[("udp", 51820, 51820)]["IpRanges"]) == ["198.51.100.7/32", "198.51.100.8/32"]

    before = provider.stats.snapshot()
    made = provider.create_servers(net, requests(oc))
    assert [s.name for s in made] == [server_name(oc, b) for b in ("p0", "c0", "c1", "c2")]
    up = provider.wait_servers([s.id for s in made], timeout=60)
    after = provider.stats.snapshot()
    print(f"create_servers+wait_servers of 4: {after['calls'] - before['calls']} calls, "
          f"{after['wait_s'] - before['wait_s']:.2f} s waiting")
    assert all(s.status == ACTIVE for s in up)
    for s in up:
        assert s.private_address and s.private_address.startswith(net.cidr.rsplit(".", 1)[0] + ".")
        assert s.tags[TAG_OVERCLOUD] == oc and s.tags[TAG_TOWER] == TOWER and s.tags[TAG_HOST_KEY].startswith("ssh-ed25519")
        assert s.box and s.tags[TAG_BOX_CIDR]
    inst = ec2.describe_instances(InstanceIds=[up[0].id])["Reservations"][0]["Instances"][0]
    assert inst["MetadataOptions"]["HttpTokens"] == "required"
    assert inst["InstanceType"] == "t3.micro" and inst["KeyName"] == network_name(oc)
    import base64
    ud = ec2.describe_instance_attribute(InstanceId=up[0].id, Attribute="userData")["UserData"]["Value"]
    assert base64.b64decode(ud).decode() == "#cloud-config\nhostname: p0\n"
    vols = ec2.describe_volumes(Filters=[{"Name": f"tag:{TAG_OVERCLOUD}", "Values": [oc]}])["Volumes"]
    assert len(vols) == 4
    assert {s.name for s in provider.list_servers(oc)} == {s.name for s in up}
    kinds = sorted({r.kind for r in provider.list_tagged(oc)})
    assert kinds == ["instance", "key-pair", "security-group", "subnet", "volume", "vpc"], kinds

    t0 = provider.stats.snapshot()
    provider.delete_servers([s.id for s in up], timeout=60)
    provider.delete_network(oc, timeout=60)
    t1 = provider.stats.snapshot()
    print(f"delete of 4 servers + network: {t1['calls'] - t0['calls']} calls, {t1['wait_s'] - t0['wait_s']:.2f} s waiting")
    print("stats in all:", provider.stats.snapshot())
    assert provider.list_tagged(oc) == []
    assert nothing(ours(ec2)), ours(ec2)
    assert provider.list_servers() == []
    # the account's default VPC (untagged, not ours) is still there
    assert ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    assert SECRET not in caplog.text


def test_idempotent_by_name_and_tag(provider, moto):
    ec2 = raw_ec2(moto.url)
    oc, other = uuid.uuid4().hex, uuid.uuid4().hex
    key = _pubkey()
    net = provider.ensure_network(oc, key)
    assert provider.ensure_network(oc, key) == net  # found by tag, nothing new
    net2 = provider.ensure_network(other, key)
    assert net2.cidr != net.cidr  # each OverCloud its own /24
    assert len(ours(ec2, oc)["vpcs"]) == 1 and len(ours(ec2, oc)["groups"]) == 1 and len(ours(ec2, oc)["key_pairs"]) == 1

    reqs = requests(oc)
    first = provider.create_servers(net, reqs[:2])  # a Tower that died after two of four
    again = provider.create_servers(net, reqs)  # resumed: the two found, two made
    assert [s.id for s in again[:2]] == [s.id for s in first]
    third = provider.create_servers(net, reqs)  # and once more: nothing new
    assert [s.id for s in third] == [s.id for s in again]
    assert len(ours(ec2, oc)["instances"]) == 4
    assert provider.client_token(oc, reqs[0].name) == provider.client_token(oc, reqs[0].name)

    # a server made with the OverCloud's tag but by another Tower is not ours: not reused, not listed
    stranger = AWSProvider(provider.config, "another-tower")
    stranger.poll = 0.2
    s_net = stranger.ensure_network(uuid.uuid4().hex, key)
    assert s_net.cidr not in (net.cidr, net2.cidr)
    assert all(s.tags[TAG_TOWER] == TOWER for s in provider.list_servers())

    provider.sweep({oc, other})
    assert nothing(ours(ec2))
    stranger.sweep({s_net.overcloud_id})


def test_sweep_by_tag(provider, moto):
    ec2 = raw_ec2(moto.url)
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    for oc in (a, b):
        net = provider.ensure_network(oc, _pubkey())
        provider.create_servers(net, requests(oc, ("p0", "c0")))
    assert {r.overcloud_id for r in provider.list_tagged()} == {a, b}
    gone = provider.sweep({a})
    assert {r.overcloud_id for r in gone} == {a}
    assert {"instance", "vpc", "subnet", "security-group", "key-pair"} <= {r.kind for r in gone}
    assert nothing(ours(ec2, a))
    assert len(ours(ec2, b)["instances"]) == 2  # the other OverCloud untouched
    assert provider.sweep({a}) == []  # nothing left: nothing to do
    provider.sweep({b})
    assert nothing(ours(ec2))


def test_delete_network_refuses_while_servers_live(provider):
    oc = uuid.uuid4().hex
    net = provider.ensure_network(oc, _pubkey())
    provider.create_servers(net, requests(oc, ("p0",)))
    with pytest.raises(UnderCloudError, match="still has server"):
        provider.delete_network(oc, timeout=10)
    provider.sweep({oc})


def test_unreachable_endpoint_is_unavailable(tmp_path):
    from servers import free_port
    p = AWSProvider(make_site(tmp_path, f"http://127.0.0.1:{free_port()}"), TOWER)
    with pytest.raises(CloudUnavailable) as e:
        p.check()
    assert "does not answer" in str(e.value) and "aws-1" in str(e.value) and SECRET not in str(e.value)
    assert p.stats.calls == 1  # check() tries once: a site that is down is said so at once


def test_missing_profile_is_unavailable(moto, tmp_path):
    p = AWSProvider(make_site(tmp_path, moto.url, profile="nope"), TOWER)
    with pytest.raises(CloudUnavailable, match="profile 'nope'"):
        p.check()


def test_bad_credentials_are_unavailable(tmp_path, caplog):
    """moto with IAM authentication on (after the 3 calls that make a user and its key): the
    right key works, a wrong secret and an unknown key are refused with a clear reason."""
    caplog.set_level(logging.DEBUG, logger="overcloud")
    server = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}).start()
    try:
        iam = boto3.client("iam", region_name="us-east-1", endpoint_url=server.url, aws_access_key_id="x",
                           aws_secret_access_key="y")
        iam.create_user(UserName="tower")
        iam.put_user_policy(UserName="tower", PolicyName="all", PolicyDocument='{"Version": "2012-10-17", "Statement": '
                            '[{"Effect": "Allow", "Action": "*", "Resource": "*"}]}')
        key = iam.create_access_key(UserName="tower")["AccessKey"]
        good = AWSProvider(make_site(tmp_path, server.url, access=key["AccessKeyId"], secret=key["SecretAccessKey"]), TOWER)
        good.check()
        wrong_secret = SECRET
        for access in (key["AccessKeyId"], "AKIANOSUCHKEY0000000"):
            p = AWSProvider(make_site(tmp_path, server.url, access=access, secret=wrong_secret), TOWER)
            with pytest.raises(CloudUnavailable) as e:
                p.check()
            msg = str(e.value)
            print(msg)
            assert "refused the credentials" in msg and "aws-1" in msg
            assert wrong_secret not in msg and key["SecretAccessKey"] not in msg
            with pytest.raises(CloudUnavailable):  # any other call: the same, never retried
                p.ensure_network(uuid.uuid4().hex, _pubkey())
            assert p.stats.retries == 0
        assert wrong_secret not in caplog.text and key["SecretAccessKey"] not in caplog.text
    finally:
        server.stop()


@pytest.fixture
def proxied(moto, tmp_path):
    moto.reset()
    proxy = FaultProxy(moto.url).start()
    p = AWSProvider(make_site(tmp_path, proxy.url), TOWER)
    p.poll = 0.2
    p.backoff_base = 0.2
    yield p, proxy
    proxy.stop()


def test_throttling_is_retried(proxied, moto):
    p, proxy = proxied
    oc = uuid.uuid4().hex
    proxy.fail("DescribeVpcs", 2, 503, "RequestLimitExceeded", "Request limit exceeded.")
    proxy.fail("CreateSecurityGroup", 1, 500, "InternalError", "An internal error has occurred")
    proxy.fail("RunInstances", 1, 400, "Throttling", "Rate exceeded")
    net = p.ensure_network(oc, _pubkey())
    assert proxy.calls("DescribeVpcs")[:3] == [503, 503, 200]
    assert proxy.calls("CreateSecurityGroup") == [500, 200]
    servers = p.create_servers(net, requests(oc, ("p0",)))
    assert proxy.calls("RunInstances") == [400, 200]
    assert len(ours(raw_ec2(moto.url), oc)["instances"]) == 1  # the retried launch made one instance
    proxy.fail("DescribeInstances", 2, 503, "RequestLimitExceeded")  # the waiter's polls are retried too
    assert p.wait_servers([s.id for s in servers], timeout=30)[0].status == ACTIVE
    assert p.stats.retries == 6, p.stats.snapshot()
    print("with 6 injected faults:", p.stats.snapshot())
    p.sweep({oc})


def test_other_errors_are_not_retried(proxied):
    p, proxy = proxied
    oc = uuid.uuid4().hex
    proxy.fail("CreateSecurityGroup", 1, 400, "InvalidParameterValue", "Value for parameter GroupName is invalid")
    with pytest.raises(UnderCloudError, match="InvalidParameterValue") as e:
        p.ensure_network(oc, _pubkey())
    assert not isinstance(e.value, CloudUnavailable)
    assert proxy.calls("CreateSecurityGroup") == [400]  # exactly one attempt
    assert p.stats.retries == 0
    p.ensure_network(oc, _pubkey())  # the next call (a resumed task) finds the VPC and goes on
    p.sweep({oc})


def test_retries_used_up_mean_unavailable(proxied):
    p, proxy = proxied
    p.attempts = 3
    proxy.fail("DescribeVpcs", 100, 503, "RequestLimitExceeded", "Request limit exceeded.")
    with pytest.raises(CloudUnavailable, match="RequestLimitExceeded"):
        p.ensure_network(uuid.uuid4().hex, _pubkey())
    assert proxy.calls("DescribeVpcs") == [503, 503, 503]


def test_configured_vpc_and_subnet_are_used_never_deleted(moto, tmp_path):
    moto.reset()
    ec2 = raw_ec2(moto.url)
    vpc = ec2.create_vpc(CidrBlock="10.92.0.0/16")["Vpc"]["VpcId"]  # the user's, untagged
    sub = ec2.create_subnet(VpcId=vpc, CidrBlock="10.92.7.0/24")["Subnet"]["SubnetId"]
    in_vpc = AWSProvider(make_site(tmp_path, moto.url, network={"vpc_cidr": "10.92.0.0/16", "vpc_id": vpc}), TOWER)
    in_sub = AWSProvider(make_site(tmp_path, moto.url, network={"vpc_id": vpc, "subnet_id": sub}), TOWER)
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    net_a = in_vpc.ensure_network(a, _pubkey())
    assert net_a.ids["vpc"] == vpc and net_a.cidr != "10.92.7.0/24" and net_a.cidr.startswith("10.92.")
    net_b = in_sub.ensure_network(b, _pubkey())
    assert net_b.ids["subnet"] == sub and net_b.cidr == "10.92.7.0/24"
    for p, net, oc in ((in_vpc, net_a, a), (in_sub, net_b, b)):
        p.poll = 0.2
        servers = p.wait_servers([s.id for s in p.create_servers(net, requests(oc, ("p0",)))], timeout=30)
        assert servers[0].private_address.startswith(net.cidr.rsplit(".", 1)[0] + ".")
        p.sweep({oc})
    assert nothing(ours(ec2))
    assert ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"] and ec2.describe_subnets(SubnetIds=[sub])["Subnets"]


def test_image_by_name(moto, tmp_path):
    moto.reset()
    name = "ubuntu/images/hvm-ssd/ubuntu-xenial-16.04-amd64-server-20170721"
    p = AWSProvider(make_site(tmp_path, moto.url, image=name), TOWER)
    oc = uuid.uuid4().hex
    net = p.ensure_network(oc, _pubkey())
    s = p.create_servers(net, requests(oc, ("p0",)))[0]
    inst = raw_ec2(moto.url).describe_instances(InstanceIds=[s.id])["Reservations"][0]["Instances"][0]
    assert inst["ImageId"] == "ami-785db401"
    p.sweep({oc})
    missing = AWSProvider(make_site(tmp_path, moto.url, image="no-such-image-name"), TOWER)
    with pytest.raises(UnderCloudError, match="no image named 'no-such-image-name'"):
        missing.create_servers(net, requests(oc, ("p0",)))


def test_run_instances_waits_for_a_group_ec2_does_not_see_yet(proxied, moto):
    """EC2 is eventually consistent: RunInstances just after CreateSecurityGroup may answer
    InvalidGroup.NotFound. Called again (same ClientToken) until it sees it; not a throttling retry."""
    p, proxy = proxied
    oc = uuid.uuid4().hex
    net = p.ensure_network(oc, _pubkey())
    proxy.fail("RunInstances", 2, 400, "InvalidGroup.NotFound", "The security group does not exist")
    p.create_servers(net, requests(oc, ("p0",)))
    assert proxy.calls("RunInstances") == [400, 400, 200]
    assert p.stats.retries == 0 and p.stats.wait_s >= 2 * p.poll
    assert len(ours(raw_ec2(moto.url), oc)["instances"]) == 1
    p.propagation_s = 0.5  # and not forever
    proxy.fail("RunInstances", 100, 400, "InvalidGroup.NotFound", "The security group does not exist")
    with pytest.raises(UnderCloudError, match="InvalidGroup.NotFound"):
        p.create_servers(net, requests(oc, ("c9",)))
    p.sweep({oc})


def test_public_ip_adds_gateway_route_and_addresses(moto, tmp_path):
    """network.public_ip: an internet gateway and a route table 0.0.0.0/0 -> it in the OverCloud's
    VPC, a public IP per instance; all tagged and deleted with the OverCloud."""
    moto.reset()
    ec2 = raw_ec2(moto.url)
    p = AWSProvider(make_site(tmp_path, moto.url, network={"vpc_cidr": "10.91.0.0/16", "public_ip": True}), TOWER)
    p.poll = 0.2
    oc = uuid.uuid4().hex
    net = p.ensure_network(oc, _pubkey())
    assert p.ensure_network(oc, _pubkey()) == net  # idempotent with the gateway too
    igw = ec2.describe_internet_gateways(InternetGatewayIds=[net.ids["internet_gateway"]])["InternetGateways"][0]
    assert [a["VpcId"] for a in igw["Attachments"]] == [net.ids["vpc"]]
    rtb = ec2.describe_route_tables(RouteTableIds=[net.ids["route_table"]])["RouteTables"][0]
    assert any(r.get("DestinationCidrBlock") == "0.0.0.0/0" and r.get("GatewayId") == igw["InternetGatewayId"]
               for r in rtb["Routes"])
    assert [a["SubnetId"] for a in rtb["Associations"]] == [net.ids["subnet"]]
    s = p.wait_servers([x.id for x in p.create_servers(net, requests(oc, ("p0",)))], timeout=30)[0]
    print("public address in moto:", s.public_address)
    assert s.public_address
    assert {"internet-gateway", "route-table"} <= {r.kind for r in p.list_tagged(oc)}
    p.delete_servers([s.id], timeout=30)
    p.delete_network(oc, timeout=30)
    assert p.list_tagged(oc) == []
    assert not ec2.describe_internet_gateways(Filters=[{"Name": f"tag:{TAG_TOWER}", "Values": [TOWER]}])["InternetGateways"]
