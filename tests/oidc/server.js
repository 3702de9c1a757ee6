// A real OAuth 2.0 authorization server for mcp-guard's end-to-end test (tests/e2e_oidc.rs):
// oidc-provider with the client-credentials grant, DPoP (RFC 9449, server nonces required) and
// resource indicators (RFC 8707), issuing ES256-signed JWT access tokens (RFC 9068) for the
// resource servers named on the command line.
//
//   node tests/oidc/server.js [--port N] --resource URL [--resource URL2 ...]
//        [--scopes "a b c"] [--client-id ID] [--client-secret SECRET] [--client-scopes "a b"]
//        [--no-dpop-nonce] [--exit-with-stdin]
//
// --port (or $OIDC_PORT; default 0 = a free port). Binds 127.0.0.1 only. The issuer is
// http://127.0.0.1:<port>. When it serves, it prints one line on stdout:
//   listening on 127.0.0.1:<port> issuer=http://127.0.0.1:<port>
// Every resource offers --scopes; the one client may ask for --client-scopes (default: all).
// Signing keys and the DPoP nonce secret are generated at start and never leave the process.
// --exit-with-stdin: exit when stdin closes, so a test that starts it with a pipe never leaves
// it behind, even if the test process itself is killed.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.OIDC_PORT ?? '0' },
    resource: { type: 'string', multiple: true, default: [] },
    scopes: { type: 'string', default: 'weather:read alerts:write stations:admin docs:read prompts:use' },
    'client-id': { type: 'string', default: 'mcp-agent' },
    'client-secret': { type: 'string', default: 'mcp-agent-secret' },
    'client-scopes': { type: 'string' },
    'no-dpop-nonce': { type: 'boolean', default: false },
    'exit-with-stdin': { type: 'boolean', default: false },
  },
  strict: true,
});

function fail(message) {
  process.stderr.write(`oidc server: ${message}\n`);
  process.exit(2);
}

const port = Number(args.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port ${args.port}: not a port number`);
if (args.resource.length === 0) fail('at least one --resource URL is required (the MCP endpoint)');
for (const resource of args.resource) {
  // RFC 8707 §2: an absolute URI without a fragment.
  const url = URL.parse(resource);
  if (!url || url.hash) fail(`--resource ${resource}: not an absolute URL without a fragment`);
}
const resourceScopes = args.scopes.split(' ').filter(Boolean);
const clientScopes = (args['client-scopes'] ?? args.scopes).split(' ').filter(Boolean);

// One ES256 signing key for the access tokens, made now. The provider publishes its public half
// at the jwks_uri of its discovery document.
function signingJwk() {
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: crypto.randomBytes(8).toString('base64url'), alg: 'ES256', use: 'sig' };
}

const server = http.createServer();
server.listen(port, '127.0.0.1', () => {
  const bound = server.address().port;
  const issuer = `http://127.0.0.1:${bound}`;

  const provider = new Provider(issuer, {
    jwks: { keys: [signingJwk()] },
    clients: [{
      client_id: args['client-id'],
      client_secret: args['client-secret'],
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: clientScopes.join(' '),
      // The AS refuses this client's token requests that carry no DPoP proof.
      dpop_bound_access_tokens: true,
      id_token_signed_response_alg: 'ES256',
    }],
    // The scopes this AS knows; the client's `scope` metadata is its allow-list of them.
    scopes: resourceScopes,
    features: {
      clientCredentials: { enabled: true },
      // No browser flows here: the client-credentials grant needs no interactions.
      devInteractions: { enabled: false },
      dPoP: {
        enabled: true,
        nonceSecret: crypto.randomBytes(32),
        requireNonce: () => !args['no-dpop-nonce'],
      },
      introspection: { enabled: false },
      revocation: { enabled: false },
      userinfo: { enabled: false },
      resourceIndicators: {
        enabled: true,
        // defaultResource and useGrantedResource keep their defaults: they matter for grants
        // with an authorization step, not for client credentials. A token request without
        // `resource` gets no resource server, hence an opaque token no resource can verify.
        // Only the resources named on the command line exist; each takes the scopes.
        async getResourceServerInfo(_ctx, resourceIndicator) {
          if (!args.resource.includes(resourceIndicator)) throw new errors.InvalidTarget();
          return {
            scope: resourceScopes.join(' '),
            audience: resourceIndicator,
            accessTokenTTL: 5 * 60,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
    },
    enabledJWA: { dPoPSigningAlgValues: ['ES256', 'EdDSA', 'Ed25519'] },
  });

  provider.on('server_error', (_ctx, err) => process.stderr.write(`oidc server error: ${err.stack}\n`));
  server.on('request', provider.callback());
  process.stdout.write(`listening on 127.0.0.1:${bound} issuer=${issuer}\n`);
});
server.on('error', (err) => fail(err.message));

if (args['exit-with-stdin']) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)));
