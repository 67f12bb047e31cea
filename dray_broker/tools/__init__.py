"""The operator commands of `dray`: topics, produce, consume, groups, cluster, users, acls.

They reach the `dray` command through the `dray.commands` entry point (see pyproject.toml): `register` adds
them to its subcommands. Each command talks to a broker over the Kafka protocol (confluent-kafka), prints an
aligned table by default or JSON with --json, and reports failures as one line on stderr with a non-zero exit."""

from __future__ import annotations


def register(subparsers) -> None:
    from dray_broker.tools import acls, cluster, groups, records, topics, users

    topics.register(subparsers)
    records.register(subparsers)
    groups.register(subparsers)
    cluster.register(subparsers)
    users.register(subparsers)
    acls.register(subparsers)
