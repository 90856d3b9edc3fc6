"""A wasi:http/proxy handler in Python, built by componentize-py (scripts/real-apps.sh).

GET /            {"app": "python", "replica": ..., "path": ...}
GET /hash?s=TEXT {"sha256": ...}, from Python's own hashlib
anything else    404
"""

import hashlib
import json
import os
from urllib.parse import parse_qs, urlsplit

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam


def reply(response_out: ResponseOutparam, status: int, value) -> None:
    body = json.dumps(value).encode()
    response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
    response.set_status_code(status)
    out = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with out.write() as stream:
        stream.blocking_write_and_flush(body)
    OutgoingBody.finish(out, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        url = urlsplit(request.path_with_query() or "/")
        if url.path == "/":
            reply(response_out, 200, {"app": "python", "replica": os.environ.get("SKIFF_REPLICA"), "path": url.path})
        elif url.path == "/hash":
            text = parse_qs(url.query).get("s", [""])[0]
            reply(response_out, 200, {"sha256": hashlib.sha256(text.encode()).hexdigest()})
        else:
            reply(response_out, 404, {"error": "not found", "path": url.path})
