"""The baseline for the intake benchmark: the same server stack (uvicorn, httptools, uvloop)
with an endpoint that only reads the body and answers. Run: python load/bare_asgi.py PORT"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = b'{"status":"accepted"}'
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http="httptools", loop="uvloop",
                lifespan="off", access_log=False, log_level="warning")
