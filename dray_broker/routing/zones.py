"""Zone-aware routing: a client that says `zone_id=<zone>` in its client.id (comma-separated key=value pairs)
is sent to brokers of its zone only, so that produce and fetch bytes stay in the zone (DESIGN.md section 7)."""

from __future__ import annotations

import uuid
from functools import lru_cache

from dray_broker.routing.registry import BrokerInfo, BrokerRegistry


@lru_cache(maxsize=4096)
def client_zone(client_id: str | None) -> str | None:
    """The zone a client.id names with zone_id=..., e.g. 'app=orders,zone_id=eu-west-1a' -> 'eu-west-1a'."""
    if not client_id:
        return None
    for pair in client_id.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == "zone_id" and value.strip():
            return value.strip()
    return None


def brokers_for(live: list[BrokerInfo], client_id: str | None, listener: str | None = None) -> list[BrokerInfo]:
    """The brokers a client should see: those of its zone if it names one that has live brokers, else all. With a
    listener name: those that have that listener, with its endpoint (as the client connected on it needs)."""
    if listener is not None:
        live = [b for b in (broker.on(listener) for broker in live) if b is not None]
    zone = client_zone(client_id)
    if zone is not None:
        same_zone = [b for b in live if b.zone == zone]
        if same_zone:
            return same_zone
    return live


def owner(registry: BrokerRegistry, topic_id: uuid.UUID, partition: int, client_id: str | None,
          listener: str | None = None) -> BrokerInfo:
    """The broker a client should use for a partition: the rendezvous-hash pseudo-leader among its brokers."""
    return registry.leader(topic_id, partition, brokers_for(registry.live(), client_id, listener))
