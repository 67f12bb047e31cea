"""The test services are the real thing: an Oxia server that reads and writes, a MinIO that enforces create-only."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlparse

import pytest

from tests import services


# ------------------------------------------------------------------------------------------------ Oxia


def test_oxia_grpc_channel_ready(oxia_service) -> None:
    import grpc

    host, port = oxia_service.address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    with grpc.insecure_channel(oxia_service.address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
    assert services.oxia_probe(oxia_service.address) == 0  # one shard, id 0, with a leader


def test_oxia_put_get_and_conditional_put(oxia_service) -> None:
    import grpc
    from oxia.internal.proto.io.streamnative.oxia import proto as pb

    key = f"/test-services/{uuid.uuid4().hex}"
    with grpc.insecure_channel(oxia_service.address) as channel:
        stub = pb.OxiaClientStub(channel)
        created = stub.write(
            pb.WriteRequest(shard=0, puts=[pb.PutRequest(key=key, value=b"v1", expected_version_id=-1)])
        )
        assert created.puts[0].status == pb.Status.OK
        # expected_version_id -1 means "must not exist": the second create fails, per operation.
        again = stub.write(pb.WriteRequest(shard=0, puts=[pb.PutRequest(key=key, value=b"v2", expected_version_id=-1)]))
        assert again.puts[0].status == pb.Status.UNEXPECTED_VERSION_ID
        got = next(stub.read(pb.ReadRequest(shard=0, gets=[pb.GetRequest(key=key, include_value=True)])))
        assert got.gets[0].status == pb.Status.OK
        assert got.gets[0].value == b"v1"


# ------------------------------------------------------------------------------------------------ MinIO


def test_minio_put_get(s3_service) -> None:
    s3 = s3_service.client()
    key = f"test-services/{uuid.uuid4().hex}"
    s3.put_object(Bucket=s3_service.bucket, Key=key, Body=b"hello")
    assert s3.get_object(Bucket=s3_service.bucket, Key=key)["Body"].read() == b"hello"
    ranged = s3.get_object(Bucket=s3_service.bucket, Key=key, Range="bytes=1-3")["Body"].read()
    assert ranged == b"ell"


def test_minio_create_only_put_fails_the_second_time(s3_service) -> None:
    from botocore.exceptions import ClientError

    s3 = s3_service.client()
    key = f"test-services/{uuid.uuid4().hex}"
    s3.put_object(Bucket=s3_service.bucket, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket=s3_service.bucket, Key=key, Body=b"second", IfNoneMatch="*")
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket=s3_service.bucket, Key=key)["Body"].read() == b"first"


def test_minio_url_shape(s3_service) -> None:
    url = urlparse(s3_service.url("some/prefix"))
    assert (url.scheme, url.netloc, url.path) == ("s3", s3_service.bucket, "/some/prefix")
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    assert query == {
        "endpoint": s3_service.endpoint,
        "access_key_id": s3_service.access_key,
        "secret_access_key": s3_service.secret_key,
    }
    assert s3_service.endpoint.startswith("http://127.0.0.1:")
