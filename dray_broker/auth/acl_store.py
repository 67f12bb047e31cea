"""The cluster's ACLs in the metadata store, one key per binding (keyspace.acl_key: its content id, so creating an
existing ACL through any broker changes nothing, as in Kafka), mirrored into every broker's Authorizer by a watch:
an ACL created or deleted through one broker is enforced by every other as soon as the store tells them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from dray_broker.auth.acls import AclBinding, AclBindingFilter, Authorizer, InvalidAcl
from dray_broker.keyspace import ACLS, acl_key, parse_acl_key
from dray_broker.metadata import MetadataStore, Watch
from dray_broker.metadata.base import MUST_NOT_EXIST, NotificationType, VersionMismatchError

log = logging.getLogger(__name__)

RESYNC_DELAY_S = 1.0  # after the watch broke, reload everything this much later


class AclStore:
    def __init__(self, store: MetadataStore, authorizer: Authorizer):
        self.store = store
        self.authorizer = authorizer
        self._by_id: dict[str, AclBinding] = {}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        watch = await self._load()
        self._task = asyncio.create_task(self._follow(watch), name="acl-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _load(self) -> Watch:
        """Watch first, then read everything: no change falls between the two."""
        watch = await self.store.watch(ACLS.prefix)
        by_id: dict[str, AclBinding] = {}
        for e in await self.store.range_scan(ACLS.prefix, ACLS.end, partition_key=ACLS.partition_key):
            binding_id = parse_acl_key(e.key)
            binding = self._decode(e.key, e.value) if binding_id is not None else None
            if binding_id is not None and binding is not None:
                by_id[binding_id] = binding
        self._by_id = by_id
        self.authorizer.replace(by_id.values())
        return watch

    async def _follow(self, watch: Watch) -> None:
        while True:
            try:
                async for n in watch:
                    if n.type is NotificationType.RANGE_DELETED:
                        await watch.aclose()
                        watch = await self._load()
                        break
                    binding_id = parse_acl_key(n.key)
                    if binding_id is None:
                        continue
                    if n.type is NotificationType.DELETED:
                        self._forget(binding_id)
                    else:
                        e = await self.store.get(n.key, partition_key=ACLS.partition_key)
                        if e is None:
                            self._forget(binding_id)
                        elif (binding := self._decode(e.key, e.value)) is not None:
                            self._remember(binding_id, binding)
                else:
                    return  # the store closed
            except asyncio.CancelledError:
                await watch.aclose()
                raise
            except Exception:
                log.exception("ACL watch failed; reloading the ACLs in %.0f s", RESYNC_DELAY_S)
                await asyncio.sleep(RESYNC_DELAY_S)
                try:
                    watch = await self._load()
                except Exception:
                    log.exception("reloading the ACLs failed")

    def _remember(self, binding_id: str, binding: AclBinding) -> None:
        if binding_id not in self._by_id:
            self._by_id[binding_id] = binding
            self.authorizer.add(binding)

    def _forget(self, binding_id: str) -> None:
        binding = self._by_id.pop(binding_id, None)
        if binding is not None:
            self.authorizer.remove(binding)

    @staticmethod
    def _decode(key: str, value: bytes) -> AclBinding | None:
        try:
            return AclBinding.from_json(value)
        except InvalidAcl as e:
            log.error("ignoring the unreadable ACL %s: %s", key, e)
            return None

    # --- changes (CreateAcls, DeleteAcls) -----------------------------------------------------------------------

    async def create(self, binding: AclBinding) -> None:
        """Store a binding (validated; InvalidAcl if Kafka would refuse it). Enforced here at once, elsewhere when
        the watch brings it."""
        binding.validate()
        binding_id = binding.stable_id()
        try:
            await self.store.put(acl_key(binding_id), binding.to_json(), expected_version=MUST_NOT_EXIST,
                                 partition_key=ACLS.partition_key)
        except VersionMismatchError:
            pass  # created already (the same binding has the same id)
        self._remember(binding_id, binding)

    async def delete(self, acl_filter: AclBindingFilter) -> list[AclBinding]:
        """Delete the bindings the filter matches; the ones deleted."""
        acl_filter.validate()
        deleted = []
        for binding in self.authorizer.acls(acl_filter):
            binding_id = binding.stable_id()
            await self.store.delete(acl_key(binding_id), partition_key=ACLS.partition_key)
            self._forget(binding_id)
            deleted.append(binding)
        return deleted

    def describe(self, acl_filter: AclBindingFilter) -> Iterable[AclBinding]:
        acl_filter.validate()
        return self.authorizer.acls(acl_filter)
