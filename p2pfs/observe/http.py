"""The HTTP server behind `--http HOST:PORT`: aiohttp on the process's own event loop (AppRunner and
TCPSite; it installs no signal handlers). `/metrics` everywhere; on a tracker also the dashboard (`/`, its
static files), the JSON API (`/api/files`, `/api/files/NAME`, `/api/peers`) and `/events`, the
dashboard's Server-Sent Events stream (one snapshot per TICK)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from importlib import resources
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from p2pfs.address import Address
from p2pfs.observe.dashboard import Dashboard
from p2pfs.observe.metrics import exposition

log = logging.getLogger("p2pfs.http")

#: The dashboard's files, shipped in the package (p2pfs/observe/static), with their content types.
STATIC = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
#: Seconds a stop waits for requests in progress (event streams end at once when stopping).
SHUTDOWN_TIMEOUT = 2.0
#: Scripts, styles and connections only from this server, nothing inline: what a remote peer managed
#: to put in a name can never run, even if a bug inserted it as markup.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _static(name: str) -> bytes:
    return resources.files("p2pfs.observe").joinpath("static", name).read_bytes()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json", headers=HEADERS
    )


class HttpServer:
    """Serves one metrics registry and, for a tracker, its dashboard."""

    def __init__(self, registry: CollectorRegistry, dashboard: Dashboard | None = None) -> None:
        self.registry = registry
        self.dashboard = dashboard
        self.address: Address | None = None
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        if self.dashboard is not None:
            app.router.add_get("/", self._index)
            app.router.add_get("/static/{name}", self._static_file)
            app.router.add_get("/api/files", self._files)
            app.router.add_get("/api/files/{name:.+}", self._file)
            app.router.add_get("/api/peers", self._peers)
            app.router.add_get("/events", self._events)
        else:
            app.router.add_get("/", self._peer_index)
        return app

    async def start(self, host: str, port: int) -> Address:
        """Listen on host:port (0: a free port); the address actually bound. OSError if it cannot."""
        runner = web.AppRunner(
            self.app(), handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, shutdown_timeout=SHUTDOWN_TIMEOUT)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        sockname = runner.addresses[0]
        self.address = Address(host or str(sockname[0]), int(sockname[1]))
        if self.dashboard is not None:
            self.dashboard.tick()  # (a first snapshot, so the API answers before the first TICK)
            self._ticker = asyncio.create_task(self.dashboard.run())
        log.info("http on %s", self.address)
        return self.address

    async def stop(self) -> None:
        self._closing.set()
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- handlers ----------------------------------------------------------------------------------
    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=exposition(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _peer_index(self, request: web.Request) -> web.Response:
        return web.Response(text="p2pfs peer: metrics at /metrics\n", headers=HEADERS)

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(
            body=_static("index.html"), content_type="text/html", charset="utf-8", headers=HEADERS
        )

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            return _json({"error": "not found"}, 404)
        return web.Response(body=_static(name), content_type=STATIC[name], charset="utf-8", headers=HEADERS)

    def _board(self) -> Dashboard:
        assert self.dashboard is not None
        return self.dashboard

    async def _files(self, request: web.Request) -> web.Response:
        board = self._board()
        return _json({"totals": board.totals, "files": board.files})

    async def _file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        detail = self._board().detail(name)
        if detail is None:
            return _json({"error": "file not found", "name": name}, 404)
        return _json(detail)

    async def _peers(self, request: web.Request) -> web.Response:
        board = self._board()
        return _json({"totals": board.totals, "peers": board.peers})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: one `data:` line of JSON per snapshot (`?file=NAME` adds that file's
        detail), until the viewer leaves or the server stops."""
        board = self._board()
        name = request.query.get("file") or None
        response = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            while not self._closing.is_set():
                event = board.snapshot()
                event["file"] = board.detail(name) if name is not None else None
                await response.write(b"data: " + msgspec.json.encode(event) + b"\n\n")
                snapshot = asyncio.ensure_future(board.next_snapshot())
                await asyncio.wait((snapshot, closing), return_when=asyncio.FIRST_COMPLETED)
                snapshot.cancel()
        except ConnectionResetError:
            return response  # (the viewer left)
        finally:
            closing.cancel()
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response
