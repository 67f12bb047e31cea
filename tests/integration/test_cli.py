"""The operator CLI (`dray topics|produce|consume|groups|cluster`), run as a real subprocess against a broker.

Every command is checked on its real output: human tables, --json documents, exit codes and the one-line errors."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Producer

from tests.integration.brokers import BrokerProcess, free_port

REPO = Path(__file__).resolve().parents[2]
BASE_TS = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def dray(broker, *args: str, stdin: str | bytes | None = None, expect: int = 0, timeout: float = 90,
         env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `dray ARGS` with DRAY_BOOTSTRAP pointing at broker; check its exit code."""
    environ = {**os.environ, "DRAY_BOOTSTRAP": broker.bootstrap if broker else "127.0.0.1:1", **(env or {})}
    environ.pop("DRAY_METADATA", None)
    text = {} if isinstance(stdin, bytes) else {"encoding": "utf-8", "errors": "replace"}
    proc = subprocess.run([sys.executable, "-m", "dray_broker.cli", *args], input=stdin, capture_output=True,
                          env=environ, timeout=timeout, cwd=REPO, **text)
    assert proc.returncode == expect, (
        f"dray {' '.join(args)} exited {proc.returncode}, expected {expect}\nstdout:\n{proc.stdout}\n"
        f"stderr:\n{proc.stderr}")
    return proc


def dray_json(broker, *args: str, **kw):
    return json.loads(dray(broker, *args, "--json", **kw).stdout)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error a failed command printed: exactly one line on stderr, starting with 'dray: '."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dray: "), proc.stderr
    return lines[0]


def metadata_url(broker: BrokerProcess) -> str:
    return f"sqlite://{broker.data_dir.resolve()}/meta.db"


