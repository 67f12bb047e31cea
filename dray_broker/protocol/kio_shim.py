"""The one place Dray reaches into kio's private modules.

kio's public API decodes and encodes entities but offers no way to walk a schema class's fields, which the frame
guard (guard.py), the rejection builder (rejections.py) and the response builder (codec.make) need: what kind of
field each is, its Kafka type and tag, and the value an absent field decodes to. kio's own introspection does that
(kio.serial._introspect, kio.serial._implicit_defaults, and the `kafka_type` / `tag` metadata of its generated
dataclass fields), so it is borrowed here, and only here. tests/unit/test_kio_shim.py checks every name below on
real kio schemas and fails loudly when a kio upgrade moves or changes one (kio is pinned in pyproject.toml).

    classify_field(f)   PrimitiveField | PrimitiveTupleField | EntityField | EntityTupleField, each with .type_
                        (the element type for arrays, without None for nullable fields)
    is_optional(f)      whether the field's type admits None
    implicit_default(t) what kio decodes for an absent field of primitive type t (0, "", b"", the zero UUID...)
    kafka_type(f)       the field's Kafka type: "int32", "string", "records", "error_code", "timedelta_i32"...
    field_tag(f)        the tag of a tagged field (KIP-482), else None
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kio.serial._implicit_defaults import get_implicit_default as implicit_default
from kio.serial._introspect import (
    EntityField,
    EntityTupleField,
    PrimitiveField,
    PrimitiveTupleField,
    classify_field,
    get_field_tag,
    is_optional,
)

__all__ = ["EntityField", "EntityTupleField", "PrimitiveField", "PrimitiveTupleField", "classify_field",
           "field_tag", "implicit_default", "is_optional", "kafka_type"]


def kafka_type(f: dataclasses.Field[Any]) -> str:
    """The field's Kafka type ("" for a field kio did not generate)."""
    return str(f.metadata.get("kafka_type", ""))


def field_tag(f: dataclasses.Field[Any]) -> int | None:
    tag = get_field_tag(f)
    return None if tag is None else int(tag)
