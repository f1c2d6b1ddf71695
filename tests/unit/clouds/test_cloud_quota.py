"""A cloud site's quota is checked before anything is made: the site's max_servers and the cloud's
instances, vCPUs and RAM, with the numbers (the API answers 429 with them); and the retry helper
every provider uses retries only what its predicate calls throttling or a server error, with a
capped exponential backoff, counting calls and seconds waited.

The cloud here is moto's EC2 in-process (``mock_aws``) behind the real AWSProvider, and the site's
world is a real SSHUnderCloud with no ssh site."""

from __future__ import annotations

import pytest

from overcloud.underclouds.cloud.config import load_cloud_sites
from overcloud.underclouds.cloud.provider import (
    CallStats,
    CloudQuotaExceeded,
    CloudUnavailable,
    Limits,
    backoff_delay,
    call_with_retries,
    connection_retryable,
    http_status_retryable,
)
from overcloud.underclouds.cloud.site import CloudSite, MissingProvider, provider_class, quota_message

SITE = """\
- name: aws-1
  kind: aws
  region: us-east-1
  image: ami-12c6146b
  instance_types: {small: t3.micro, medium: t3.small, large: t3.medium}
  network: {vpc_cidr: 10.91.0.0/16}
  ssh_cidrs: [10.91.0.0/16]
  box_pool: 10.97.0.0/16
  max_servers: 3
"""


@pytest.fixture
def world(tmp_path):
    from overcloud.underclouds.ssh.driver import SSHUnderCloud

    w = SSHUnderCloud([], state_dir=tmp_path / "ssh", tower_id="0123456789abcdef", seal=lambda s: s, unseal=lambda s: s)
    yield w
    w.close()


@pytest.fixture
def aws_site(world, tmp_path, monkeypatch):
    import moto  # a dependency of the project (pyproject): make install brings it
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with moto.mock_aws():
        config = load_cloud_sites(SITE)[0]
        provider = provider_class("aws")(config, "0123456789abcdef")
        site = CloudSite(world, config, provider, client_key=tmp_path / "id", client_public="ssh-ed25519 AAAA")
        site.start(lambda: set())
        yield site


def test_max_servers_refuses_before_anything_is_made_with_the_numbers(aws_site):
    assert aws_site.unavailable is None
    with pytest.raises(CloudQuotaExceeded) as err:
        aws_site.check_create(["small"] * 4)
    e = err.value
    assert e.site == "aws-1"
    assert e.numbers["servers"] == {"limit": 3, "used": 0, "asked": 4}
    assert "site aws-1" in str(e) and "3" in str(e) and "4 asked" in str(e) and "max_servers" in str(e)
    assert aws_site.provider.list_tagged() == []  # nothing was made
    aws_site.check_create(["small"] * 3)  # fits: no error, still nothing made
    assert aws_site.provider.list_tagged() == []


def test_an_acquire_over_quota_makes_nothing(aws_site):
    from overcloud.underclouds.base import BoxSpec, resolve_flavor

    oc = "ab" * 16
    specs = [BoxSpec(oc, n, "cluster", "aws-1", resolve_flavor("small")) for n in ("p0", "c1", "c2", "c3")]
    with pytest.raises(CloudQuotaExceeded) as err:
        aws_site.acquire(specs)
    assert err.value.numbers["servers"]["asked"] == 4
    assert aws_site.provider.list_tagged() == []


def test_the_clouds_own_limits_are_checked_with_vcpus_and_ram():
    """check_quota's arithmetic on the cloud's Limits (the numbers a real account would give)."""
    numbers = {"instances": {"limit": 10, "used": 8, "asked": 4}, "cores": {"limit": 16, "used": 14, "asked": 8}}
    text = quota_message("openstack-1", "openstack", numbers)
    assert text.startswith("site openstack-1: the quota cannot hold this OverCloud's servers")
    assert "instances: 8 of 10 used, 4 asked" in text and "vCPUs: 14 of 16 used, 8 asked" in text
    assert "OpenStack project" in text
    assert Limits().flavors == {}


