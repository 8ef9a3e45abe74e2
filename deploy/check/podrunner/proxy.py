"""ClusterIP Services: a TCP proxy per Service port on the Service's IP (an address on the bridge),
as kube-proxy would route it: each connection goes to one ready endpoint, picked at random, and is
checked against the NetworkPolicies as the connection from the calling pod to that endpoint."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Callable

# (client ip) -> list of (endpoint ip, port) the connection may go to, or an error to refuse it with.
Route = Callable[[str], list[tuple[str, int]]]
# (client ip, endpoint ip, endpoint port): every connection made, for the NetworkPolicy check.
Observe = Callable[[str, str, int], None]


class Proxies:
    def __init__(self, observe: Observe) -> None:
        self.observe = observe
        self.loop = asyncio.new_event_loop()
        self.servers: dict[tuple[str, int], asyncio.AbstractServer] = {}
        self.thread = threading.Thread(target=self.loop.run_forever, name="service proxies", daemon=True)
        self.thread.start()

    def listen(self, ip: str, port: int, route: Route) -> None:
        async def start() -> None:
            self.servers[(ip, port)] = await asyncio.start_server(lambda r, w: self._serve(r, w, route), ip, port)
        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, route: Route) -> None:
        client_ip = writer.get_extra_info("peername")[0]
        endpoints = route(client_ip)
        if not endpoints:  # no ready endpoint: kube-proxy rejects the connection
            writer.close()
            return
        ip, port = random.choice(endpoints)
        self.observe(client_ip, ip, port)
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 5)
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            finally:
                try:
                    dst.close()
                except OSError:
                    pass

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:
            # The runner is closing its proxies: end quietly (asyncio logs a cancelled
            # connection task as an error in its callback).
            pass

    def close(self) -> None:
        async def stop() -> None:
            for s in self.servers.values():
                s.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
