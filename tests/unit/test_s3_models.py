"""The botocore session with msgspec-decoded models: what an S3 client reads, the same."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.loaders import JSONFileLoader
from botocore.session import Session
from moto import mock_aws

from streaming_wds.storage.s3_models import (
    ENDPOINT_SERVICES,
    _MsgspecFileLoader,
    botocore_session,
    decode,
    slim,
)


def _docs_blanked(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: "" if k in ("documentation", "documentationUrl") and isinstance(v, str) else _docs_blanked(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_docs_blanked(v) for v in node]
    return node


def _docs(node: Any) -> list[str]:
    if isinstance(node, dict):
        here = [v for k, v in node.items() if k == "documentation" and isinstance(v, str)]
        return here + [d for v in node.values() for d in _docs(v)]
    if isinstance(node, list):
        return [d for v in node for d in _docs(v)]
    return []


def _loaders() -> tuple[Any, Any]:
    ours = botocore_session().get_component("data_loader")
    theirs = Session().get_component("data_loader")
    assert isinstance(ours.file_loader, _MsgspecFileLoader)
    assert type(theirs.file_loader) is JSONFileLoader
    return ours, theirs


@pytest.mark.parametrize("service", ["s3", "sts", "sso", "sso-oidc"])
def test_service_models_are_botocores_with_empty_documentation(service: str) -> None:
    ours, theirs = _loaders()
    model, stock = (
        ours.load_service_model(service, "service-2"),
        theirs.load_service_model(service, "service-2"),
    )
    assert any(_docs(stock)) and not any(_docs(model))  # there was documentation, and it is gone
    assert model == _docs_blanked(stock)
    rules = ours.load_service_model(service, "endpoint-rule-set-1")
    assert rules == theirs.load_service_model(service, "endpoint-rule-set-1")  # untouched


def test_endpoints_keep_every_partition_and_region_and_only_the_needed_services() -> None:
    ours, theirs = _loaders()
    slim, stock = ours.load_data("endpoints"), theirs.load_data("endpoints")
    assert len(slim["partitions"]) == len(stock["partitions"]) > 1
    for mine, full in zip(slim["partitions"], stock["partitions"], strict=True):
        assert {k: v for k, v in mine.items() if k != "services"} == {
            k: v for k, v in full.items() if k != "services"
        }
        assert mine["services"] == {k: v for k, v in full["services"].items() if k in ENDPOINT_SERVICES}
        assert "s3" in mine["services"]
    assert len(stock["partitions"][0]["services"]) > 300  # what was dropped, in partition "aws"
    assert {k: v for k, v in slim.items() if k != "partitions"} == {
        k: v for k, v in stock.items() if k != "partitions"
    }
    assert ours.load_data("partitions") == theirs.load_data("partitions")
    # in botocore's order too (dicts compare equal in any order)
    assert [list(p) for p in slim["partitions"]] == [list(p) for p in stock["partitions"]]
    assert [list(p["services"]) for p in slim["partitions"]] == [
        [k for k in p["services"] if k in ENDPOINT_SERVICES] for p in stock["partitions"]
    ]


@pytest.mark.parametrize(
    "text",
    [
        b'{"partitions": [{"partition": "p", "services": {"ec2": {"x": 1}, "s3": {"y": [2]}}}], "v": 3}',
        b'{"version": 3}',
        b'{"partitions": {"p": 1}}',  # not a list: decoded whole, left as it is
        b'{"partitions": [1, {"services": {"s3": {}}}]}',  # an element that is not an object
        b'{"partitions": [{"services": [1, 2]}]}',  # services not an object
    ],
)
def test_endpoints_of_any_shape_decode_as_a_whole_decode_then_slim_would(text: bytes) -> None:
    assert decode("endpoints", text) == slim("endpoints", json.loads(text))


@pytest.mark.parametrize(
    "region", ["us-east-1", "eu-west-1", "ap-southeast-2", "cn-north-1", "us-gov-west-1", "aws-global"]
)
@pytest.mark.parametrize("service", ["s3", "sts", "sso", "ec2"])  # ec2: a service that was dropped
def test_clients_resolve_the_endpoints_botocore_resolves(service: str, region: str) -> None:
    creds = {"aws_access_key_id": "k", "aws_secret_access_key": "s"}
    ours = botocore_session().create_client(service, region_name=region, **creds)
    stock = Session().create_client(service, region_name=region, **creds)
    assert ours.meta.endpoint_url == stock.meta.endpoint_url
    assert ours.meta.region_name == stock.meta.region_name
    assert ours.meta.config.signature_version == stock.meta.config.signature_version


def test_a_file_msgspec_refuses_is_left_to_botocore(tmp_path: Path) -> None:
    (tmp_path / "odd.json").write_text('{"value": NaN}')  # json accepts NaN, msgspec does not
    data = _MsgspecFileLoader().load_file(str(tmp_path / "odd"))
    assert list(data) == ["value"] and math.isnan(data["value"])
    assert _MsgspecFileLoader().load_file(str(tmp_path / "missing")) is None


def test_a_client_of_the_session_talks_to_s3() -> None:
    with mock_aws():
        session = boto3.session.Session(botocore_session=botocore_session(), region_name="us-east-1")
        client = session.client("s3")
        client.create_bucket(Bucket="bkt")
        client.put_object(Bucket="bkt", Key="k", Body=b"abc")
        assert client.get_object(Bucket="bkt", Key="k", Range="bytes=1-")["Body"].read() == b"bc"
        assert [o["Key"] for o in client.list_objects_v2(Bucket="bkt")["Contents"]] == ["k"]
