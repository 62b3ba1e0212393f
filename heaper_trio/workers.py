"""Several server processes on one port: ``--workers N`` (settings.workers).

The parent binds the port once, without listening, with ``SO_REUSEPORT`` (so port 0 picks one
port for all), and starts N children: ``python -m heaper_trio serve`` with every setting
passed in the environment, ``workers`` = 1, the port resolved and a hidden
``--worker-control-fd``. Each child binds its own listening socket to the same address with
``SO_REUSEPORT``; the kernel spreads new connections over the listening sockets, so a dead
worker's share goes to the others at once. Live updates cross between the processes the way
they cross between any processes sharing one PostgreSQL database: LISTEN/NOTIFY.

Parent and child talk over one socketpair (the control socket): the child writes ``ready``
once it serves; the parent writes ``STOP`` for a graceful stop and ``STOP_NOW`` to stop at
once. If the parent dies, even by SIGKILL, the kernel closes its end and the children stop
gracefully on their own. Signals sent to a worker directly act as on a single server.

The parent restarts a worker that exits; a worker that exits before it serves, or within
``HEALTHY_AFTER`` seconds of it, waits longer each time (``BACKOFF_*``), and after
``MAX_FAILURES`` such exits in a row the parent stops everything and exits non-zero. The first
worker starts alone (key creation and migrations run once, a configuration error prints
once); if it cannot start, the parent exits with its status. SIGTERM or SIGINT to the parent
stops every worker gracefully (graceful_timeout); a second one stops them at once; a worker
still running ``STOP_GRACE`` seconds after graceful_timeout is killed.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial

import trio

from heaper_trio.services import metrics
from heaper_trio.settings import BY_NAME, Settings

log = logging.getLogger("heaper_trio.workers")

MAX_FAILURES = 5
HEALTHY_AFTER = 10.0  # seconds serving after which an exit no longer counts as a failed start
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
STOP_GRACE = 15.0  # beyond graceful_timeout: closing the database pool can take 10 s
READY = b"ready\n"
STOP = b"s"
STOP_NOW = b"n"


def _socket_for(host: str) -> socket.socket:
    # The address family rule hypercorn uses for a host:port bind
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """The parent's socket: bound, never listening. It holds the port (port 0 picks it) so
    the workers can share it, and fails early with EADDRINUSE if another program has it.

    A server of ours already on the port (started twice by mistake) listens with
    SO_REUSEPORT too, and the kernel would let both share it and split the clients between
    them: a connection that succeeds counts as the port being taken."""
    if port and _answers(host, port):
        raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
    sock = _socket_for(host)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _answers(host: str, port: int) -> bool:
    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=2):
            return True
    except OSError:
        return False


def bind_shared_port(host: str, port: int) -> int:
    """A worker's own socket on the shared port, as a file descriptor for hypercorn's
    ``fd://`` bind (hypercorn listens on it and closes it)."""
    sock = _socket_for(host)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock.detach()


