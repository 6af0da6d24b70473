"""Registry peer for the fan-out benchmark: a Python `websockets` broadcast server, written as
the websockets docs show (the "broadcast" pattern with a set of connections): every message a
client sends goes to every connected client, sender included. Started by benches/fanout.rs as
`python websockets_broadcast.py HOST PORT` from the virtualenv the harness installed from PyPI.
"""

import asyncio
import sys

import websockets
from websockets.asyncio.server import broadcast, serve

CONNECTIONS = set()


async def handler(websocket):
    CONNECTIONS.add(websocket)
    try:
        async for message in websocket:
            broadcast(CONNECTIONS, message)
    finally:
        CONNECTIONS.remove(websocket)


async def main(host, port):
    async with serve(handler, host, port) as server:
        print(f"websockets {websockets.__version__} listening on {host}:{port}", file=sys.stderr)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
