"""What Kafka, kcat and rpk users type works with `dray`: kcat's -o forms, rpk's singular commands, producing to
a topic the broker creates on first use, and clear usage errors. The real CLI against a real broker."""

from __future__ import annotations

from importlib.metadata import version

from tests.integration.brokers import BrokerProcess
from tests.integration.test_cli import BASE_TS, dray, dray_json, one_line_error, produce_timed


def _consumed(b, *args: str) -> list[str]:
    """'partition:offset' of what `dray consume ARGS -e` prints, sorted."""
    return sorted(dray(b, "consume", *args, "-e", "-f", r"%p:%o\n").stdout.splitlines())


def test_consume_takes_kcat_offsets_on_every_partition(embedded_broker, topic_name):
    b = embedded_broker
    dray(b, "topics", "create", topic_name, "-p", "2")
    produce_timed(b, topic_name, [str(i).encode() for i in range(6)], partition=0)
    produce_timed(b, topic_name, [str(i).encode() for i in range(4)], partition=1)
    every = sorted([f"0:{o}" for o in range(6)] + [f"1:{o}" for o in range(4)])

    for start in ("beginning", "start", "earliest"):
        assert _consumed(b, topic_name, "-o", start) == every, start
    assert _consumed(b, "-t", topic_name, "--from-beginning") == every  # kcat's -t
    for start in ("end", "latest"):
        assert _consumed(b, topic_name, "-o", start) == [], start
    # -o N and -o -N apply to every partition without --partition (as kcat), and to the chosen ones with it.
    assert _consumed(b, topic_name, "-o", "3") == ["0:3", "0:4", "0:5", "1:3"]
    assert _consumed(b, topic_name, "--offset", "-2") == ["0:4", "0:5", "1:2", "1:3"]
    assert _consumed(b, topic_name, "-o", "-2", "-p", "1") == ["1:2", "1:3"]
    # s@TIME: the first record at or after the time (ms or ISO 8601), in every partition.
    assert _consumed(b, topic_name, "-o", f"s@{BASE_TS + 4000}") == ["0:4", "0:5"]
    assert _consumed(b, topic_name, "-o", "s@2023-11-14T22:13:23Z") == ["0:3", "0:4", "0:5", "1:3"]

    # stored: a group's committed offsets; beginning with a group starts where it has none.
    group = f"g-{topic_name}"
    assert len(dray(b, "consume", topic_name, "-G", group, "-o", "beginning", "-c", "10").stdout.splitlines()) == 10
    assert _consumed(b, topic_name, "-G", group, "-o", "stored") == []
    assert "give the group with --group" in one_line_error(dray(b, "consume", topic_name, "-o", "stored", expect=2))

    bad = dray(b, "consume", topic_name, "-o", "yesterday", expect=2)
    assert bad.stderr.startswith("usage: dray consume") and "s@TIME" in bad.stderr
    assert "give the topic once" in one_line_error(dray(b, "consume", topic_name, "-t", topic_name, expect=2))


def test_rpk_singular_commands(embedded_broker, topic_name):
    b = embedded_broker
    assert dray(b, "topic", "create", topic_name, "-p", "1", "-r", "1").stdout.strip() == (
        f"created topic {topic_name} with 1 partition")  # one partition, not "1 partitions"
    assert {"topic": topic_name, "partitions": 1} in dray_json(b, "topic", "list")
    dray(b, "topic", "produce", topic_name, "-K", ":", stdin="k:v\n")
    assert dray(b, "topic", "consume", topic_name, "-o", "start", "-e", "-f", r"%k=%s\n").stdout == "k=v\n"
    dray(b, "consume", topic_name, "-G", f"g-{topic_name}", "-o", "beginning", "-c", "1")
    assert f"g-{topic_name}" in [g["group"] for g in dray_json(b, "group", "list")]
    assert dray_json(b, "group", "describe", f"g-{topic_name}")["offsets"][0]["committed"] == 1
    assert "brokers:    1 in 1 zone\n" in dray(b, "cluster", "info").stdout  # one zone, not "1 zones"


def test_produce_to_a_new_topic_as_kcat_does(embedded_broker, topic_name, tmp_path):
    b = embedded_broker
    # The broker creates topics on first use (auto.create.topics.enable): so does `dray produce`, and says so.
    done = dray(b, "produce", topic_name, stdin="a\nb\n")
    assert done.stdout.startswith(f"produced 2 records to {topic_name} in ")
    assert f"topic '{topic_name}' did not exist: the broker created it with 1 partition" in done.stderr
    assert {"topic": topic_name, "partitions": 1} in dray_json(b, "topics", "list")
    again = dray(b, "produce", topic_name, stdin="c\n")
    assert again.stderr == "" and "(partition 0: 1 at offset 2)" in again.stdout
    assert dray(b, "consume", topic_name, "-o", "beginning", "-e").stdout == "a\nb\nc\n"

    # A broker that does not create topics: the command says so and how to create it; nothing is created.
    strict = BrokerProcess(tmp_path / "strict", extra_args=["--no-auto-create-topics"]).start()
    try:
        err = one_line_error(dray(strict, "produce", topic_name, stdin="x\n", expect=1))
        assert "does not exist and the broker does not create topics on first use" in err
        assert f"dray topics create {topic_name}" in err
        assert dray_json(strict, "topics", "list") == []
    finally:
        strict.stop()


def test_version_and_usage_errors(embedded_broker):
    b = embedded_broker
    installed = version("dray")
    assert dray(None, "--version").stdout == f"dray {installed}\n"
    assert dray(None, "version").stdout == f"dray {installed}\n"
    assert dray_json(b, "cluster", "status")["dray_version"] == installed
    assert f"version:    dray {installed} (this command)" in dray(b, "cluster", "status").stdout
    assert f"dray {installed} broker " in b.log() and " ready on " in b.log()

    # A flag a subcommand does not know: that subcommand's usage, not the top-level one.
    for args, usage in ((["consume", "t", "--bogus"], "usage: dray consume"),
                        (["groups", "list", "--bogus"], "usage: dray groups list"),
                        (["broker", "--bogus"], "usage: dray broker")):
        err = dray(b, *args, expect=2).stderr
        assert err.startswith(usage) and "unrecognized arguments: --bogus" in err, err
