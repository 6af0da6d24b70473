"""wss:// smoke test with Python `websockets` and an ssl.SSLContext (run by tests/tls.rs).

usage: tls_client.py WSS_URL CA_PEM   (the server runs in relay mode)
Prints "ok" and exits 0 when every check passed.
"""
import asyncio
import ssl
import sys

from websockets.asyncio.client import connect


async def recv_data(ws):
    return await asyncio.wait_for(ws.recv(), timeout=10)


async def main(url, cafile):
    # The system trust store does not know the test CA: the channel really is verified TLS.
    try:
        async with connect(url, ssl=ssl.create_default_context(), open_timeout=5):
            sys.exit("connected without trusting the test CA")
    except ssl.SSLCertVerificationError:
        pass

    ctx = ssl.create_default_context(cafile=cafile)
    async with connect(url, ssl=ctx, open_timeout=5, max_size=2**21) as a, \
            connect(url, ssl=ctx, open_timeout=5, max_size=2**21) as b:
        assert a.transport.get_extra_info("ssl_object").version() in ("TLSv1.3", "TLSv1.2")
        # b's own message reaching a proves both are registered before the real traffic.
        await b.send("b ready")
        assert await recv_data(a) == "b ready"
        assert await recv_data(b) == "b ready"
        await a.send("hello from python")
        big = bytes(i % 251 for i in range(100_000))
        await a.send(big)
        for ws in (a, b):
            assert await recv_data(ws) == "hello from python"
            assert await recv_data(ws) == big
        await a.close()
        assert a.close_code == 1000, a.close_code
    print("ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
