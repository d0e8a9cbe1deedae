// Fetch a token from tokendealer with openid-client's client-credentials grant.
// Usage: node client_credentials.mjs ISSUER CLIENT_ID CLIENT_SECRET basic|post [SCOPE]
// Prints one JSON object: {"ok": true, "response": {...token endpoint response...}} or
// {"ok": false, "name", "code", "status", "error", "challenges"}; exits 0 either way
// (2 on bad usage). A 401 with WWW-Authenticate surfaces as a challenge error whose
// response body still holds the RFC 6749 error object.
import * as client from 'openid-client';

const [issuer, clientId, clientSecret, method, scope] = process.argv.slice(2);
if (!issuer || !clientId || !clientSecret || !['basic', 'post'].includes(method)) {
  console.error('usage: node client_credentials.mjs ISSUER CLIENT_ID CLIENT_SECRET basic|post [SCOPE]');
  process.exit(2);
}

// No discovery document: the server metadata is given directly (RFC 8414 field names).
const server = { issuer, token_endpoint: new URL('/oauth/token', issuer).href };
const auth = method === 'basic' ? client.ClientSecretBasic(clientSecret) : client.ClientSecretPost(clientSecret);
const config = new client.Configuration(server, clientId, undefined, auth);
// The test server listens on plain-HTTP loopback.
client.allowInsecureRequests(config);

try {
  const response = await client.clientCredentialsGrant(config, scope ? { scope } : {});
  console.log(JSON.stringify({ ok: true, response }));
} catch (error) {
  let body;
  if (error.response && !error.response.bodyUsed) {
    body = await error.response.json().catch(() => undefined);
  }
  console.log(JSON.stringify({
    ok: false,
    name: error.name,
    code: error.code,
    status: error.status,
    error: error.error ?? body?.error,
    challenges: error.code === 'OAUTH_WWW_AUTHENTICATE_CHALLENGE' ? error.cause : undefined,
  }));
}