def test_an_unreachable_endpoint_marks_the_site_unavailable_with_the_reason(world, tmp_path, monkeypatch):
    import socket

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "secret-never-shown"}.items():
        monkeypatch.setenv(k, v)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = load_cloud_sites(SITE + f"  endpoint_url: http://127.0.0.1:{port}\n")[0]
    site = CloudSite(world, config, provider_class("aws")(config, "0123456789abcdef"), client_key=tmp_path / "id",
                     client_public="ssh-ed25519 AAAA")
    site.start(lambda: set())
    assert site.unavailable and "secret-never-shown" not in site.unavailable
    with pytest.raises(CloudUnavailable) as err:
        site.check_create(["small"])
    assert "site aws-1" in str(err.value) and "unavailable" in str(err.value)
    d = site.describe(wait=1.0)
    assert d["available"] is False and not d["healthy"] and d["reason"] == site.unavailable
    assert any("unavailable" in p for p in d["problems"])
    assert site.quota().max_boxes == 0 and site.site_tagged() == []


def test_a_provider_that_cannot_be_loaded_makes_its_site_unavailable(world, tmp_path):
    config = load_cloud_sites(SITE)[0]
    site = CloudSite(world, config, MissingProvider(config, "0123456789abcdef", "the aws provider cannot be loaded (x)"),
                     client_key=tmp_path / "id", client_public="ssh-ed25519 AAAA")
    site.start(lambda: set())
    assert site.unavailable == "the aws provider cannot be loaded (x)"


# -- retries ------------------------------------------------------------------------------------


class Throttled(Exception):
    status = 429


class Refused(Exception):
    status = 400


def _retryable(exc):
    return http_status_retryable(getattr(exc, "status", None)) or connection_retryable(exc)


def test_throttling_and_server_errors_are_retried_with_capped_backoff():
    stats, sleeps, n = CallStats(), [], [0]
    errors = [Throttled(), ConnectionResetError(), Throttled(), Throttled()]

    def call():
        n[0] += 1
        if errors:
            raise errors.pop(0)
        return "ok"

    assert call_with_retries(call, retryable=_retryable, stats=stats, base=1.0, cap=2.5, sleep=sleeps.append,
                             rng=lambda: 1.0) == "ok"
    assert n[0] == 5 and stats.calls == 5 and stats.retries == 4
    assert sleeps == [1.0, 2.0, 2.5, 2.5]  # doubling, capped
    assert stats.wait_s == pytest.approx(8.0)


def test_other_errors_are_raised_at_once_and_retries_end():
    stats, sleeps = CallStats(), []

    def refused():
        raise Refused("bad request")

    with pytest.raises(Refused):
        call_with_retries(refused, retryable=_retryable, stats=stats, sleep=sleeps.append)
    assert stats.calls == 1 and sleeps == []

    def always():
        raise Throttled()

    with pytest.raises(Throttled):
        call_with_retries(always, retryable=_retryable, stats=stats, attempts=3, sleep=sleeps.append)
    assert stats.calls == 4 and len(sleeps) == 2


def test_a_wrapped_connection_reset_counts_and_jitter_stays_within_half():
    try:
        try:
            raise ConnectionRefusedError()
        except ConnectionRefusedError as inner:
            raise RuntimeError("sdk wrapper") from inner
    except RuntimeError as outer:
        assert connection_retryable(outer)
    assert not connection_retryable(ValueError())
    assert not http_status_retryable(404) and http_status_retryable(503) and http_status_retryable(429)
    for a in range(8):
        d = backoff_delay(a, base=0.5, cap=20.0)
        top = min(20.0, 0.5 * 2 ** a)
        assert top / 2 <= d <= top


def test_the_clouds_instance_limit_refuses_with_its_numbers(world, tmp_path, monkeypatch):
    """moto's EC2 says max-instances 20 (DescribeAccountAttributes): 21 servers are refused with
    that number, before anything is made, though max_servers would allow them."""
    import moto

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    with moto.mock_aws():
        config = load_cloud_sites(SITE.replace("max_servers: 3", "max_servers: 100"))[0]
        site = CloudSite(world, config, provider_class("aws")(config, "0123456789abcdef"), client_key=tmp_path / "id",
                         client_public="ssh-ed25519 AAAA")
        site.start(lambda: set())
        lim = site.limits()
        assert lim.max_instances == 20 and lim.flavors["small"] == (2, 1024)
        site.check_create(["small"] * 20)
        with pytest.raises(CloudQuotaExceeded) as err:
            site.check_create(["small"] * 21)
        assert err.value.numbers == {"instances": {"limit": 20, "used": 0, "asked": 21}}
        assert "instances: 0 of 20 used, 21 asked" in str(err.value) and "AWS account" in str(err.value)
        assert site.provider.list_tagged() == []
