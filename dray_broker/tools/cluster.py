"""`dray cluster status`: brokers by zone, topics with their log offsets, and (given the metadata store) how far
compaction lags behind the log end.

The Kafka protocol tells the brokers (DescribeCluster: a broker's rack is its zone), topics and partitions
(Metadata) and log start/end offsets (ListOffsets). The compacted watermark is not a Kafka notion: it is read
from the metadata store's offset index (`read_compaction_state`), only when --metadata (or DRAY_METADATA) is given.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlparse

from dray_broker.config import ConfigError, StorageSettings, flag_help
from dray_broker.tools.client import (
    EXIT_USAGE,
    ToolError,
    admin_client,
    command,
    connection_flags,
    log_offsets,
    topic_metadata,
    wait,
)
from dray_broker.tools.output import plural, print_fields, print_json, print_table
from dray_broker.version import VERSION


def register(sub) -> None:
    common = connection_flags()
    cluster = sub.add_parser("cluster", help="the cluster as a whole")
    csub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    p = csub.add_parser("status", aliases=["info"], parents=[common],
                        help="brokers by zone, topics with log offsets, compaction lag")
    p.add_argument("--metadata", metavar="URL",
                   help=flag_help("the metadata store (sqlite:///path/meta.db or oxia://host:port[/namespace]): adds "
                                  "the compacted watermark and the compaction lag of each partition",
                                  "DRAY_METADATA", None))
    p.add_argument("--topic", "-t", action="append", metavar="TOPIC", help="only this topic (repeatable)")
    p.add_argument("--partitions", action="store_true", help="one row per partition instead of per topic")
    p.set_defaults(func=cmd_status)


# --- the metadata store side --------------------------------------------------------------------------------------


def read_compaction_state(metadata_url: str, topics: list[str], timeout: float = 10.0) -> dict[str, dict[int, dict]]:
    """topic -> partition -> {log_start_offset, log_end_offset, compacted_watermark, oldest_uncompacted_ms},
    read from the offset index in the metadata store at metadata_url. Topics the store does not know are left
    out. oldest_uncompacted_ms is the smallest record timestamp of the first WAL entry at or above the watermark
    (None when everything is compacted)."""
    parsed = urlparse(metadata_url)
    if parsed.scheme == "sqlite" and not Path(parsed.path).exists():
        raise ToolError(f"no metadata store at {metadata_url} (the file {parsed.path} does not exist)")
    try:
        return asyncio.run(asyncio.wait_for(_read_compaction_state(metadata_url, topics), timeout))
    except TimeoutError:
        raise ToolError(f"the metadata store at {metadata_url} did not answer within {timeout:g} s") from None
    except ValueError as e:  # an unsupported URL
        raise ToolError(str(e)) from None


async def _read_compaction_state(metadata_url: str, topics: list[str]) -> dict[str, dict[int, dict]]:
    from dray_broker.index.offsets import OffsetIndex, WalLocation
    from dray_broker.metadata import open_metadata_store
    from dray_broker.topics.catalog import Topic, TopicCatalog

    store = await open_metadata_store(metadata_url)
    try:
        index = OffsetIndex(store)
        catalog = TopicCatalog(store)

        async def partition_state(topic: Topic, partition: int) -> dict:
            ref = topic.partition(partition)
            (watermark, _), start, end = await asyncio.gather(
                index.compacted_watermark(ref), index.log_start_offset(ref), index.log_end_offset(ref))
            oldest = None
            if end > max(watermark, start):
                entry = await index.lookup(ref, max(watermark, start))
                if entry is not None and isinstance(entry.location, WalLocation) and entry.location.min_timestamp >= 0:
                    oldest = entry.location.min_timestamp
            return {"log_start_offset": start, "log_end_offset": end, "compacted_watermark": watermark,
                    "oldest_uncompacted_ms": oldest}

        state: dict[str, dict[int, dict]] = {}
        for name in topics:
            topic = await catalog.get(name)
            if topic is None:
                continue
            states = await asyncio.gather(*(partition_state(topic, p) for p in range(topic.partitions)))
            state[name] = dict(enumerate(states))
        return state
    finally:
        await store.close()


# --- the command ----------------------------------------------------------------------------------------------------


def _age(ms: int | None) -> str | None:
    if ms is None:
        return None
    s = max(0, ms) // 1000
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


@command
def cmd_status(args) -> int:
    try:
        metadata = StorageSettings.load({"metadata": args.metadata}).metadata  # or DRAY_METADATA, or the config file
    except ConfigError as e:
        raise ToolError(str(e), EXIT_USAGE) from None
    admin = admin_client(args)
    cluster = wait(admin.describe_cluster(request_timeout=args.timeout), args, "cannot describe the cluster")
    known = topic_metadata(admin, args)
    names = sorted(known) if not args.topic else list(dict.fromkeys(args.topic))
    for name in names:
        if name not in known:
            raise ToolError(f"topic {name!r} does not exist")
    partitions = [(name, p) for name in names for p in sorted(known[name].partitions)]
    offsets = log_offsets(admin, args, partitions)
    compaction = read_compaction_state(metadata, names, args.timeout) if metadata else None
    now = int(time.time() * 1000)

    brokers = sorted(({"id": n.id, "host": n.host, "port": n.port, "zone": n.rack} for n in cluster.nodes),
                     key=lambda b: b["id"])
    zones: dict[str | None, list[dict]] = {}
    for b in brokers:
        zones.setdefault(b["zone"], []).append(b)

    topics = []
    for name in names:
        parts = []
        for t, p in partitions:
            if t != name:
                continue
            start, end = offsets[(t, p)]
            doc = {"partition": p, "start_offset": start, "end_offset": end, "records": end - start}
            if compaction is not None:
                c = compaction.get(name, {}).get(p)
                if c is not None:
                    floor = max(c["compacted_watermark"], start)
                    doc["compacted_watermark"] = c["compacted_watermark"]
                    doc["compaction_lag_records"] = max(0, end - floor)
                    oldest = c["oldest_uncompacted_ms"]
                    doc["compaction_lag_ms"] = max(0, now - oldest) if oldest is not None and end > floor else 0
            parts.append(doc)
        topics.append({"topic": name, "partitions": parts})

    if args.json:
        print_json({
            "dray_version": VERSION,
            "cluster_id": cluster.cluster_id,
            "controller_id": cluster.controller.id if cluster.controller else None,
            "brokers": brokers,
            "zones": {(zone if zone is not None else ""): [b["id"] for b in bs] for zone, bs in zones.items()},
            "compaction": compaction is not None,
            "topics": topics,
        })
        return 0

    print_fields([("cluster", cluster.cluster_id),
                  ("controller", cluster.controller.id if cluster.controller else None),
                  ("brokers", f"{len(brokers)} in {plural(len(zones), 'zone')}"),
                  ("topics", f"{len(topics)} with {plural(len(partitions), 'partition')}"),
                  ("version", f"dray {VERSION} (this command)")])
    print()
    print_table(["zone", "brokers"],
                [(zone or "(none)", ", ".join(f"{b['id']} ({b['host']}:{b['port']})" for b in bs))
                 for zone, bs in sorted(zones.items(), key=lambda z: (z[0] is None, z[0] or ""))])
    if not topics:
        return 0
    print()
    with_lag = compaction is not None
    if args.partitions:
        headers = ["topic", "partition", "start offset", "end offset", "records"]
        headers += ["compacted", "uncompacted", "oldest uncompacted"] if with_lag else []
        rows = []
        for t in topics:
            for p in t["partitions"]:
                row = [t["topic"], p["partition"], p["start_offset"], p["end_offset"], p["records"]]
                if with_lag:
                    row += [p.get("compacted_watermark"), p.get("compaction_lag_records"),
                            _age(p.get("compaction_lag_ms")) if p.get("compaction_lag_records") else None]
                rows.append(row)
    else:
        headers = ["topic", "partitions", "records", "end offsets"]
        headers += ["uncompacted", "oldest uncompacted"] if with_lag else []
        rows = []
        for t in topics:
            ps = t["partitions"]
            row = [t["topic"], len(ps), sum(p["records"] for p in ps), sum(p["end_offset"] for p in ps)]
            if with_lag:
                lagging = [p for p in ps if p.get("compaction_lag_records")]
                row += [sum(p.get("compaction_lag_records") or 0 for p in ps),
                        _age(max(p["compaction_lag_ms"] for p in lagging)) if lagging else None]
            rows.append(row)
    print_table(headers, rows)
    return 0
