"""Apache Kafka 4.4 as a single KRaft node (broker and controller in one process) on loopback, for benchmarks.

The jars come from Maven Central: bench/kafka/pom.xml names them, Maven resolves them once and the classpath is
cached in ``$DRAY_SERVICES_DIR/kafka/<hash of pom.xml>/classpath.txt`` (tests/services.py maven_classpath);
later starts run ``java`` only. Settings are Kafka's defaults except what one node needs (replication factors 1,
no initial rebalance delay); the JVM flags are those kafka-server-start.sh uses. Needs Java 11+ and, the first
time, Maven.

    kafka = start_kafka()      # kafka.bootstrap == "127.0.0.1:PORT", kafka.pid: the broker's process
    kafka.stop()
"""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.services import (
    REPO,
    ServerHandle,
    ServiceError,
    _free_port,
    _port_open,
    _Server,
    _start,
    java_program,
    maven_classpath,
)

POM = REPO / "bench" / "kafka" / "pom.xml"
MAIN_CLASS = "kafka.Kafka"
# kafka-server-start.sh's KAFKA_HEAP_OPTS and kafka-run-class.sh's KAFKA_JVM_PERFORMANCE_OPTS.
JVM_OPTIONS = ["-Xmx1G", "-Xms1G", "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true",
               "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn"]


@dataclass(eq=False)
class KafkaService(ServerHandle):
    bootstrap: str  # "127.0.0.1:PORT"
    _server: _Server = field(repr=False)

    @property
    def pid(self) -> int:
        return self._server.process.pid


def _properties(workdir: Path, port: int, controller_port: int, partitions: int) -> str:
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={workdir / "data"}
num.partitions={partitions}
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""


def _random_cluster_id() -> str:
    """As Kafka's Uuid.randomUuid().toString(): URL-safe base64 without padding, never starting with '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def start_kafka(partitions: int = 1) -> KafkaService:
    """Formats a fresh log directory and starts Kafka on free loopback ports; ready once Metadata is answered."""
    java = java_program()
    classpath = maven_classpath(POM, "kafka")

    def command(workdir: Path):
        port, controller_port = _free_port(), _free_port()
        config = workdir / "server.properties"
        config.write_text(_properties(workdir, port, controller_port, partitions))
        cluster_id = _random_cluster_id()
        formatted = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if formatted.returncode != 0:
            raise ServiceError(f"kafka-storage format failed ({formatted.returncode}):\n{formatted.stdout}"
                               f"{formatted.stderr}")
        argv = [java, *JVM_OPTIONS, "-cp", classpath, MAIN_CLASS, str(config)]
        return argv, dict(os.environ), {"port": port}

    def ready(info: dict) -> bool:
        if not _port_open(info["port"]):
            return False
        from confluent_kafka.admin import AdminClient

        AdminClient({"bootstrap.servers": f"127.0.0.1:{info['port']}", "log_level": 0}).list_topics(timeout=2)
        return True

    server, info = _start("kafka", command, ready)
    return KafkaService(bootstrap=f"127.0.0.1:{info['port']}", _server=server)