def worker_environment(settings: Settings, port: int) -> dict[str, str]:
    """The environment of a worker: ours without HEAPER_*, plus every resolved setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPER_")}
    for name, value in asdict(settings).items():
        env[BY_NAME[name].env] = str(value)
    env[BY_NAME["workers"].env] = "1"
    env[BY_NAME["port"].env] = str(port)
    return env


def worker_command(control_fd: int) -> list[str]:
    return [sys.executable, "-m", "heaper_trio", "serve", "--worker-control-fd", str(control_fd)]


# -- the worker's side -----------------------------------------------------------------------


async def serve_as_worker(
    settings: Settings, control_fd: int, shutdown: trio.Event, stop_now: Callable[[], None]
) -> None:
    """Serve on the shared port until ``shutdown`` is set or the parent asks us to stop (or
    dies); ``stop_now`` cancels everything, as a second signal does."""
    from heaper_trio.app import run_server

    control = trio.socket.from_stdlib_socket(socket.socket(fileno=control_fd))
    with control:
        listen_fd = bind_shared_port(settings.host, settings.port)
        async with trio.open_nursery() as watching:
            watching.start_soon(_obey_parent, control, shutdown, stop_now)
            async with trio.open_nursery() as serving:
                await serving.start(
                    partial(run_server, settings, shutdown=shutdown, listen_fd=listen_fd)
                )
                try:
                    await control.send(READY)
                except OSError:
                    shutdown.set()  # the parent is gone
            watching.cancel_scope.cancel()


async def _obey_parent(
    control: trio.socket.SocketType, shutdown: trio.Event, stop_now: Callable[[], None]
) -> None:
    try:
        while message := await control.recv(64):
            if STOP_NOW in message:
                log.warning("the supervisor asked to stop now")
                stop_now()
                return
            if STOP in message and not shutdown.is_set():
                log.info("the supervisor asked to stop: shutting down")
                shutdown.set()
    except OSError:
        pass
    if not shutdown.is_set():
        log.warning("the supervisor is gone: shutting down")
    shutdown.set()


# -- the parent ------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: int
    message: str | None = None  # one line for the operator, or None (the worker said it)


class Supervisor:
    def __init__(
        self,
        count: int,
        *,
        env: Mapping[str, str],
        graceful_timeout: float,
        command: Callable[[int], Sequence[str]] = worker_command,
        exited: Callable[[int], None] = lambda pid: None,
    ) -> None:
        self.count = count
        self.env = dict(env)
        self.exited = exited  # told the pid of each worker once it has exited
        self.stop_timeout = graceful_timeout + STOP_GRACE
        self.command = command
        self.stopping = trio.Event()
        self.live: dict[int, tuple[trio.Process, trio.socket.SocketType]] = {}  # by slot
        self.ever_ready = False
        self.first_settled = trio.Event()
        self.outcome = Outcome(0)

    async def run(self) -> Outcome:
        async with trio.open_nursery() as outer:
            outer.start_soon(self._watch_signals)
            async with trio.open_nursery() as slots:
                slots.start_soon(self._slot, 0)
                await self.first_settled.wait()
                if self.ever_ready and not self.stopping.is_set():
                    for index in range(1, self.count):
                        slots.start_soon(self._slot, index)
            outer.cancel_scope.cancel()
        return self.outcome

    def fail(self, outcome: Outcome) -> None:
        if not self.stopping.is_set():
            self.outcome = outcome
            self.stopping.set()

    async def _watch_signals(self) -> None:
        signalled = False  # a stop after a failure is not a first signal
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if signalled:
                    log.warning("second signal: stopping the workers now")
                    for _, control in list(self.live.values()):
                        await _tell(control, STOP_NOW)
                    continue
                signalled = True
                log.info(
                    "%s received: shutting down %d workers",
                    signal.Signals(signum).name,
                    len(self.live),
                )
                self.stopping.set()

    async def _slot(self, index: int) -> None:
        failures = 0
        try:
            while not self.stopping.is_set():
                try:
                    served_for, code = await self._run_once(index)
                    status = _status(code)
                except OSError as e:  # no process at all (out of memory or process slots)
                    served_for, code, status = -1.0, 1, f"could not start: {e}"
                if self.stopping.is_set():
                    return
                if not self.ever_ready:  # the first start failed: as one process would
                    self.fail(
                        Outcome(code, None)
                        if code == 2
                        else Outcome(
                            1,
                            f"workers: the first worker exited ({status}) before it could serve",
                        )
                    )
                    return
                failures = 0 if served_for >= HEALTHY_AFTER else failures + 1
                if failures >= MAX_FAILURES:
                    self.fail(
                        Outcome(
                            1,
                            f"workers: worker {index + 1} failed {failures} times in a row at "
                            f"start (last: {status}); stopping",
                        )
                    )
                    return
                delay = (
                    0.0 if not failures else min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
                )
                log.warning(
                    "worker %d exited (%s); restarting it in %.1f s",
                    index + 1,
                    status,
                    delay,
                )
                with trio.move_on_after(delay):
                    await self.stopping.wait()
        finally:
            if index == 0:
                self.first_settled.set()

    async def _run_once(self, index: int) -> tuple[float, int]:
        """Run one worker to its end: (seconds it served, or -1 if it never did; exit status)."""
        ours, theirs = socket.socketpair()
        try:
            proc = await trio.lowlevel.open_process(
                list(self.command(theirs.fileno())),
                env=self.env,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        control = trio.socket.from_stdlib_socket(ours)
        self.live[index] = (proc, control)
        ready_at: float | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_on_request, proc, control)
                if await _read_ready(control):
                    ready_at = trio.current_time()
                    self.ever_ready = True
                    log.info("worker %d serving (pid %d)", index + 1, proc.pid)
                    if index == 0:
                        self.first_settled.set()
                code = await proc.wait()
                nursery.cancel_scope.cancel()
        finally:
            del self.live[index]
            control.close()
            if proc.returncode is None:  # cancelled: never leave a worker behind
                with trio.CancelScope(shield=True):
                    proc.kill()
                    await proc.wait()
            self.exited(proc.pid)
        served_for = -1.0 if ready_at is None else trio.current_time() - ready_at
        return served_for, code

    async def _stop_on_request(self, proc: trio.Process, control: trio.socket.SocketType) -> None:
        await self.stopping.wait()
        await _tell(control, STOP)
        with trio.move_on_after(self.stop_timeout):
            await proc.wait()
            return
        log.warning(
            "worker pid %d still running %.0f s after the stop: killing it",
            proc.pid,
            self.stop_timeout,
        )
        proc.kill()
        self.outcome = Outcome(1, self.outcome.message)


async def _tell(control: trio.socket.SocketType, message: bytes) -> None:
    try:
        await control.send(message)
    except OSError:
        pass  # the worker is gone already


async def _read_ready(control: trio.socket.SocketType) -> bool:
    got = b""
    while len(got) < len(READY):
        try:
            chunk = await control.recv(len(READY) - len(got))
        except OSError:
            return False
        if not chunk:
            return False
        got += chunk
    return got == READY


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


async def supervise(settings: Settings) -> Outcome:
    """Run ``settings.worker_count`` workers on one port until a signal stops them."""
    count = settings.worker_count
    with reserve_port(settings.host, settings.port) as reserved, metrics.multiprocess_dir() as mp:
        port = int(reserved.getsockname()[1])
        log.info(
            "starting %d workers on %s:%d (%s database)",
            count,
            settings.host,
            port,
            settings.engine,
        )
        # The workers keep their metrics in one directory, so any of them answers for all
        env = {**worker_environment(settings, port), metrics.MULTIPROC_ENV: mp}
        supervisor = Supervisor(
            count,
            env=env,
            graceful_timeout=settings.graceful_timeout,
            exited=lambda pid: metrics.worker_exited(pid, mp),
        )
        outcome = await supervisor.run()
    log.info("all workers stopped")
    return outcome
