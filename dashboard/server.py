"""The production HTTP server: waitress, in the `renderfarm dashboard` process(es).

Why waitress: pure Python and threaded, so one process serves many connections that each
block for a long time (a `/sdapi/v1` generation call, an event stream) with no worker
timeout that kills a slow request; it embeds in our own command with one call (no second
entry point), and it streams a response as the app writes it. A connection with a request in
progress is never closed by it: the bound on a blocking call is the app's own
(`RENDERFARM_SDAPI_WAIT_S`); put any proxy's read timeout above that.

Processes: Python runs one thread of a process at a time, so one process is bounded by a
core. With `http_processes` above 1 the command binds the port once and forks that many
server processes, which accept on the same sockets (the kernel spreads the connections); each
builds its own app, hence its own Redis and storage pools. Everything they share is in
Redis (sign-in cookies are signed with the key kept there, throttles, options, the queue),
so any process answers any request, as replicas behind a load balancer do. The first process
watches them: it replaces one that dies, stops when one cannot even start, and stops them all
on SIGTERM or Ctrl-C; a server process whose parent is gone exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event

from flask import Flask
from waitress import serve as waitress_serve

from shared.config import Settings

log = logging.getLogger("renderfarm.server")
MAX_AUTO_PROCESSES = 4
BACKLOG = 2048  # connections the kernel holds for the processes to accept


def process_count(settings: Settings) -> int:
    """`http_processes`, or (0) one per usable core, at most MAX_AUTO_PROCESSES."""
    if settings.http_processes:
        return settings.http_processes
    return max(1, min(len(os.sched_getaffinity(0)), MAX_AUTO_PROCESSES))


def listen(host: str, port: int) -> list[socket.socket]:
    """The server's sockets, one per address `host` resolves to (as waitress binds them),
    bound now: a port already taken fails here, before any fork."""
    found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = dict.fromkeys((family, address) for family, _, _, _, address in found)
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            sockets.append(socket.create_server(address, family=family, backlog=BACKLOG))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise SystemExit(f"cannot listen on {host}:{port}: {os.strerror(exc.errno or 0)}") from None
    return sockets


def serve(make_app: Callable[[], Flask], host: str, port: int, settings: Settings) -> None:
    """Serve the app `make_app` builds on host:port until stopped (SIGTERM, Ctrl-C)."""
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" noise
    sockets = listen(host, port)
    processes = process_count(settings)
    if processes == 1:
        _serve(make_app(), sockets, settings)
    else:
        _supervise(make_app, sockets, settings, processes)


def _serve(app: Flask, sockets: list[socket.socket], settings: Settings) -> None:
    waitress_serve(
        app,
        sockets=sockets,
        threads=settings.http_threads,
        connection_limit=settings.http_connection_limit,
        channel_timeout=settings.http_channel_timeout_s,
        # Keep reading a connection while its request runs: a client that closed it is seen
        # at once (dashboard/holds.py:client_gone), not at the response's next write.
        channel_request_lookahead=1,
        backlog=BACKLOG,
        ident="renderfarm",
    )


def _server_process(
    make_app: Callable[[], Flask], sockets: list[socket.socket], settings: Settings, ready: Event
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (Ctrl-C reaches all)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    app = make_app()
    ready.set()
    _serve(app, sockets, settings)


def _exit_with_parent(parent: int) -> None:
    """A parent killed outright (SIGKILL) cannot stop us: no orphan keeps serving the port."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _supervise(
    make_app: Callable[[], Flask], sockets: list[socket.socket], settings: Settings, processes: int
) -> None:
    # fork: the children inherit the bound sockets; this process holds no thread or pool yet.
    context = multiprocessing.get_context("fork")
    started: dict[BaseProcess, Event] = {}  # each process, and whether its app was built

    def start() -> None:
        ready = context.Event()
        proc = context.Process(
            target=_server_process,
            args=(make_app, sockets, settings, ready),
            name="renderfarm-http",
        )
        proc.start()
        started[proc] = ready

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    log.info("%d HTTP processes (RENDERFARM_HTTP_PROCESSES), each:", processes)
    try:
        for _ in range(processes):
            start()
        while True:
            gone = wait([p.sentinel for p in started])
            for proc in [p for p in started if p.sentinel in gone]:
                proc.join()
                if not started.pop(proc).is_set():  # its error is above; so would the next's be
                    log.error("an HTTP process could not start (exit code %s)", proc.exitcode)
                    raise SystemExit(1)
                log.warning("HTTP process %s exited (%s), replaced", proc.pid, proc.exitcode)
                time.sleep(1.0)  # a process that keeps dying costs a second each time
                start()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in started:
            proc.terminate()
        for proc in started:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
