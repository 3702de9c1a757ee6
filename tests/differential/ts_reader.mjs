// What the official MCP TypeScript SDK (npm @modelcontextprotocol/sdk, pinned in
// package-lock.json) would execute for a POST body, for tests/parser_differential.rs.
//
// Input, one case per line: {"ct": <Content-Type>, "body": <base64url of the body>}.
// Output, one line per case: {"ts": V, "ts_express": V}, V as in python_reader.py: "reject" or
// {"batch": bool, "messages": [{"kind", "method", "target", "target_ok", "id"}]}, strings as
// UTF-16 code units in hex, ids "n:<number>" or "s:<hex>".
//
// The SDK's own transport does the reading; nothing of it is re-implemented here:
// - "ts": WebStandardStreamableHTTPServerTransport.handleRequest(Request) in stateless mode (what
//   the Node StreamableHTTPServerTransport also runs when no body parser ran before it): its
//   Content-Type check, readRequestBody (TextDecoder), JSON.parse, batch limit and
//   JSONRPCMessageSchema. The messages it hands to the server (onmessage) are recorded.
// - "ts_express": the SDK's documented setup: createMcpExpressApp() (which installs
//   express.json()), a POST route calling StreamableHTTPServerTransport.handleRequest(req, res,
//   req.body), served on 127.0.0.1 on a free port and sent the body with its Content-Type.
// A request is classified as the SDK's Protocol does (isJSONRPCRequest, ...), and its target is
// what the McpServer handler gets: the method's request schema parsed from the message
// (CallToolRequestSchema, ...); a schema failure means the server executes nothing.
import { createInterface } from 'node:readline';
import { WebStandardStreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/webStandardStreamableHttp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import {
    CallToolRequestSchema,
    GetPromptRequestSchema,
    ReadResourceRequestSchema,
    SubscribeRequestSchema,
    UnsubscribeRequestSchema,
    isJSONRPCRequest,
    isJSONRPCNotification,
    isJSONRPCResultResponse,
    isJSONRPCErrorResponse
} from '@modelcontextprotocol/sdk/types.js';

const TARGETS = {
    'tools/call': [CallToolRequestSchema, 'name'],
    'prompts/get': [GetPromptRequestSchema, 'name'],
    'resources/read': [ReadResourceRequestSchema, 'uri'],
    'resources/subscribe': [SubscribeRequestSchema, 'uri'],
    'resources/unsubscribe': [UnsubscribeRequestSchema, 'uri']
};

const ACCEPT = 'application/json, text/event-stream';

function u16(s) {
    if (typeof s !== 'string') return null;
    let out = '';
    for (let i = 0; i < s.length; i++) out += s.charCodeAt(i).toString(16).padStart(4, '0');
    return out;
}

function rpcId(id) {
    if (id === undefined || id === null) return null;
    if (typeof id === 'string') return 's:' + u16(id);
    if (typeof id === 'number') return 'n:' + (Number.isInteger(id) ? BigInt(id).toString() : String(id));
    return 'x:' + String(id);
}

function target(message) {
    const entry = TARGETS[message.method];
    if (!entry) return [null, true];
    const [schema, member] = entry;
    const parsed = schema.safeParse(message);
    if (!parsed.success) return [null, false];
    return [u16(parsed.data.params[member]), true];
}

function describe(message) {
    // The order of Protocol._onmessage.
    if (isJSONRPCResultResponse(message) || isJSONRPCErrorResponse(message)) {
        return { kind: 'response', method: null, target: null, target_ok: true, id: rpcId(message.id) };
    }
    if (isJSONRPCRequest(message)) {
        const [t, ok] = target(message);
        return { kind: 'request', method: u16(message.method), target: t, target_ok: ok, id: rpcId(message.id) };
    }
    if (isJSONRPCNotification(message)) {
        const [t, ok] = target(message);
        return { kind: 'notification', method: u16(message.method), target: t, target_ok: ok, id: null };
    }
    return { kind: 'unknown', method: null, target: null, target_ok: false, id: null };
}

// A stateless transport whose delivered messages are recorded; it is closed right after the
// delivery so that no stream stays open.
function recordingTransport(Kind, messages) {
    const transport = new Kind({ sessionIdGenerator: undefined });
    transport.onerror = () => {};
    transport.onmessage = (message) => {
        messages.push(message);
        setImmediate(() => transport.close().catch(() => {}));
    };
    return transport;
}

function verdict(messages, status, rawBody) {
    if (messages.length === 0 || status >= 400) return 'reject';
    return { batch: rawBody.batch, messages: messages.map(describe) };
}

// Whether the text the server parsed was a batch: the transport does not say, so it is read
// from the messages' container the same way the transport decides (Array.isArray).
function shape(body) {
    try {
        return { batch: Array.isArray(JSON.parse(new TextDecoder().decode(body))) };
    } catch {
        return { batch: false };
    }
}

async function webStandard(ct, body) {
    const messages = [];
    const transport = recordingTransport(WebStandardStreamableHTTPServerTransport, messages);
    await transport.start();
    const headers = new Headers({ accept: ACCEPT });
    if (ct !== null) headers.set('content-type', ct);
    const request = new Request('http://127.0.0.1/mcp', { method: 'POST', headers, body });
    const response = await transport.handleRequest(request);
    await response.body?.cancel().catch(() => {});
    await transport.close().catch(() => {});
    return verdict(messages, response.status, shape(body));
}

// The express app: one route, the case's recorded messages and the parsed body's shape kept
// per request under the x-case header.
const expressCases = new Map();
const app = createMcpExpressApp();
app.post('/mcp', async (req, res) => {
    const record = expressCases.get(req.headers['x-case']);
    record.batch = Array.isArray(req.body);
    const transport = recordingTransport(StreamableHTTPServerTransport, record.messages);
    await transport.start();
    try {
        await transport.handleRequest(req, res, req.body);
    } catch {
        if (!res.headersSent) res.status(500).end();
    }
});
// Body-parser errors (bad JSON, unsupported charset, too large) end here: refused.
app.use((err, req, res, _next) => {
    res.status(err.status ?? 400).end();
});

async function viaExpress(port, index, ct, body) {
    const key = String(index);
    const record = { messages: [], batch: false };
    expressCases.set(key, record);
    const headers = { accept: ACCEPT, 'x-case': key };
    if (ct !== null) headers['content-type'] = ct;
    let status;
    try {
        const response = await fetch(`http://127.0.0.1:${port}/mcp`, { method: 'POST', headers, body, signal: AbortSignal.timeout(10000) });
        status = response.status;
        await response.arrayBuffer().catch(() => {});
    } catch {
        status = 599;
    }
    expressCases.delete(key);
    return verdict(record.messages, status, { batch: record.batch });
}

async function main() {
    const server = await new Promise((resolve) => {
        const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    const port = server.address().port;
    const inputs = [];
    for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
        if (line.trim()) inputs.push(JSON.parse(line));
    }
    // A few cases in flight at once (each has its own transport and its own x-case key);
    // answers are written in input order.
    const results = new Array(inputs.length);
    let next = 0;
    async function worker() {
        while (next < inputs.length) {
            const index = next++;
            const { ct, body: b64 } = inputs[index];
            const body = Buffer.from(b64, 'base64url');
            const ts = await webStandard(ct, body);
            const tsExpress = await viaExpress(port, index, ct, body);
            results[index] = JSON.stringify({ ts, ts_express: tsExpress });
        }
    }
    await Promise.all(Array.from({ length: 8 }, worker));
    process.stdout.write(results.map((r) => r + '\n').join(''));
    server.closeAllConnections?.();
    server.close();
}

main().catch((error) => {
    console.error(error);
    process.exit(1);
});
