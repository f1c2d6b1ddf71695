"""Cloud sites (kinds openstack and aws) in OVERCLOUD_SITES_FILE / OVERCLOUD_SITES: read and checked
before any API call, with messages naming the site and field; they join the Tower's settings, and
the seed's provider names and the heterogeneous body across kinds resolve to them."""

from __future__ import annotations

import pytest

from overcloud.api.requests import Sites, parse_create
from overcloud.config import Settings
from overcloud.underclouds.cloud.config import (
    SizeNotMapped,
    check_against_ssh,
    load_cloud_sites,
    load_cloud_sites_file,
)
from overcloud.underclouds.ssh.sites import SiteConfigError

OPENSTACK = """\
- name: openstack-1
  kind: openstack
  cloud: overcloud-lab
  clouds_file: clouds.yaml
  region: RegionOne
  image: debian-12-overcloud
  flavors: {small: m1.small, medium: m1.medium, large: m1.large}
  network: {cidr_pool: 10.90.0.0/16, external_network: null, floating_ip: false}
  ssh_cidrs: [10.90.0.0/16]
  nodeport_cidrs: []
  user: overcloud
  box_pool: 10.96.0.0/16
  max_servers: 20
  labels: {overcloud.io/tier: cloud}
"""
AWS = """\
- name: aws-1
  kind: aws
  region: us-east-1
  profile: lab
  credentials_file: aws-credentials
  endpoint_url: http://127.0.0.1:5000
  image: ami-12c6146b
  instance_types: {small: t3.micro, medium: t3.small, large: t3.medium}
  network: {vpc_cidr: 10.91.0.0/16, vpc_id: null, subnet_id: null}
  ssh_cidrs: [10.91.0.0/16]
  box_pool: 10.97.0.0/16
  labels: {overcloud.io/tier: edge}
"""


def _files(tmp_path, text):
    (tmp_path / "clouds.yaml").write_text("clouds: {}\n")
    (tmp_path / "aws-credentials").write_text("[lab]\n")
    (tmp_path / "sites.yaml").write_text(text)
    return tmp_path / "sites.yaml"


def test_both_kinds_are_read_with_paths_from_the_sites_files_directory(tmp_path):
    sites = load_cloud_sites_file(_files(tmp_path, OPENSTACK + AWS))
    os_, aws = sites
    assert (os_.name, os_.kind, os_.cloud, os_.region, os_.image) == ("openstack-1", "openstack", "overcloud-lab", "RegionOne", "debian-12-overcloud")
    assert os_.clouds_file == tmp_path / "clouds.yaml"
    assert os_.flavors == {"small": "m1.small", "medium": "m1.medium", "large": "m1.large"}
    assert os_.network.pool == "10.90.0.0/16" and not os_.network.floating_ip
    assert (aws.kind, aws.region, aws.profile, aws.endpoint_url) == ("aws", "us-east-1", "lab", "http://127.0.0.1:5000")
    assert aws.credentials_file == tmp_path / "aws-credentials"
    assert aws.flavors["small"] == "t3.micro" and aws.network.pool == "10.91.0.0/16"
    assert aws.cloud_flavor("medium") == "t3.small"
    assert (aws.user, aws.max_servers, aws.ssh_cidrs, aws.box_pool) == ("overcloud", 20, ("10.91.0.0/16",), "10.97.0.0/16")


@pytest.mark.parametrize("edit, words", [
    (("  box_pool: 10.96.0.0/16\n", "  box_pool: 10.96.0.0/16\n  flavour: x\n"), ["site 'openstack-1'", "unknown field", "flavour"]),
    (("  network: {cidr_pool: 10.90.0.0/16, external_network: null, floating_ip: false}\n",
      "  network: {cidr_pool: 10.90.0.0/16, vpc_id: vpc-1}\n"), ["site 'openstack-1'", "network.vpc_id", "kind openstack"]),
    (("  cloud: overcloud-lab\n", "  cloud: overcloud-lab\n  password: hunter2\n"), ["site 'openstack-1'", "password", "secret", "clouds.yaml"]),
    (("  ssh_cidrs: [10.90.0.0/16]\n", ""), ["site 'openstack-1'", "ssh_cidrs is missing"]),
    (("  box_pool: 10.96.0.0/16\n", "  box_pool: 10.90.128.0/17\n"), ["box_pool 10.90.128.0/17 overlaps", "10.90.0.0/16"]),
    (("  box_pool: 10.96.0.0/16\n", "  box_pool: 10.96.0.0/27\n"), ["box_pool 10.96.0.0/27 is too small"]),
    (("  user: overcloud\n", "  user: root\n"), ["user 'root'", "other than root"]),
    (("  cloud: overcloud-lab\n", ""), ["cloud is missing", "clouds.yaml"]),
    (("  flavors: {small: m1.small, medium: m1.medium, large: m1.large}\n", "  flavors: {tiny: m1.tiny}\n"),
     ["flavors", "'tiny' is not one of our sizes"]),
    (("  clouds_file: clouds.yaml\n", "  clouds_file: nowhere.yaml\n"), ["clouds_file", "nowhere.yaml", "does not exist"]),
    (("  network: {cidr_pool: 10.90.0.0/16, external_network: null, floating_ip: false}\n",
      "  network: {cidr_pool: 10.90.0.0/16, floating_ip: true}\n"), ["floating_ip needs network.external_network"]),
])
def test_an_openstack_site_that_cannot_be_used_is_refused_naming_what_to_fix(tmp_path, edit, words):
    old, new = edit
    assert old in OPENSTACK
    with pytest.raises(SiteConfigError) as err:
        load_cloud_sites_file(_files(tmp_path, OPENSTACK.replace(old, new)))
    for w in words:
        assert w in str(err.value)
    assert "hunter2" not in str(err.value)
    assert str(tmp_path / "sites.yaml") in str(err.value)


