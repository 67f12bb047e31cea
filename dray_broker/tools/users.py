"""`dray users list|create|delete|bootstrap`: SCRAM users (the credentials SASL logins are checked against).

list, create and delete go through a broker over the Kafka API (DescribeUserScramCredentials,
AlterUserScramCredentials), as `kafka-configs --alter --add-config SCRAM-SHA-256=[...]` does: the password is salted
by the client and never sent. bootstrap writes a credential straight into the metadata store, before any broker runs
(Kafka's `kafka-storage format --add-scram`): the first user of a cluster whose only listeners need a login.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from pathlib import Path
from urllib.parse import urlparse

from confluent_kafka.admin import (
    ScramCredentialInfo,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from confluent_kafka.admin import ScramMechanism as ClientMechanism

from dray_broker.config import ConfigError, StorageSettings, add_flags
from dray_broker.tools.client import EXIT_USAGE, ToolError, admin_client, command, connection_flags, wait
from dray_broker.tools.output import note, print_json, print_table

MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
DEFAULT_ITERATIONS = 4096


def register(sub) -> None:
    common = connection_flags()
    users = sub.add_parser("users", aliases=["user"], help="SCRAM users: list, create, delete, bootstrap")
    usub = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")

    p = usub.add_parser("list", parents=[common], help="users with SCRAM credentials (mechanisms, iterations)")
    p.set_defaults(func=cmd_list)

    p = usub.add_parser("create", aliases=["alter"], parents=[common],
                        help="create a user, or change its password (through a broker)")
    _credential_flags(p)
    p.set_defaults(func=cmd_create)

    p = usub.add_parser("delete", parents=[common], help="delete a user's SCRAM credentials")
    p.add_argument("name")
    p.add_argument("--mechanism", choices=MECHANISMS, default=None,
                   help="delete only this mechanism's credential (default: every one the user has)")
    p.set_defaults(func=cmd_delete)

    p = usub.add_parser("bootstrap", help="write a user's credential straight into the metadata store, before any "
                                          "broker runs (the first user of a SASL-only cluster)")
    _credential_flags(p)
    add_flags(p.add_argument_group("storage"), StorageSettings, fields=["data_dir", "metadata"])
    p.set_defaults(func=cmd_bootstrap)


def _credential_flags(p) -> None:
    p.add_argument("name")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--password-stdin", action="store_true", help="read the password from the first line of "
                        "standard input")
    secret.add_argument("--password", help="the password (visible to other users of this machine: prefer "
                        "--password-stdin; without either, it is asked for)")
    p.add_argument("--mechanism", choices=MECHANISMS, default="SCRAM-SHA-256",
                   help="the SCRAM mechanism (default %(default)s; PLAIN logins use either)")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                   help="PBKDF2 iterations, 4096 to 16384 (default %(default)s)")


def _password(args) -> str:
    if args.password is not None:
        password = args.password
    elif args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
    else:
        raise ToolError("give the password with --password-stdin (or --password)", EXIT_USAGE)
    if not password:
        raise ToolError("the password is empty", EXIT_USAGE)
    return password


def _client_mechanism(name: str) -> ClientMechanism:
    return ClientMechanism.SCRAM_SHA_256 if name == "SCRAM-SHA-256" else ClientMechanism.SCRAM_SHA_512


def _mechanism_name(mechanism: ClientMechanism) -> str:
    return {ClientMechanism.SCRAM_SHA_256: "SCRAM-SHA-256", ClientMechanism.SCRAM_SHA_512: "SCRAM-SHA-512"}.get(
        mechanism, str(mechanism))


# --- through a broker ---------------------------------------------------------------------------------------------


@command
def cmd_list(args) -> int:
    admin = admin_client(args)
    described = wait(admin.describe_user_scram_credentials(request_timeout=args.timeout), args, "listing users")
    rows = sorted((name, _mechanism_name(info.mechanism), info.iterations)
                  for name, description in described.items() for info in description.scram_credential_infos)
    if args.json:
        print_json([{"user": u, "mechanism": m, "iterations": i} for u, m, i in rows])
    else:
        print_table(["USER", "MECHANISM", "ITERATIONS"], rows)
    return 0


@command
def cmd_create(args) -> int:
    password = _password(args)
    admin = admin_client(args)
    upsertion = UserScramCredentialUpsertion(
        args.name, ScramCredentialInfo(_client_mechanism(args.mechanism), args.iterations), password.encode())
    futures = admin.alter_user_scram_credentials([upsertion], request_timeout=args.timeout)
    wait(futures[args.name], args, f"cannot set the {args.mechanism} credential of {args.name!r}")
    if args.json:
        print_json({"user": args.name, "mechanism": args.mechanism, "iterations": args.iterations})
    else:
        print(f"user {args.name} can log in with {args.mechanism} (and PLAIN where enabled)")
    return 0


@command
def cmd_delete(args) -> int:
    admin = admin_client(args)
    if args.mechanism is not None:
        mechanisms = [args.mechanism]
    else:
        described = wait(admin.describe_user_scram_credentials([args.name], request_timeout=args.timeout)[args.name],
                         args, f"user {args.name!r}")
        mechanisms = [_mechanism_name(info.mechanism) for info in described.scram_credential_infos]
    deletions = [UserScramCredentialDeletion(args.name, _client_mechanism(m)) for m in mechanisms]
    futures = admin.alter_user_scram_credentials(deletions, request_timeout=args.timeout)
    wait(futures[args.name], args, f"cannot delete the credentials of {args.name!r}")
    if args.json:
        print_json({"user": args.name, "deleted": mechanisms})
    else:
        print(f"deleted the {', '.join(mechanisms)} credential{'s' if len(mechanisms) > 1 else ''} of {args.name}")
    return 0


# --- straight into the store ---------------------------------------------------------------------------------------


def cmd_bootstrap(args) -> int:
    from dray_broker.auth.credentials import ScramMechanism
    from dray_broker.auth.scram import UnacceptableCredential, new_credential

    try:
        storage = StorageSettings.load(args)
        password = _password(args)
        mechanism = ScramMechanism.from_name(args.mechanism)
        assert mechanism is not None
        try:
            credential = new_credential(mechanism, password, args.iterations)
        except UnacceptableCredential as e:
            raise ToolError(f"--iterations {args.iterations}: {e} (4096 to 16384)", EXIT_USAGE) from None
        url = storage.metadata_url
        parsed = urlparse(url)
        if parsed.scheme == "sqlite":
            Path(parsed.path).parent.mkdir(parents=True, exist_ok=True)
        asyncio.run(asyncio.wait_for(_store(url, args.name, credential), 30))
    except ConfigError as e:
        note(f"dray: {e}")
        return EXIT_USAGE
    except ToolError as e:
        note(f"dray: {e}")
        return e.code
    except TimeoutError:
        note(f"dray: the metadata store at {url} did not answer within 30 s")
        return 1
    print(f"user {args.name} can log in with {args.mechanism} (written to {url})")
    return 0


async def _store(url: str, name: str, credential) -> None:
    from dray_broker.auth.credential_store import ScramCredentialStore
    from dray_broker.metadata import open_metadata_store

    store = await open_metadata_store(url)
    try:
        await ScramCredentialStore(store).put(name, credential)
    finally:
        await store.close()
