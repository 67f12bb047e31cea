"""CreateAcls, DescribeAcls and DeleteAcls (v1-3, Kafka 4's floors): the cluster's ACLs, kept by the AclStore.
Who may call them (ALTER / DESCRIBE on the cluster) is the dispatcher's check (auth/api_checks.py); without an
authorizer (--acls off) they answer SECURITY_DISABLED, as Kafka does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from dray_broker.auth.acl_store import AclStore
from dray_broker.auth.acls import (
    AclBinding,
    AclBindingFilter,
    InvalidAcl,
    Operation,
    PatternType,
    Permission,
    ResourceType,
)
from dray_broker.protocol.codec import Request, make, response_module
from dray_broker.server.handling import RequestContext, Response

SECURITY_DISABLED = "No Authorizer is configured (start the brokers with --acls)"


@dataclass(frozen=True, slots=True)
class AclService:
    store: AclStore | None  # None: the authorizer is off


def _filter(f: Any) -> AclBindingFilter:
    """A DescribeAcls request or a DeleteAcls filter (kio types of several versions)."""
    return AclBindingFilter(ResourceType(f.resource_type_filter), f.resource_name_filter,
                            PatternType(f.pattern_type_filter), f.principal_filter, f.host_filter,
                            Operation(f.operation), Permission(f.permission_type))


async def handle_create_acls(service: AclService, ctx: RequestContext, req: Request) -> Response:
    M = response_module(req.api_key, req.version)
    results = []
    for c in req.body.creations:
        code, message = ErrorCode.none, None
        if service.store is None:
            code, message = ErrorCode.security_disabled, SECURITY_DISABLED
        else:
            try:
                await service.store.create(AclBinding(
                    ResourceType(c.resource_type), c.resource_name, PatternType(c.resource_pattern_type),
                    c.principal, c.host, Operation(c.operation), Permission(c.permission_type)))
            except InvalidAcl as e:
                code, message = ErrorCode.invalid_request, str(e)
        results.append(make(M.AclCreationResult, error_code=code, error_message=message))
    return Response(make(M.CreateAclsResponse, throttle_time=0, results=tuple(results)))


async def handle_describe_acls(service: AclService, ctx: RequestContext, req: Request) -> Response:
    M = response_module(req.api_key, req.version)
    if service.store is None:
        return Response(make(M.DescribeAclsResponse, throttle_time=0, error_code=ErrorCode.security_disabled,
                             error_message=SECURITY_DISABLED, resources=()))
    try:
        bindings = service.store.describe(_filter(req.body))
    except InvalidAcl as e:
        return Response(make(M.DescribeAclsResponse, throttle_time=0, error_code=ErrorCode.invalid_request,
                             error_message=str(e), resources=()))
    by_resource: dict[tuple[ResourceType, str, PatternType], list[AclBinding]] = {}
    for b in bindings:
        by_resource.setdefault((b.resource_type, b.name, b.pattern_type), []).append(b)
    resources = tuple(
        make(M.DescribeAclsResource, resource_type=rt, resource_name=name, pattern_type=pt,
             acls=tuple(make(M.AclDescription, principal=b.principal, host=b.host, operation=b.operation,
                             permission_type=b.permission) for b in acls))
        for (rt, name, pt), acls in sorted(by_resource.items()))
    return Response(make(M.DescribeAclsResponse, throttle_time=0, error_code=ErrorCode.none, error_message=None,
                         resources=resources))


async def handle_delete_acls(service: AclService, ctx: RequestContext, req: Request) -> Response:
    M = response_module(req.api_key, req.version)
    results = []
    for f in req.body.filters:
        if service.store is None:
            results.append(make(M.DeleteAclsFilterResult, error_code=ErrorCode.security_disabled,
                                error_message=SECURITY_DISABLED, matching_acls=()))
            continue
        try:
            deleted = await service.store.delete(_filter(f))
        except InvalidAcl as e:
            results.append(make(M.DeleteAclsFilterResult, error_code=ErrorCode.invalid_request,
                                error_message=str(e), matching_acls=()))
            continue
        results.append(make(M.DeleteAclsFilterResult, error_code=ErrorCode.none, error_message=None,
                            matching_acls=tuple(
                                make(M.DeleteAclsMatchingAcl, error_code=ErrorCode.none, error_message=None,
                                     resource_type=b.resource_type, resource_name=b.name, pattern_type=b.pattern_type,
                                     principal=b.principal, host=b.host, operation=b.operation,
                                     permission_type=b.permission) for b in deleted)))
    return Response(make(M.DeleteAclsResponse, throttle_time=0, filter_results=tuple(results)))
