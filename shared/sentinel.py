"""Redis Sentinel: `sentinel://` URLs, and clients that follow the master through a failover.

The URL form is kombu's (Celery reads the same string): one `sentinel://host:port` per
sentinel, joined by `;`, the Redis password (and user) on the first one, the database as
its path: `sentinel://:pw@s1:26379/0;sentinel://s2:26379`. The master's name and the
sentinels' own password are settings (`redis_sentinel_master`, `redis_sentinel_password`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import Redis
from redis.exceptions import ConnectionError, ResponseError
from redis.sentinel import Sentinel, SentinelManagedConnection

SCHEME = "sentinel"
DEFAULT_PORT = 26379


@dataclass(frozen=True)
class SentinelUrl:
    nodes: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel_url(url: str) -> bool:
    return url.strip().lower().startswith(f"{SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The sentinels, database and credentials of a `sentinel://` URL; ValueError saying
    what is wrong with it (never echoing the password)."""
    nodes: list[tuple[str, int]] = []
    db: int | None = None
    username = password = None
    for n, part in enumerate(p.strip() for p in url.split(";")):
        if not part:
            continue
        where = f"sentinel {n + 1}"
        parts = urlsplit(part)
        if parts.scheme.lower() != SCHEME:
            raise ValueError(f"{where}: every part must start with {SCHEME}://")
        if parts.query or parts.fragment:
            raise ValueError(f"{where}: a query or fragment is not supported")
        try:
            host, port = parts.hostname, parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError(f"{where}: the port must be a number from 1 to 65535") from None
        if not host:
            raise ValueError(f"{where}: no host")
        first = not nodes
        nodes.append((host, port))
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise ValueError(f"{where}: the database (the path) must be a number")
            if db is not None and int(path) != db:
                raise ValueError(f"{where}: its database differs from the one before")
            db = int(path)
        user = unquote(parts.username) if parts.username else None
        secret = unquote(parts.password) if parts.password else None
        if first:
            username, password = user, secret
        elif (user or secret) and (user, secret) != (username, password):
            raise ValueError(f"{where}: its credentials differ from the first sentinel's")
    if not nodes:
        raise ValueError(f"no sentinel: expected {SCHEME}://host:port[;{SCHEME}://host:port...]")
    return SentinelUrl(tuple(nodes), db or 0, username, password)


def without_password(url: str) -> str:
    """`url` (any Redis URL, each `;` part of a sentinel one) with its password masked, for
    messages."""
    return ";".join(re.sub(r"(://[^/:@;]*:)[^/;]*@", r"\1***@", p) for p in url.split(";"))


class FailoverConnection(SentinelManagedConnection):
    """A connection to the master that finds the master again whenever it reconnects, and
    treats "unblocked: this server is a replica now" as a lost connection.

    - redis-py reconnects a dropped connection, when it retries a command, to the address it
      had (redis-py #3874): after a failover its retries all go to the old master. Here every
      reconnection asks the sentinels first.
    - Sentinel closes the connections of the old master when it demotes it: a lost
      connection, retried on the new master. A server demoted without that (`REPLICAOF` or
      `FAILOVER` by hand) answers a blocked BRPOP/XREAD with `-UNBLOCKED ... (master ->
      replica?)`, a plain error: raised as a ConnectionError (as redis-py does for READONLY),
      the client's retry re-sends the command to the new master, and the caller sees nothing.
    """

    def connect_to(self, address: tuple[str, int]) -> None:
        self.host, self.port = address
        super().connect_check_health(
            check_health=self.connection_pool.check_connection, retry_socket_connect=False
        )

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if not self._sock and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health, retry_socket_connect)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if str(exc).startswith("UNBLOCKED") and self.connection_pool.is_master:
                self.disconnect()
                raise ConnectionError("the master was demoted while a command blocked") from exc
            raise


def master_client(
    url: SentinelUrl,
    master: str,
    sentinel_password: str | None,
    options: dict[str, Any],
) -> Redis:
    """A client of the current master of `master`, found through the sentinels and found
    again after a failover (on a lost connection, READONLY or UNBLOCKED)."""
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": min(options["socket_timeout"], 5),
        "socket_connect_timeout": options["socket_connect_timeout"],
    }
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    sentinel = Sentinel(list(url.nodes), sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(
        master,
        connection_class=FailoverConnection,
        db=url.db,
        username=url.username,
        password=url.password,
        **options,
    )
