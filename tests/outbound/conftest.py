"""Fixtures for the outbound tests: feed events, JetStream streams of their own on the shared
NATS server (deleted afterwards), a private nats-server that can be stopped, a reader that
consumes a whole stream, and a webhook receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from aiohttp import web
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger import feed
from crm_ledger.feed import EventType, NewFeedEvent
from tests.waiting import wait_for

SHARED_NATS_URL = "nats://127.0.0.1:4222"
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
TYPES = [EventType.RECORD_ANCHORED, EventType.REWARD_ISSUED, EventType.DRIFT_DETECTED]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_events(
    session_factory: sessionmaker[Session], count: int, *, start: int = 0, per_tx: int = 500
) -> None:
    """Append `count` feed events numbered from `start` (`data.n`), types taking turns."""
    n = start
    while n < start + count:
        with session_factory.begin() as session:
            batch = [
                NewFeedEvent(
                    type=TYPES[i % len(TYPES)],
                    customer_id=str(uuid.UUID(int=i + 1)),
                    payload={"n": i},
                )
                for i in range(n, min(n + per_tx, start + count))
            ]
            feed.append(session, batch)
        n += len(batch)


def feed_ids(session_factory: sessionmaker[Session]) -> list[str]:
    """Every feed event id, in feed order."""
    ids: list[str] = []
    cursor: str | None = None
    with session_factory() as session, session.begin():
        while True:
            page = feed.read_page(session, after=cursor, limit=feed.MAX_PAGE_SIZE)
            ids += [item.id for item in page.items]
            if not page.has_more:
                return ids
            cursor = page.next_cursor


@dataclass
class StreamMessage:
    """One stored message as a consumer sees it."""

    seq: int
    subject: str
    msg_id: str
    body: dict[str, object]


async def read_stream(url: str, stream: str) -> list[StreamMessage]:
    """Every message of `stream`, in stream order, through an ephemeral pull consumer."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        total = info.state.messages
        subscription = await js.pull_subscribe(
            "", stream=stream, config=ConsumerConfig(ack_policy=AckPolicy.NONE)
        )
        out: list[StreamMessage] = []
        while len(out) < total:
            for msg in await subscription.fetch(min(1000, total - len(out)), timeout=5):
                assert msg.metadata.sequence is not None
                out.append(
                    StreamMessage(
                        seq=msg.metadata.sequence.stream,
                        subject=msg.subject,
                        msg_id=(msg.headers or {}).get("Nats-Msg-Id", ""),
                        body=json.loads(msg.data),
                    )
                )
        await subscription.unsubscribe()
        return out
    finally:
        await nc.close()


@pytest.fixture
def stream_name() -> str:
    """A stream name of this test's own (the NATS server is shared)."""
    return f"T_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def subject_prefix(stream_name: str) -> str:
    """A subject prefix of this test's own."""
    return f"test-{stream_name.lower()}"


@pytest_asyncio.fixture
async def shared_stream(stream_name: str) -> AsyncIterator[str]:
    """The stream's name on the shared server; the stream is deleted afterwards."""
    yield stream_name
    nc = await nats.connect(SHARED_NATS_URL)
    try:
        await nc.jetstream().delete_stream(stream_name)
    except NotFoundError:
        pass
    finally:
        await nc.close()


class PrivateNats:
    """A nats-server with JetStream on a free port and a store directory of its own."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (again, on the same port and store) and wait until it accepts clients."""
        self.process = subprocess.Popen(
            [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.accepts_clients, 10, what="nats-server to start")

    def accepts_clients(self) -> bool:
        """Whether its port takes a TCP connection now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL it (no graceful shutdown) and wait until it is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[PrivateNats]:
    """A nats-server of this test's own, killed afterwards."""
    server = PrivateNats(tmp_path / "nats-store")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@dataclass
class Received:
    """One request a test receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """A webhook receiver on 127.0.0.1: `status[path]` answers (default 200), `delay[path]`
    seconds before answering, `hold[path]` an event to wait for before answering,
    `fail_first[path]` requests answered 500 first."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.status: dict[str, int] = {}
        self.delay: dict[str, float] = {}
        self.fail_first: dict[str, int] = {}
        self.hold: dict[str, asyncio.Event] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        """The URL of `path` on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        """What `path` received, in order."""
        return [r for r in self.received if r.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        path = request.path
        self.received.append(Received(path, dict(request.headers), body, time.monotonic()))
        if self.delay.get(path):
            await asyncio.sleep(self.delay[path])
        if path in self.hold:
            await self.hold[path].wait()
        if self.fail_first.get(path, 0) > 0:
            self.fail_first[path] -= 1
            return web.Response(status=500, text="try again")
        return web.Response(status=self.status.get(path, 200), text="ok")

    async def start(self) -> None:
        """Listen on a free port."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.1
        )
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on 127.0.0.1."""
    server = Receiver()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
