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

Stopping (SIGTERM, or a first Ctrl-C) loses no request: a process closes its listening
sockets at once (a new connection is refused, so a balancer's retry goes to another replica or
to the restarted command), closes its idle keep-alive connections, ends its event streams, and
lets the requests in progress finish for up to `http_grace_s`; then it exits 0, cutting what is
left (a blocking /sdapi/v1 call that waits longer). A second Ctrl-C cuts them at once. The
watching process closes its copies of the sockets, passes SIGTERM on and waits as long.
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
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server

from dashboard import farm
from shared.config import Settings

log = logging.getLogger("renderfarm.server")
MAX_AUTO_PROCESSES = 4
BACKLOG = 2048  # connections the kernel holds for the processes to accept
LOOP_S = 1.0  # the longest the main loop sleeps in poll() (waitress's own default)
KILL_AFTER_S = 5.0  # past the grace, what the watching process waits before it kills


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
    """waitress on `sockets` until SIGTERM or Ctrl-C, then the graceful stop (the module's
    docstring): waitress's own loop, servers and channels, driven here instead of by its
    `serve`, which on a stop waits 5 s for its threads and cancels the rest."""
    sockmap: dict[int, wasyncore.dispatcher] = {}
    server = create_server(
        app,
        map=sockmap,
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
    listeners = [d for d in sockmap.values() if isinstance(d, BaseWSGIServer)]
    stopping = farm.stopping(app)
    hurry = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stopping.is_set():
            if signum == signal.SIGINT:  # asked again at the terminal: stop now
                hurry.set()
        else:
            stopping.set()
        # Wake poll() at once: only the pipe's write, no lock (we may be inside the loop).
        listeners[0].trigger.pull_trigger()

    signal.signal(signal.SIGTERM, on_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a child leaves it to its parent
        signal.signal(signal.SIGINT, on_signal)
    logging.basicConfig()  # as waitress's `serve` does, for its "Serving on" line
    server.print_listen("Serving on http://{}:{}")
    while not stopping.is_set():
        wasyncore.loop(timeout=LOOP_S, map=sockmap, count=1)
    _drain(sockmap, listeners, settings.http_grace_s, hurry)


def _drain(
    sockmap: dict[int, wasyncore.dispatcher],
    listeners: list[BaseWSGIServer],
    grace_s: float,
    hurry: threading.Event,
) -> None:
    for listener in listeners:
        # The listening socket only (`listener.close()` would close the trigger its channels
        # wake the loop with). Other processes holding it may still accept, until they stop.
        wasyncore.dispatcher.close(listener)
    deadline = time.monotonic() + grace_s
    log.info("stopping: new connections refused; requests in progress get %g s", grace_s)
    while channels := [c for s in listeners for c in list(s.active_channels.values())]:
        left = deadline - time.monotonic()
        if left <= 0 or hurry.is_set():
            busy = sum(1 for c in channels if not _idle(c))
            log.warning("stopped with %d requests in progress cut", busy)
            break
        for channel in channels:
            if _idle(channel):
                channel.close_when_flushed = True  # waitress closes it once its output is sent
        wasyncore.loop(timeout=min(LOOP_S, left), map=sockmap, count=1)
    wasyncore.close_all(sockmap)
    log.info("stopped")


def _idle(channel: HTTPChannel) -> bool:
    """No request in progress, none being received: a keep-alive connection between requests."""
    return not channel.requests and channel.request is None


def _server_process(
    make_app: Callable[[], Flask], sockets: list[socket.socket], settings: Settings, ready: Event
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (Ctrl-C reaches all)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # until the app is built and serving
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

    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        # Once only: a SIGTERM after a Ctrl-C (`renderfarm up` sends both) changes nothing.
        if not stopping.is_set():
            stopping.set()
            raise _Stop
        if signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked again: stop waiting for the requests

    signal.signal(signal.SIGTERM, stop)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, stop)
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
    except _Stop:
        pass
    finally:
        stopping.set()  # also after an error: no signal raises in here but a second Ctrl-C
        for sock in sockets:  # ours: once the children close theirs, the port refuses
            sock.close()
        for proc in started:
            proc.terminate()  # their graceful stop (a Ctrl-C did not reach them: ignored)
        try:
            deadline = time.monotonic() + settings.http_grace_s + KILL_AFTER_S
            for proc in started:
                proc.join(max(deadline - time.monotonic(), 0))
        except KeyboardInterrupt:  # asked again: stop waiting for their requests
            pass
        for proc in started:
            if proc.is_alive():
                proc.kill()
                proc.join()


class _Stop(Exception):
    """SIGTERM or a first Ctrl-C to the watching process."""
