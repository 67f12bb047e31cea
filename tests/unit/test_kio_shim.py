"""kio's private introspection, as dray_broker/protocol/kio_shim.py borrows it: every name exists and behaves as the
frame guard, the rejection builder and codec.make rely on, on real kio schemas. A kio upgrade that moves or changes
one fails here, by name, instead of deep inside a request."""

import dataclasses
import uuid

import pytest
from kio.index import load_request_schema, load_response_schema
from kio.schema.delete_topics.v5.request import DeleteTopicsRequest
from kio.schema.fetch.v15.request import FetchRequest, FetchTopic, ReplicaState
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.metadata.v12.response import MetadataResponse
from kio.schema.produce.v9.request import PartitionProduceData
from kio.schema.types import BrokerId, TopicName
from kio.static.primitive import Records, i8, i16, i32, i32Timedelta, i64

from dray_broker.protocol.kio_shim import (
    EntityField,
    EntityTupleField,
    PrimitiveField,
    PrimitiveTupleField,
    classify_field,
    field_tag,
    implicit_default,
    is_optional,
    kafka_type,
)
from dray_broker.server.routes import ROUTES


def _field(cls, name: str) -> dataclasses.Field:
    (found,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return found


def test_classify_field_tells_the_four_kinds_and_their_types():
    assert classify_field(_field(FetchRequest, "min_bytes")) == PrimitiveField(i32)
    assert classify_field(_field(FetchRequest, "cluster_id")) == PrimitiveField(str)  # str | None: without None
    assert classify_field(_field(FetchRequest, "replica_state")) == EntityField(ReplicaState)
    assert classify_field(_field(FetchRequest, "topics")) == EntityTupleField(FetchTopic)
    assert classify_field(_field(MetadataRequest, "topics")) == EntityTupleField(MetadataRequestTopic)  # nullable
    assert classify_field(_field(DeleteTopicsRequest, "topic_names")) == PrimitiveTupleField(TopicName)
    assert classify_field(_field(PartitionProduceData, "records")) == PrimitiveField(Records)
    assert [kind.is_array for kind in (PrimitiveField(i32), PrimitiveTupleField(i32), EntityField(ReplicaState),
                                       EntityTupleField(FetchTopic))] == [False, True, False, True]


def test_is_optional_tells_the_nullable_fields():
    assert is_optional(_field(FetchRequest, "cluster_id"))
    assert is_optional(_field(MetadataRequest, "topics"))
    assert is_optional(_field(PartitionProduceData, "records"))
    assert not is_optional(_field(FetchRequest, "rack_id"))
    assert not is_optional(_field(FetchRequest, "topics"))


def test_kafka_type_and_field_tag_read_the_generated_metadata():
    assert [kafka_type(_field(FetchRequest, n)) for n in ("min_bytes", "max_wait", "isolation_level", "cluster_id")] \
        == ["int32", "timedelta_i32", "int8", "string"]
    assert kafka_type(_field(PartitionProduceData, "records")) == "records"
    assert kafka_type(_field(MetadataResponse, "throttle_time")) == "timedelta_i32"
    topic = classify_field(_field(MetadataResponse, "topics")).type_
    assert kafka_type(_field(topic, "error_code")) == "error_code"
    assert kafka_type(_field(FetchRequest, "replica_state")) == ""  # an entity has no Kafka type of its own
    assert (field_tag(_field(FetchRequest, "cluster_id")), field_tag(_field(FetchRequest, "replica_state"))) == (0, 1)
    assert field_tag(_field(FetchRequest, "min_bytes")) is None


@pytest.mark.parametrize("type_, expected", [
    (i8, 0), (i16, 0), (i32, 0), (i64, 0), (BrokerId, 0), (str, ""), (TopicName, ""), (bytes, b""),
    (uuid.UUID, uuid.UUID(int=0)),
])
def test_implicit_default_is_what_an_absent_field_decodes_to(type_, expected):
    assert implicit_default(type_) == expected


def test_implicit_default_of_durations_and_what_it_does_not_know():
    assert implicit_default(i32Timedelta).total_seconds() == 0
    with pytest.raises(KeyError):  # bool has none: rejections.py answers False for bool fields itself
        implicit_default(bool)


def test_every_schema_of_every_api_is_understood():
    """The guard and the rejection builder walk every field of every version they may meet."""
    walked = 0
    for api_key in sorted(r.key for r in ROUTES):  # the transaction APIs too: their rejections walk them
        for loader in (load_request_schema, load_response_schema):
            for version in range(20):
                try:
                    cls = loader(api_key, version)
                except Exception:  # noqa: BLE001 - kio has no schema for this version
                    continue
                pending = [cls]
                while pending:
                    entity = pending.pop()
                    assert isinstance(entity.__flexible__, bool)
                    for f in dataclasses.fields(entity):
                        kind = classify_field(f)
                        assert isinstance(is_optional(f), bool)
                        if isinstance(kind, (EntityField, EntityTupleField)):
                            pending.append(kind.type_)
                        else:
                            assert kafka_type(f), f"{entity.__name__}.{f.name} has no Kafka type"
                        walked += 1
    assert walked > 1000
