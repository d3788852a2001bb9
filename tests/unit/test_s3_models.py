"""The botocore session with msgspec-decoded models: the same models, faster."""

from __future__ import annotations

import math
from pathlib import Path

import boto3
from botocore.loaders import JSONFileLoader
from botocore.session import Session
from moto import mock_aws

from streaming_wds.storage.s3_models import _MsgspecFileLoader, botocore_session


def test_models_decode_to_what_botocore_decodes() -> None:
    ours = botocore_session().get_component("data_loader")
    theirs = Session().get_component("data_loader")
    assert isinstance(ours.file_loader, _MsgspecFileLoader)
    assert type(theirs.file_loader) is JSONFileLoader
    for type_name in ("service-2", "endpoint-rule-set-1"):
        assert ours.load_service_model("s3", type_name) == theirs.load_service_model("s3", type_name)
    assert ours.load_data("endpoints") == theirs.load_data("endpoints")
    assert ours.load_data("partitions") == theirs.load_data("partitions")


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