@pytest.mark.parametrize("edit, words", [
    (("  profile: lab\n", "  profile: lab\n  aws_secret_access_key: wJalrXUtnFEMI\n"),
     ["site 'aws-1'", "aws_secret_access_key", "secret", "credential chain"]),
    (("  region: us-east-1\n", ""), ["site 'aws-1'", "region is missing"]),
    (("  instance_types: {small: t3.micro, medium: t3.small, large: t3.medium}\n", ""), ["instance_types is missing", "t3.micro"]),
    (("  network: {vpc_cidr: 10.91.0.0/16, vpc_id: null, subnet_id: null}\n", "  network: {}\n"), ["network.vpc_cidr is missing"]),
    (("  network: {vpc_cidr: 10.91.0.0/16, vpc_id: null, subnet_id: null}\n",
      "  network: {vpc_cidr: 10.91.0.0/16, public_ip: maybe}\n"), ["network.public_ip must be true or false"]),
    (("  endpoint_url: http://127.0.0.1:5000\n", "  endpoint_url: 127.0.0.1:5000\n"), ["endpoint_url", "http(s) URL"]),
    (("  image: ami-12c6146b\n", ""), ["image is missing", "AMI"]),
    (("  flavors", "  flavors"), []),
])
def test_an_aws_site_that_cannot_be_used_is_refused_naming_what_to_fix(tmp_path, edit, words):
    old, new = edit
    if not words:  # openstack's flavors field on an aws site
        text = AWS + "  flavors: {small: m1.small}\n"
        words = ["site 'aws-1'", "unknown field", "flavors", "kind aws"]
    else:
        assert old in AWS
        text = AWS.replace(old, new)
    with pytest.raises(SiteConfigError) as err:
        load_cloud_sites_file(_files(tmp_path, text))
    for w in words:
        assert w in str(err.value)
    assert "wJalrXUtnFEMI" not in str(err.value)


def test_box_pools_are_unique_across_cloud_sites_and_ssh_hosts(tmp_path):
    with pytest.raises(SiteConfigError, match="box_pool 10.96.0.0/16 overlaps 10.96.0.0/16 of site 'openstack-1'"):
        load_cloud_sites_file(_files(tmp_path, OPENSTACK + AWS.replace("10.97.0.0/16", "10.96.0.0/16")))

    class Host:
        name, box_cidr = "och-a1", "10.97.3.0/24"

    class Site:
        name, hosts = "ssh-a", [Host()]

    sites = load_cloud_sites_file(_files(tmp_path, AWS))
    with pytest.raises(SiteConfigError, match="box_pool 10.97.0.0/16 overlaps box_cidr 10.97.3.0/24 of ssh host 'och-a1'"):
        check_against_ssh(sites, [Site()])


def test_a_size_the_site_does_not_map_names_what_to_add(tmp_path):
    text = AWS.replace("{small: t3.micro, medium: t3.small, large: t3.medium}", "{small: t3.micro}")
    site = load_cloud_sites(text.replace("  credentials_file: aws-credentials\n", ""))[0]
    with pytest.raises(SizeNotMapped) as err:
        site.cloud_flavor("large")
    assert "site aws-1 has no large size" in str(err.value) and "instance_types" in str(err.value)


def test_cloud_sites_join_the_settings_and_the_seed_bodies_resolve_to_them(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERCLOUD_SITES_FILE", str(_files(tmp_path, OPENSTACK + AWS)))
    monkeypatch.delenv("OVERCLOUD_SITES", raising=False)
    s = Settings(state_dir=tmp_path / "state")
    assert [(x.name, x.kind) for x in s.sites] == [("local-a", "local"), ("local-b", "local"),
                                                  ("openstack-1", "openstack"), ("aws-1", "aws")]
    assert s.sites[3].labels == {"overcloud.io/tier": "edge"}
    sites = Sites({x.name: x.kind for x in s.sites})
    plan = parse_create({"provider": "OpenStack", "number": "3", "size": "m1.small"}, sites, 30)
    assert (plan.post_site, [(p.site, p.clusters) for p in plan.sites]) == ("openstack-1", [("openstack-1", 3)])
    plan = parse_create({"provider": "aws", "number": "1", "size": "m1.small"}, sites, 30)
    assert plan.post_site == "aws-1"
    plan = parse_create({"provider": "heterogeneous", "openstack-1": {"number": "2", "size": "m1.small", "post": "yes"},
                         "aws-1": {"number": "1", "size": "m1.medium"}}, sites, 30)
    assert plan.post_site == "openstack-1"
    assert [(p.site, p.clusters, p.size) for p in plan.sites] == [("openstack-1", 2, "m1.small"), ("aws-1", 1, "m1.medium")]
    assert [(b["name"], b["site"]) for b in plan.box_specs("0" * 32)] == [
        ("p0", "openstack-1"), ("c1", "openstack-1"), ("c2", "openstack-1"), ("c3", "aws-1")]


def test_cloud_sites_in_overcloud_sites_json_are_read_too(monkeypatch):
    import json

    import yaml

    raw = yaml.safe_load(AWS)
    raw[0].pop("credentials_file")
    monkeypatch.delenv("OVERCLOUD_SITES_FILE", raising=False)
    monkeypatch.setenv("OVERCLOUD_SITES", json.dumps(raw))
    s = Settings()
    assert [(x.name, x.kind) for x in s.sites] == [("aws-1", "aws")]
    assert [c.name for c in s.cloud_site_configs()] == ["aws-1"]