def produce_timed(broker, topic: str, values: list[bytes], *, partition: int = 0, base_ts: int = BASE_TS) -> None:
    """Records with chosen timestamps (BASE_TS + 1 s per record), which `dray produce` does not set."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "log_level": 3})
    for i, v in enumerate(values):
        p.produce(topic, value=v, partition=partition, timestamp=base_ts + i * 1000)
    assert p.flush(30) == 0


# --- topics -----------------------------------------------------------------------------------------------------


def test_topics_create_list_describe_alter_delete(embedded_broker, topic_name):
    b = embedded_broker
    out = dray(b, "topics", "create", topic_name, "--partitions", "3", "--config", "retention.ms=3600000").stdout
    assert out.strip() == f"created topic {topic_name} with 3 partitions"
    err = one_line_error(dray(b, "topics", "create", topic_name, expect=1))
    assert "exists already" in err
    assert "exists already" in dray(b, "topics", "create", topic_name, "--if-not-exists").stdout
    bad = one_line_error(dray(b, "topics", "create", topic_name + "-x", "-c", "segment.bytes=1", expect=1))
    assert "segment.bytes" in bad

    listed = dray_json(b, "topics", "list")
    assert {"topic": topic_name, "partitions": 3} in listed
    table = dray(b, "topics", "list").stdout.splitlines()
    assert table[0].split() == ["TOPIC", "PARTITIONS"]
    assert [topic_name, "3"] in [line.split() for line in table[1:]]

    doc = dray_json(b, "topics", "describe", topic_name)
    assert doc["topic"] == topic_name and doc["partition_count"] == 3
    assert [p["partition"] for p in doc["partitions"]] == [0, 1, 2]
    assert all(p["start_offset"] == 0 and p["end_offset"] == 0 and p["leader"] is not None
               for p in doc["partitions"])
    assert doc["configs"]["retention.ms"] == {"value": "3600000", "source": "topic", "default": False,
                                              "read_only": False}
    assert doc["configs"]["retention.bytes"]["default"] and doc["configs"]["retention.bytes"]["value"] == "-1"
    assert len(doc["id"]) == 36  # the UUID the metadata store uses

    dray(b, "produce", topic_name, "--partition", "2", stdin="a\nb\n")
    human = dray(b, "topics", "describe", topic_name).stdout
    assert f"topic:      {topic_name}" in human and "records:    2" in human
    assert ["retention.ms", "3600000", "topic"] in [line.split() for line in human.splitlines()]
    rows = [line.split() for line in human.splitlines() if line.strip().startswith("2 ")]
    assert rows and rows[-1][-2:] == ["0", "2"]  # partition 2: start offset 0, end offset 2

    # alter: add partitions, set one config, reset another; a dry run changes nothing.
    out = dray(b, "topics", "alter", topic_name, "--partitions", "5", "-c", "max.message.bytes=2000000",
               "--delete-config", "retention.ms").stdout
    assert out.strip() == (f"altered topic {topic_name}: partitions 3 -> 5, max.message.bytes=2000000, "
                           "retention.ms reset to default")
    dray(b, "topics", "alter", topic_name, "-c", "retention.ms=5", "--dry-run")
    doc = dray_json(b, "topics", "describe", topic_name)
    assert doc["partition_count"] == 5
    assert doc["configs"]["max.message.bytes"]["value"] == "2000000"
    assert doc["configs"]["retention.ms"]["default"] and doc["configs"]["retention.ms"]["value"] == "604800000"
    assert "partitions can be added, not removed" in one_line_error(
        dray(b, "topics", "alter", topic_name, "--partitions", "2", expect=1))
    assert "cleanup.policy" in one_line_error(
        dray(b, "topics", "alter", topic_name, "-c", "cleanup.policy=shred", expect=1))
    dray(b, "topics", "alter", topic_name, expect=2)  # nothing to alter

    # delete
    assert dray(b, "topics", "delete", topic_name).stdout.strip() == f"deleted topic {topic_name}"
    assert "does not exist" in one_line_error(dray(b, "topics", "describe", topic_name, expect=1))
    assert "does not exist" in one_line_error(dray(b, "topics", "delete", topic_name, expect=1))
    assert dray_json(b, "topics", "delete", topic_name, "--if-exists") == {"deleted": [], "missing": [topic_name],
                                                                          "errors": []}
    assert topic_name not in [t["topic"] for t in dray_json(b, "topics", "list")]


# --- produce and consume ----------------------------------------------------------------------------------------


def test_produce_keys_and_headers_then_consume_with_format(embedded_broker, topic_name):
    b = embedded_broker
    dray(b, "topics", "create", topic_name, "-p", "3")
    lines = "".join(f"key-{i % 10}:value {i}\n" for i in range(100))
    out = dray(b, "produce", topic_name, "--key-separator", ":", "--header", "app=cli", "--header", "app=again",
               "-H", "trace=x=y", stdin=lines).stdout
    assert out.startswith(f"produced 100 records to {topic_name} in ")

    got = dray(b, "consume", topic_name, "--from-beginning", "--exit-at-end",
               "--format", r"%p|%o|%k|%s|%h|%T|%K|%S\n").stdout.splitlines()
    assert len(got) == 100
    rows = [line.split("|") for line in got]
    assert sorted(int(r[3].split()[1]) for r in rows) == list(range(100))
    partition_of_key: dict[str, str] = {}
    offsets: dict[str, list[int]] = {}
    for p, o, k, s, h, ts, klen, vlen in rows:
        assert k == f"key-{int(s.split()[1]) % 10}" and s.startswith("value ")
        assert h == "app=cli,app=again,trace=x=y"  # order and duplicates kept
        assert int(ts) > BASE_TS and int(klen) == len(k) and int(vlen) == len(s)
        assert partition_of_key.setdefault(k, p) == p  # one key, one partition
        offsets.setdefault(p, []).append(int(o))
    for p, seen in offsets.items():
        assert seen == list(range(len(seen))), p  # dense, in order, per partition

    # The default output is the value, one per line; --count stops early.
    values = dray(b, "consume", topic_name, "--from-beginning", "--count", "7").stdout.splitlines()
    assert len(values) == 7 and all(v.startswith("value ") for v in values)


def test_produce_json_to_a_partition_and_consume_by_offset(embedded_broker, topic_name):
    b = embedded_broker
    dray(b, "topics", "create", topic_name, "-p", "2")
    out = dray(b, "produce", topic_name, "--partition", "1", "--json", "-K", "=",
               stdin="a=1\nb=2\nno separator\nd=4\n\n").stdout.splitlines()
    docs = [json.loads(line) for line in out]
    assert [(d["line"], d["partition"], d["offset"]) for d in docs] == [(i + 1, 1, i) for i in range(5)]
    assert [d.get("key") for d in docs] == ["a", "b", None, "d", None]

    assert dray(b, "consume", topic_name, "-p", "1", "--offset", "1", "-c", "2").stdout == "2\nno separator\n"
    assert dray(b, "consume", topic_name, "-p", "1", "--offset", "-2", "-e").stdout == "4\n\n"
    assert dray(b, "consume", topic_name, "-p", "0", "--from-beginning", "-e").stdout == ""
    # Without --from-beginning an assigned consumer starts at the end.
    assert dray(b, "consume", topic_name, "-e").stdout == ""

    (record,) = [json.loads(line) for line in
                 dray(b, "consume", topic_name, "-p", "1", "-o", "0", "-c", "1", "--json").stdout.splitlines()]
    assert record == {"topic": topic_name, "partition": 1, "offset": 0, "timestamp": record["timestamp"],
                      "key": "a", "value": "1", "headers": []}


def test_consume_from_timestamp_and_binary_values_as_json(embedded_broker, topic_name):
    b = embedded_broker
    dray(b, "topics", "create", topic_name)
    produce_timed(b, topic_name, [f"v{i}".encode() for i in range(10)] + [b"\xff\x00\xfe"])
    by_ms = dray(b, "consume", topic_name, "--from-timestamp", str(BASE_TS + 5000), "-e").stdout.splitlines()
    assert by_ms == ["v5", "v6", "v7", "v8", "v9", "\ufffd\x00\ufffd"]
    by_iso = dray(b, "consume", topic_name, "--from-timestamp", "2023-11-14T22:13:27.500Z", "-e",
                  "-f", r"%o %T\n").stdout.splitlines()
    assert by_iso == [f"{i} {BASE_TS + i * 1000}" for i in range(8, 11)]
    assert dray(b, "consume", topic_name, "--from-timestamp", "2030-01-01T00:00:00", "-e").stdout == ""

    (last,) = [json.loads(line) for line in
               dray(b, "consume", topic_name, "-p", "0", "-o", "10", "-c", "1", "--json").stdout.splitlines()]
    assert last["value_encoding"] == "base64" and last["value"] == "/wD+" and last["timestamp"] == BASE_TS + 10_000


def test_clear_errors_and_exit_codes(embedded_broker, topic_name):
    b = embedded_broker
    for args in (["consume", topic_name, "-e"], ["topics", "describe", topic_name],
                 ["cluster", "status", "--topic", topic_name]):
        err = one_line_error(dray(b, *args, expect=1))
        assert f"topic '{topic_name}' does not exist" in err, args

    dray(b, "topics", "create", topic_name, "-p", "2")
    assert "no partition 7" in one_line_error(dray(b, "produce", topic_name, "-p", "7", stdin="x\n", expect=1))
    assert "give the group with --group" in one_line_error(dray(b, "consume", topic_name, "-o", "stored", expect=2))
    assert "dray groups reset-offsets" in one_line_error(dray(b, "consume", topic_name, "-G", "g", "-o", "3",
                                                              expect=2))
    assert "ISO 8601" in one_line_error(dray(b, "consume", topic_name, "--from-timestamp", "yesterday", expect=2))
    assert "unknown field" in one_line_error(dray(b, "consume", topic_name, "-f", "%z", expect=2))
    dray(b, "groups", "reset-offsets", "--group", "g", "--topic", topic_name, expect=2)  # no --to-*

    # Nothing listening: reported quickly, with its own exit code.
    nobody = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = dray(None, "topics", "list", "--bootstrap", nobody, expect=3)
    assert f"cannot reach a broker at {nobody}" in one_line_error(proc)
    assert time.monotonic() - started < 10
    # A listener that never speaks Kafka: given up on after the connect timeout (5 s).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        proc = dray(None, "produce", topic_name, "--bootstrap", f"127.0.0.1:{silent.getsockname()[1]}",
                    stdin="x\n", expect=3)
        assert "cannot reach a Kafka broker" in one_line_error(proc)
        assert time.monotonic() - started < 15


def test_progress_bars_only_when_stderr_is_a_terminal(embedded_broker, topic_name):
    b = embedded_broker
    dray(b, "topics", "create", topic_name)
    lines = "".join(f"{i}\n" for i in range(2000))
    quiet = dray(b, "produce", topic_name, stdin=lines)
    assert quiet.stderr == ""

    # stderr on a pseudo-terminal: a bar is drawn there; stdout keeps only the data.
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "dray_broker.cli", "consume", topic_name, "--from-beginning",
                             "--count", "2000", "--bootstrap", b.bootstrap],
                            stdout=subprocess.PIPE, stderr=slave, cwd=REPO, env={**os.environ, "COLUMNS": "200"})
    os.close(slave)
    drawn = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0
    assert out.decode().splitlines() == [str(i) for i in range(2000)]
    assert b"consuming " + topic_name.encode() in drawn and b"2000/2000" in drawn


# --- cluster ----------------------------------------------------------------------------------------------------


def test_cluster_status_offsets_and_compaction_lag(embedded_broker, topic_name):
    b = embedded_broker
    dray(b, "topics", "create", topic_name, "-p", "2")
    dray(b, "produce", topic_name, "-p", "0", stdin="".join(f"{i}\n" for i in range(40)))
    dray(b, "produce", topic_name, "-p", "1", stdin="x\ny\n")

    doc = dray_json(b, "cluster", "status")
    assert doc["cluster_id"] and doc["controller_id"] == doc["brokers"][0]["id"]
    assert [(x["host"], x["port"]) for x in doc["brokers"]] == [("127.0.0.1", b.port)]
    assert doc["zones"] == {"": [doc["brokers"][0]["id"]]} and doc["compaction"] is False
    (topic,) = [t for t in doc["topics"] if t["topic"] == topic_name]
    assert topic["partitions"] == [
        {"partition": 0, "start_offset": 0, "end_offset": 40, "records": 40},
        {"partition": 1, "start_offset": 0, "end_offset": 2, "records": 2},
    ]

    human = dray(b, "cluster", "status", "--topic", topic_name).stdout
    assert "ZONE" in human and f"(none)  {doc['brokers'][0]['id']} ({b.bootstrap})" in human
    assert [topic_name, "2", "42", "42"] in [line.split() for line in human.splitlines()]

    # With the metadata store: the compacted watermark and the lag behind it. Advance partition 0's watermark
    # as compaction's swap would.
    async def advance_watermark():
        from dray_broker.index.offsets import OffsetIndex
        from dray_broker.metadata import open_metadata_store
        from dray_broker.topics.catalog import TopicCatalog

        store = await open_metadata_store(metadata_url(b))
        try:
            ref = (await TopicCatalog(store).get(topic_name)).partition(0)
            await OffsetIndex(store).swap(ref, 30, -1)
        finally:
            await store.close()

    asyncio.run(advance_watermark())
    doc = dray_json(b, "cluster", "status", "--topic", topic_name, "--metadata", metadata_url(b))
    assert doc["compaction"] is True
    p0, p1 = doc["topics"][0]["partitions"]
    assert (p0["compacted_watermark"], p0["compaction_lag_records"]) == (30, 10)
    assert (p1["compacted_watermark"], p1["compaction_lag_records"]) == (0, 2)
    assert 0 <= p0["compaction_lag_ms"] < 600_000
    human = dray(b, "cluster", "status", "--topic", topic_name, "--metadata", metadata_url(b), "--partitions").stdout
    rows = [line.split() for line in human.splitlines() if line.startswith(topic_name)]
    assert [r[:7] for r in rows] == [[topic_name, "0", "0", "40", "40", "30", "10"],
                                     [topic_name, "1", "0", "2", "2", "0", "2"]]
    missing = one_line_error(dray(b, "cluster", "status", "--metadata", "sqlite:///nowhere/meta.db", expect=1))
    assert "no metadata store" in missing


def test_cluster_status_groups_brokers_by_zone(tmp_path, cluster_stores):
    shared = cluster_stores.args()
    brokers = [BrokerProcess(tmp_path / f"b{i}", extra_args=[*shared, f"--broker-id={i}", f"--zone={zone}"])
               for i, zone in ((1, "zone-a"), (2, "zone-b"), (3, "zone-a"))]
    try:
        for broker in brokers:
            broker.start()
        doc = _wait_for(lambda: (d := dray_json(brokers[1], "cluster", "status"))["zones"] == {
            "zone-a": [1, 3], "zone-b": [2]} and d, what="three brokers in two zones")
        assert [(x["id"], x["zone"], x["port"]) for x in doc["brokers"]] == [
            (1, "zone-a", brokers[0].port), (2, "zone-b", brokers[1].port), (3, "zone-a", brokers[2].port)]
        human = dray(brokers[0], "cluster", "status").stdout
        assert "brokers:    3 in 2 zones" in human
        assert (f"zone-a  1 (127.0.0.1:{brokers[0].port}), 3 (127.0.0.1:{brokers[2].port})") in human
        assert f"zone-b  2 (127.0.0.1:{brokers[1].port})" in human
    finally:
        for broker in brokers:
            broker.kill()


# --- groups -----------------------------------------------------------------------------------------------------


def _wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_groups_list_describe_reset_offsets_delete(embedded_broker, topic_name):
    b = embedded_broker
    group = f"g-{topic_name}"
    dray(b, "topics", "create", topic_name, "-p", "2")
    produce_timed(b, topic_name, [str(i).encode() for i in range(20)], partition=0)
    produce_timed(b, topic_name, [str(i).encode() for i in range(5)], partition=1)

    # A group consumer commits what it printed.
    assert len(dray(b, "consume", topic_name, "--group", group, "--from-beginning", "-c", "12").stdout.splitlines()) == 12
    assert {"group": group, "state": "Empty", "type": "classic"} in dray_json(b, "groups", "list")
    doc = dray_json(b, "groups", "describe", group)
    assert doc["state"] == "Empty" and doc["members"] == []
    committed = {o["partition"]: o["committed"] for o in doc["offsets"]}
    # The 12 records may all come from partition 0: a partition without a commit is not listed (as Kafka's tool).
    assert sum(committed.values()) == 12
    assert all(o["end_offset"] == (20 if o["partition"] == 0 else 5) for o in doc["offsets"])
    assert all(o["lag"] == o["end_offset"] - o["committed"] for o in doc["offsets"])
    lag = sum(o["lag"] for o in doc["offsets"])
    human = dray(b, "groups", "describe", group).stdout
    assert "state:       Empty" in human and f"total lag:   {lag}" in human and "COMMITTED" in human

    def offsets() -> dict[int, int]:
        return {o["partition"]: o["committed"] for o in dray_json(b, "groups", "describe", group)["offsets"]}

    # As kafka-consumer-groups.sh: a plan unless --execute (--dry-run says so explicitly).
    plan = dray_json(b, "groups", "reset-offsets", "--group", group, "--topic", topic_name, "--to-earliest")
    assert plan["executed"] is False and [(o["partition"], o["current"], o["offset"]) for o in plan["offsets"]] == [
        (0, committed.get(0), 0), (1, committed.get(1), 0)]
    planned = dray(b, "groups", "reset-offsets", "--group", group, "--topic", topic_name, "--to-earliest", "--dry-run")
    assert planned.stdout.splitlines()[0].split() == ["GROUP", "TOPIC", "PARTITION", "CURRENT", "OFFSET", "NEW",
                                                       "OFFSET"]
    assert [line.split()[:3] for line in planned.stdout.splitlines()[1:]] == [[group, topic_name, "0"],
                                                                             [group, topic_name, "1"]]
    assert "nothing changed: add --execute" in planned.stderr
    assert offsets() == committed
    dray(b, "groups", "reset-offsets", "--group", group, "--topic", topic_name, "--to-earliest", "--dry-run",
         "--execute", expect=2)
    assert offsets() == committed

    def reset(*how: str) -> subprocess.CompletedProcess:
        return dray(b, "groups", "reset-offsets", "--group", group, *how, "--execute")

    assert reset("--topic", topic_name, "--to-earliest").stderr == ""
    assert offsets() == {0: 0, 1: 0}
    reset("--topic", topic_name, "--partition", "0", "--to-offset", "7")
    assert offsets() == {0: 7, 1: 0}
    out = reset("--topic", topic_name, "--to-offset", "99").stdout
    assert [line.split() for line in out.splitlines()[1:]] == [[group, topic_name, "0", "7", "20"],
                                                               [group, topic_name, "1", "0", "5"]]
    reset("--topic", topic_name, "--shift-by", "-4")
    assert offsets() == {0: 16, 1: 1}
    reset("--all-topics", "--to-timestamp", str(BASE_TS + 3000))
    assert offsets() == {0: 3, 1: 3}
    reset("--topic", topic_name, "--to-datetime", "2023-11-14T22:13:38Z")  # BASE_TS + 18 s: offset 18 of
    assert offsets() == {0: 18, 1: 5}                                       # partition 0, the end of partition 1
    reset("--topic", topic_name, "--to-latest")
    assert offsets() == {0: 20, 1: 5}
    reset("--topic", topic_name, "--to-offset", "2")
    # The group resumes where it was reset to.
    resumed = dray(b, "consume", topic_name, "--group", group, "-e", "-f", r"%p:%o\n").stdout.splitlines()
    assert sorted(resumed) == sorted([f"0:{o}" for o in range(2, 20)] + [f"1:{o}" for o in range(2, 5)])
    assert offsets() == {0: 20, 1: 5}

    # A member is consuming: reset and delete refuse, and say why.
    member = subprocess.Popen([sys.executable, "-m", "dray_broker.cli", "consume", topic_name, "--group", group,
                               "--bootstrap", b.bootstrap], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        _wait_for(lambda: dray_json(b, "groups", "describe", group)["state"] == "Stable", what="a stable group")
        doc = dray_json(b, "groups", "describe", group)
        assert len(doc["members"]) == 1 and doc["members"][0]["client_id"] == "dray-cli"
        assert sorted(a["partition"] for a in doc["members"][0]["assignment"]) == [0, 1]
        err = one_line_error(dray(b, "groups", "reset-offsets", "--group", group, "--topic", topic_name,
                                  "--to-earliest", "--execute", expect=1))
        assert "is not empty (Stable, 1 member)" in err and "stop its consumers" in err
        assert "active members" in one_line_error(dray(b, "groups", "delete", group, expect=1))
    finally:
        member.send_signal(signal.SIGTERM)  # the CLI consumer leaves the group on SIGTERM
        member.wait(30)
    assert member.returncode == 0, member.stderr.read()
    _wait_for(lambda: dray_json(b, "groups", "describe", group)["state"] == "Empty", what="an empty group")

    assert dray(b, "groups", "delete", group).stdout.strip() == f"deleted consumer group {group}"
    assert group not in [g["group"] for g in dray_json(b, "groups", "list")]
    assert "does not exist" in one_line_error(dray(b, "groups", "describe", group, expect=1))
    assert "does not exist" in one_line_error(dray(b, "groups", "delete", group, expect=1))
    # Resetting the offsets of a group that does not exist (a typo) is refused and creates nothing.
    err = one_line_error(dray(b, "groups", "reset-offsets", "--group", group, "--topic", topic_name, "--to-earliest",
                              "--execute", expect=1))
    assert f"consumer group '{group}' does not exist" in err
    assert group not in [g["group"] for g in dray_json(b, "groups", "list")]


def test_help_lists_the_operator_commands():
    out = dray(None, "--help").stdout
    for command in ("topics", "produce", "consume", "groups", "cluster"):
        assert command in out
    assert "--to-timestamp" in dray(None, "groups", "reset-offsets", "--help").stdout
