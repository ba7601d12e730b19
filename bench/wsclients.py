"""`python -m bench.wsclients HOST PORT KEYFILE SECONDS`: as many spokes as KEYFILE has WireGuard
private keys (a JSON list) connect to a hub's relay, prove their keys, print
{"connected": N} and stay connected and idle for SECONDS (bench/tcp.py measures the hub)."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import sys

import aiohttp

from dvpnd.relay import protocol


async def one(session: aiohttp.ClientSession, url: str, ctx: ssl.SSLContext, priv: bytes,
              hub_pub: bytes | None) -> aiohttp.ClientWebSocketResponse | None:
    try:
        ws = await session.ws_connect(url, ssl=ctx, compress=0)
        nonce = protocol.parse_challenge((await ws.receive(timeout=10)).data)
        me = protocol.public_of(priv)
        assert hub_pub is not None
        await ws.send_str(protocol.render_answer(me, protocol.proof(protocol.auth_key(priv, hub_pub), nonce, me,
                                                                    hub_pub)))
        ok = await ws.receive(timeout=10)
        return ws if ok.type == aiohttp.WSMsgType.TEXT else None
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return None


async def main(host: str, port: int, keyfile: str, seconds: float, hub_pub_b64: str) -> None:
    keys = [base64.b64decode(k) for k in json.loads(open(keyfile).read())]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # (the bench measures memory; the spokes pin the certificate)
    url = f"wss://{host}:{port}{protocol.PATH}"
    async with aiohttp.ClientSession() as s:
        held = [ws for ws in await asyncio.gather(*(one(s, url, ctx, k, base64.b64decode(hub_pub_b64)) for k in keys))
                if ws is not None]
        print(json.dumps({"connected": len(held)}), flush=True)
        # idle, but not silent: the relay closes a spoke that says nothing for its `idle` (75 s)
        await asyncio.sleep(seconds)
        for ws in held:
            await ws.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]))
