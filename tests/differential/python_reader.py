"""What the official MCP Python SDK (PyPI `mcp`, pinned in requirements.txt) would execute for a
POST body, for tests/parser_differential.rs.

Input, one case per line: a JSON object {"ct": <Content-Type>, "body": <base64url of the body>}.
Output, one line per case: {"py": V, "py_modern": V} where V is "reject" or
{"batch": bool, "messages": [M, ...]} and M is
{"kind": "request"|"notification"|"response", "method": S|null, "target": S|null,
 "target_ok": bool, "id": S|null}.
Strings S are the UTF-16 code units in hex (so lone surrogates survive the trip); ids are
"n:<int>" or "s:<hex>".

Two entry points of the SDK's Streamable HTTP server are modelled, each with the SDK's own
code where it is callable without a running server:
- "py": `StreamableHTTPServerTransport._handle_post_request` (sessions, protocol <= 2025-11-25):
  the Content-Type checks (TransportSecurityMiddleware's and the transport's own),
  `pydantic_core.from_json(body)`, then
  `jsonrpc_message_adapter.validate_python(raw, by_name=False)` (no batches);
- "py_modern": `handle_modern_request` (protocol 2026-07-28): TransportSecurityMiddleware's
  Content-Type check, `json.loads(body)`, a dict without
  "id" is a notification (`JSONRPCNotification.model_validate`), else
  `JSONRPCRequest.model_validate`.
A request's target is what the server's handler gets: the method's params model
(`CallToolRequestParams`, ...) validated from params the way `mcp.server.runner` does
(`model_validate({} if params is None else params, by_name=False)`).
"""

import base64
import json
import sys

import pydantic_core
from pydantic import ValidationError

import mcp_types as types
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.transport_security import TransportSecurityMiddleware
from mcp_types.jsonrpc import (
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    jsonrpc_message_adapter,
)

# The params model and the member that names what is called, per method (the same models the
# low-level server registers for these methods).
TARGETS = {
    "tools/call": (types.CallToolRequestParams, "name"),
    "prompts/get": (types.GetPromptRequestParams, "name"),
    "resources/read": (types.ReadResourceRequestParams, "uri"),
    "resources/subscribe": (types.SubscribeRequestParams, "uri"),
    "resources/unsubscribe": (types.UnsubscribeRequestParams, "uri"),
}


def u16(s):
    if s is None:
        return None
    return s.encode("utf-16-be", "surrogatepass").hex()


def rpc_id(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return "b:" + str(value)
    if isinstance(value, int):
        return "n:" + str(value)
    if isinstance(value, str):
        return "s:" + u16(value)
    return "x:" + repr(value)


def target_of(method, params):
    if method not in TARGETS:
        return None, True
    model, member = TARGETS[method]
    try:
        typed = model.model_validate({} if params is None else params, by_name=False)
    except ValidationError:
        return None, False
    return u16(getattr(typed, member)), True


def describe(message):
    if isinstance(message, JSONRPCRequest):
        target, ok = target_of(message.method, message.params)
        return {"kind": "request", "method": u16(message.method), "target": target, "target_ok": ok, "id": rpc_id(message.id)}
    if isinstance(message, JSONRPCNotification):
        target, ok = target_of(message.method, message.params)
        return {"kind": "notification", "method": u16(message.method), "target": target, "target_ok": ok, "id": None}
    if isinstance(message, (JSONRPCResponse, JSONRPCError)):
        return {"kind": "response", "method": None, "target": None, "target_ok": True, "id": rpc_id(message.id)}
    raise TypeError(type(message))


class _Headers:
    def __init__(self, ct):
        self._ct = ct

    def get(self, name, default=None):
        return self._ct if name.lower() == "content-type" and self._ct is not None else default


class _Request:
    def __init__(self, ct):
        self.headers = _Headers(ct)


SECURITY = TransportSecurityMiddleware(None)


def security_ok(ct):
    # Both entries first run TransportSecurityMiddleware.validate_request, whose POST check is this.
    return SECURITY._validate_content_type(ct)


def content_type_ok(ct):
    # The legacy transport's own check, called unbound: it only reads request.headers.
    return security_ok(ct) and StreamableHTTPServerTransport._check_content_type(None, _Request(ct))


def legacy(ct, body):
    if not content_type_ok(ct):
        return "reject"
    try:
        raw = pydantic_core.from_json(body)
    except ValueError:
        return "reject"
    try:
        message = jsonrpc_message_adapter.validate_python(raw, by_name=False)
    except ValidationError:
        return "reject"
    return {"batch": False, "messages": [describe(message)]}


def modern(ct, body):
    if not security_ok(ct):
        return "reject"
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return "reject"
    try:
        if isinstance(decoded, dict) and "id" not in decoded:
            message = JSONRPCNotification.model_validate(decoded)
        else:
            message = JSONRPCRequest.model_validate(decoded)
    except ValidationError:
        return "reject"
    return {"batch": False, "messages": [describe(message)]}


def main():
    out = sys.stdout
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        case = json.loads(line)
        body = base64.urlsafe_b64decode(case["body"] + "=" * (-len(case["body"]) % 4))
        ct = case["ct"]
        out.write(json.dumps({"py": legacy(ct, body), "py_modern": modern(ct, body)}) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
