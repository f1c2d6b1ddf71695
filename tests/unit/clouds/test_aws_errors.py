"""AWSProvider's error handling without a server: which botocore errors are retried (throttling,
429/5xx, connection refused/closed) and which not, what each becomes (CloudUnavailable for
credentials and endpoints, CloudQuotaExceeded for limits, UnderCloudError for the rest), and no
credential value in any message even when AWS's own message would carry it."""

from __future__ import annotations

import pytest
from botocore.exceptions import (ClientError, ConnectionClosedError, EndpointConnectionError, NoCredentialsError,
                                 ProfileNotFound, ReadTimeoutError)

from overcloud.underclouds.base import UnderCloudError
from overcloud.underclouds.cloud.aws import AWSProvider, aws_retryable
from overcloud.underclouds.cloud.config import parse_cloud_sites
from overcloud.underclouds.cloud.provider import CloudQuotaExceeded, CloudUnavailable

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
ACCESS = "AKIAIOSFODNN7EXAMPLE"


def client_error(code: str, status: int, message: str = "m") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "RunInstances")


@pytest.fixture
def provider(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    creds = tmp_path / "credentials"
    creds.write_text(f"[lab]\naws_access_key_id = {ACCESS}\naws_secret_access_key = {SECRET}\n")
    cfg = parse_cloud_sites([{"name": "aws-1", "kind": "aws", "region": "us-east-1", "profile": "lab",
                              "credentials_file": str(creds), "endpoint_url": "http://127.0.0.1:9",
                              "image": "ami-1", "instance_types": {"small": "t3.micro"},
                              "network": {"vpc_cidr": "10.91.0.0/16"}, "ssh_cidrs": ["10.91.0.0/16"],
                              "box_pool": "10.97.0.0/16"}])[0]
    p = AWSProvider(cfg, "tower-1")
    p._client("ec2")  # makes the session and learns its credential values (no call is made)
    return p


@pytest.mark.parametrize("exc, retried", [
    (client_error("RequestLimitExceeded", 503), True),
    (client_error("Throttling", 400), True),
    (client_error("ThrottlingException", 400), True),
    (client_error("InternalError", 500), True),
    (client_error("Unavailable", 503), True),
    (client_error("SlowDown", 429), True),
    (client_error("InvalidParameterValue", 400), False),
    (client_error("AuthFailure", 401), False),
    (client_error("UnauthorizedOperation", 403), False),
    (client_error("InstanceLimitExceeded", 400), False),
    (client_error("InvalidGroup.NotFound", 400), False),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
    (ConnectionClosedError(endpoint_url="http://127.0.0.1:9"), True),
    (ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), False),  # the call may have been done: not blindly again
    (ValueError("x"), False),
])
def test_only_throttling_server_errors_and_refused_connections_are_retried(exc, retried):
    assert aws_retryable(exc) is retried


@pytest.mark.parametrize("exc, kind, words", [
    (client_error("AuthFailure", 401, f"key {ACCESS} secret {SECRET} refused"), CloudUnavailable, ["refused the credentials", "AuthFailure"]),
    (client_error("SignatureDoesNotMatch", 403, "Check your AWS Secret Access Key"), CloudUnavailable, ["refused the credentials"]),
    (client_error("VcpuLimitExceeded", 400, "You have requested more vCPU capacity"), CloudQuotaExceeded, ["limits", "VcpuLimitExceeded"]),
    (client_error("RequestLimitExceeded", 503, "Request limit exceeded."), CloudUnavailable, ["kept answering", "attempts"]),
    (client_error("InvalidParameterValue", 400, f"bad {SECRET}"), UnderCloudError, ["refused to", "InvalidParameterValue"]),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), CloudUnavailable, ["http://127.0.0.1:9", "does not answer"]),
    (NoCredentialsError(), CloudUnavailable, ["no AWS credentials"]),
    (ProfileNotFound(profile="lab"), CloudUnavailable, ["profile 'lab'"]),
])
def test_errors_become_ours_naming_the_site_without_secrets(provider, exc, kind, words):
    err = provider._error(exc, "start server oc-1-p0")
    assert type(err) is kind
    msg = str(err)
    assert msg.startswith("site aws-1:") and err.site == "aws-1"
    for w in words:
        assert w in msg
    assert SECRET not in msg and ACCESS not in msg
