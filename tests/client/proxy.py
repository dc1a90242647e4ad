"""An HTTP/1.1 proxy on 127.0.0.1 that breaks requests on purpose, for the client's fault tests.

`FaultProxy(upstream)` runs in a thread of its own. Queue faults with `fail(action, when=...)`;
each request takes the first queued fault whose `when` matches it, else passes. Actions:

- `drop_before`: close the connection without forwarding (the service never sees it);
- `drop_after`: forward, let the service answer, then close without answering (it did the
  write; the client does not know);
- `delay_after`: forward, then hold the answer `seconds` (longer than the client's timeout);
- `status`: answer `status` (503, 429) with `Retry-After: retry_after` without forwarding.

`seen` lists every request as (method, path, Idempotency-Key, action).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import httpx

from tests.chain.conftest import free_port

Matcher = Callable[[str, str], bool]


@dataclass
class Fault:
    """One queued fault."""

    action: str
    when: Matcher
    seconds: float = 0.0
    status: int = 503
    retry_after: str | None = "0"


def writes(method: str, path: str) -> bool:
    """Matches POST and DELETE requests."""
    return method in {"POST", "DELETE"}


class FaultProxy:
    """See the module docstring."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str, str | None, str]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tasks: set[asyncio.Task[None]] = set()

    def fail(
        self,
        action: str,
        *,
        when: Matcher = writes,
        times: int = 1,
        seconds: float = 0.0,
        status: int = 503,
        retry_after: str | None = "0",
    ) -> None:
        """Queue `times` faults of `action` for requests matching `when`."""
        with self._lock:
            self.faults += [Fault(action, when, seconds, status, retry_after)] * times

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self.faults):
                if fault.when(method, path):
                    return self.faults.pop(index)
        return None

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=self.upstream, timeout=30) as http:
            server = await asyncio.start_server(
                lambda r, w: self._connection(http, r, w), "127.0.0.1", self.port
            )
            self._started.set()
            async with server:
                await self._stop.wait()
                server.close()
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(
        self, http: httpx.AsyncClient, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                fault = self._take(method, target)
                action = fault.action if fault else "pass"
                self.seen.append((method, target, headers.get("idempotency-key"), action))
                if fault is not None and fault.action == "drop_before":
                    break
                if fault is not None and fault.action == "status":
                    extra = f"Retry-After: {fault.retry_after}\r\n" if fault.retry_after else ""
                    problem = b'{"title":"injected","status":%d,"detail":"injected by the proxy"}'
                    content = problem % fault.status
                    writer.write(
                        f"HTTP/1.1 {fault.status} Injected\r\nContent-Type: application/problem"
                        f"+json\r\nContent-Length: {len(content)}\r\n{extra}\r\n".encode()
                        + content
                    )
                    await writer.drain()
                    continue
                forward = {
                    k: v
                    for k, v in headers.items()
                    if k not in {"host", "content-length", "connection"}
                }
                answer = await http.request(method, target, content=body, headers=forward)
                if fault is not None and fault.action == "drop_after":
                    break
                if fault is not None and fault.action == "delay_after":
                    await asyncio.sleep(fault.seconds)
                status_line = f"HTTP/1.1 {answer.status_code} {answer.reason_phrase}\r\n"
                out = "".join(
                    f"{k}: {v}\r\n"
                    for k, v in answer.headers.items()
                    if k.lower()
                    not in {"content-length", "transfer-encoding", "connection", "content-encoding"}
                )
                writer.write(
                    (status_line + out + f"Content-Length: {len(answer.content)}\r\n\r\n").encode()
                    + answer.content
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)
