"""Watches: one GetNotifications stream per shard, shared by all watches of a store, fanned out to them.

A stream opened without a start offset first sends a batch positioned at the shard's commit offset; `watch()`
returns once every shard's stream has sent it, so every later change is seen. Streams resume from the last offset
after a transient failure; any other failure ends the watches with MetadataError. Each shard's notifications come
in order; a batch's are sorted by key.
"""

from __future__ import annotations

import asyncio
import logging

from dray_broker.metadata.base import MetadataError, Notification, NotificationType
from dray_broker.metadata.keys import hierarchical_sort_key
from dray_broker.metadata.oxia import codec, retries
from dray_broker.metadata.oxia.routing import Router
from dray_broker.metadata.watch import WatchQueue

log = logging.getLogger("dray.metadata.oxia")


class Feeds:
    """The shards' notification streams of one store, open while a watch needs them."""

    def __init__(self, router: Router, *, ready_timeout: float) -> None:
        self.router = router
        self.ready_timeout = ready_timeout
        self._feeds: dict[int, _ShardFeed] = {}
        self._lock = asyncio.Lock()

    async def watch(self, prefix: str) -> WatchQueue:
        w = WatchQueue(prefix, self._unsubscribe)
        async with self._lock:
            feeds = []
            for shard in self.router.shards:
                feed = self._feeds.get(shard)
                if feed is None:
                    feed = self._feeds[shard] = _ShardFeed(self.router, shard)
                feed.watches.add(w)
                feeds.append(feed)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(asyncio.shield(f.ready) for f in feeds)), self.ready_timeout
            )
        except BaseException as e:
            await w.aclose()
            if isinstance(e, asyncio.TimeoutError):
                raise MetadataError(f"oxia: notification streams not ready in {self.ready_timeout} s") from None
            raise
        return w

    async def _unsubscribe(self, w: WatchQueue) -> None:
        async with self._lock:
            for shard, feed in list(self._feeds.items()):
                feed.watches.discard(w)
                if not feed.watches:
                    del self._feeds[shard]
                    await feed.close()

    async def close(self) -> None:
        """End every watch (after what it has queued) and close the streams."""
        for feed in list(self._feeds.values()):
            for w in list(feed.watches):
                w.end()
            await feed.close()
        self._feeds.clear()


class _ShardFeed:
    """The GetNotifications stream of one shard, fanned out to its watches."""

    def __init__(self, router: Router, shard: int) -> None:
        self.router = router
        self.shard = shard
        self.watches: set[WatchQueue] = set()
        self.offset: int | None = None
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        backoff = retries.Backoff()
        while True:
            try:
                conn = self.router.leader_conn(self.shard)
                call = conn.notifications(codec.encode_notifications_request(self.shard, self.offset))
                async for raw in call:
                    backoff.reset()
                    _shard, offset, items = codec.decode_notification_batch(raw)
                    if self.offset is None:
                        # The first batch of a stream opened without an offset: positioned at the commit offset.
                        self.offset = offset
                        if not self.ready.done():
                            self.ready.set_result(None)
                        if not items:
                            continue
                    elif offset <= self.offset:
                        continue
                    self.offset = offset
                    if items:
                        self._dispatch(items)
                raise retries.StreamBroken("oxia: notification stream ended")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                if not retries.is_transient(e):
                    err = MetadataError(f"oxia: notifications of shard {self.shard} failed: {retries.details(e)}")
                    if not self.ready.done():
                        self.ready.set_exception(err)
                    for w in list(self.watches):
                        w.fail(err)
                    return
                log.debug("oxia: notification stream of shard %d failed: %s", self.shard, retries.details(e))
                await asyncio.sleep(backoff.next())

    def _dispatch(self, items: list[tuple[str, int, int | None, str | None]]) -> None:
        items.sort(key=lambda it: hierarchical_sort_key(it[0]))
        for w in list(self.watches):
            notes = []
            for key, ntype, version_id, range_last in items:
                t = codec.NOTIFICATION_TYPES.get(ntype)
                if t is None:
                    continue
                if t is NotificationType.RANGE_DELETED:
                    if range_last is None or not w.prefix.touches_range(key, range_last):
                        continue
                    notes.append(Notification(key, t, None, range_last))
                elif w.prefix.matches(key):
                    notes.append(Notification(key, t, None if t is NotificationType.DELETED else version_id))
            if notes:
                w.push_many(notes)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        if not self.ready.done():
            self.ready.cancel()
