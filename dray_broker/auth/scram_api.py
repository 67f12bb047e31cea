"""The Kafka APIs that manage SCRAM credentials (KIP-554): DescribeUserScramCredentials (50) and
AlterUserScramCredentials (51), over the credentials in the metadata store (credential_store.py).

Answers and messages are Kafka's (ScramControlManager, ZkAdminManager):
- Describe: no users (null or empty) lists every user that has a credential; a user asked twice gets
  DUPLICATE_RESOURCE, a user without a credential RESOURCE_NOT_FOUND.
- Alter: one result per user named. A user altered twice for one mechanism gets DUPLICATE_RESOURCE; an empty user
  name or a bad iteration count UNACCEPTABLE_CREDENTIAL; an unknown mechanism UNSUPPORTED_SASL_MECHANISM; deleting
  a credential that does not exist RESOURCE_NOT_FOUND. A user's changes are applied only if all of them are valid.
  The client salts the password (upsertion: salt, salted password, iterations); the broker keeps only what a
  SCRAM server needs (scram.credential_from_upsertion).
Who may call them (cluster DESCRIBE, cluster ALTER) is the authorizer's business (auth/api_checks.py).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from kio.schema.errors import ErrorCode

from dray_broker.auth.credential_store import ScramCredentialStore
from dray_broker.auth.credentials import ScramCredential, ScramMechanism
from dray_broker.auth.scram import UnacceptableCredential, credential_from_upsertion
from dray_broker.protocol import apis
from dray_broker.protocol.codec import Request, make, response_module
from dray_broker.server.handling import RequestContext, Response
from dray_broker.server.services import UserService


async def handle_describe_user_scram_credentials(users: UserService, ctx: RequestContext, req: Request) -> Response:
    M = response_module(apis.DESCRIBE_USER_SCRAM_CREDENTIALS, req.version)
    asked = [u.name for u in req.body.users or ()]
    results = []
    if not asked:
        for name, credentials in (await users.credentials.all()).items():
            results.append(_described(M, name, credentials))
    else:
        counts = Counter(asked)
        for name in dict.fromkeys(asked):
            if counts[name] > 1:
                results.append(_describe_error(M, name, ErrorCode.duplicate_resource,
                                               "Cannot describe SCRAM credentials for the same user twice in a "
                                               f"single request: {name}"))
                continue
            credentials = [c for m in ScramMechanism if (c := await users.credentials.get(name, m)) is not None]
            if credentials:
                results.append(_described(M, name, credentials))
            else:
                results.append(_describe_error(M, name, ErrorCode.resource_not_found,
                                               f"Attempt to describe a user credential that does not exist: {name}"))
    return Response(make(M.DescribeUserScramCredentialsResponse, throttle_time=0, error_code=ErrorCode.none,
                         error_message=None, results=tuple(results)))


def _described(M: Any, name: str, credentials: list[ScramCredential]) -> Any:
    infos = tuple(make(M.CredentialInfo, mechanism=c.mechanism.type_code, iterations=c.iterations)
                  for c in credentials)
    return make(M.DescribeUserScramCredentialsResult, user=name, error_code=ErrorCode.none, error_message=None,
                credential_infos=infos)


def _describe_error(M: Any, name: str, code: ErrorCode, message: str) -> Any:
    return make(M.DescribeUserScramCredentialsResult, user=name, error_code=code, error_message=message,
                credential_infos=())


class _Refused(Exception):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


async def handle_alter_user_scram_credentials(users: UserService, ctx: RequestContext, req: Request) -> Response:
    M = response_module(apis.ALTER_USER_SCRAM_CREDENTIALS, req.version)
    body = req.body
    # Per user, in the order users are first named: deletions (mechanism) and upsertions (credential), validated.
    changes: dict[str, list[tuple[ScramMechanism, ScramCredential | None]]] = {}
    errors: dict[str, _Refused] = {}
    seen: Counter[tuple[str, int]] = Counter((op.name, op.mechanism) for op in (*body.deletions, *body.upsertions))
    for op in (*body.deletions, *body.upsertions):
        changes.setdefault(op.name, [])
        if op.name in errors:
            continue
        try:
            changes[op.name].append(_validated(op, seen[(op.name, op.mechanism)]))
        except _Refused as e:
            errors[op.name] = e
    results = []
    for name, ops in changes.items():
        error = errors.get(name)
        if error is None:
            try:
                await _apply(users.credentials, name, ops)
            except _Refused as e:
                error = e
        results.append(make(M.AlterUserScramCredentialsResult, user=name,
                            error_code=error.code if error else ErrorCode.none,
                            error_message=error.message if error else None))
    return Response(make(M.AlterUserScramCredentialsResponse, throttle_time=0, results=tuple(results)))


def _validated(op: Any, times_named: int) -> tuple[ScramMechanism, ScramCredential | None]:
    """(mechanism, the credential to store or None to delete), or _Refused."""
    if times_named > 1:
        raise _Refused(ErrorCode.duplicate_resource, "A user credential cannot be altered twice in the same request")
    if not op.name:
        raise _Refused(ErrorCode.unacceptable_credential, "Username must not be empty")
    mechanism = ScramMechanism.from_type(op.mechanism)
    if mechanism is None:
        raise _Refused(ErrorCode.unsupported_sasl_mechanism, "Unknown SCRAM mechanism")
    if not hasattr(op, "salted_password"):  # a deletion
        return mechanism, None
    try:
        return mechanism, credential_from_upsertion(mechanism, bytes(op.salt), bytes(op.salted_password),
                                                    op.iterations)
    except UnacceptableCredential as e:
        raise _Refused(ErrorCode.unacceptable_credential, str(e)) from None


async def _apply(store: ScramCredentialStore, name: str,
                 ops: list[tuple[ScramMechanism, ScramCredential | None]]) -> None:
    for mechanism, credential in ops:  # deletions first: check they exist before anything changes
        if credential is None and await store.get(name, mechanism) is None:
            raise _Refused(ErrorCode.resource_not_found, "Attempt to delete a user credential that does not exist")
    for mechanism, credential in ops:
        if credential is None:
            await store.delete(name, mechanism)
        else:
            await store.put(name, credential)
