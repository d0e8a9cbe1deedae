// Fetch a token from tokendealer with simple-oauth2's ClientCredentials grant.
// Usage: node simple_oauth2_token.mjs TOKEN_URL CLIENT_ID CLIENT_SECRET header|body SCOPE
// header is simple-oauth2's default (HTTP Basic, id and secret form-encoded first, as
// RFC 6749 Appendix B says); body sends them as client_id/client_secret form parameters.
// Prints one JSON object: {"ok": true, "token": {...token endpoint response...}} or
// {"ok": false, "status", "payload"}; exits 0 either way (2 on bad usage).
import { ClientCredentials } from 'simple-oauth2';

const [tokenUrl, id, secret, method, scope] = process.argv.slice(2);
if (!tokenUrl || !id || !secret || !['header', 'body'].includes(method) || !scope) {
  console.error('usage: node simple_oauth2_token.mjs TOKEN_URL CLIENT_ID CLIENT_SECRET header|body SCOPE');
  process.exit(2);
}

const url = new URL(tokenUrl);
const config = {
  client: { id, secret },
  auth: { tokenHost: url.origin, tokenPath: url.pathname },
  // Only a non-default method is configured, so 'header' runs on the library's defaults.
  ...(method === 'body' ? { options: { authorizationMethod: 'body' } } : {}),
};

try {
  const accessToken = await new ClientCredentials(config).getToken({ scope });
  console.log(JSON.stringify({ ok: true, token: accessToken.token }));
} catch (error) {
  // Errors are @hapi/boom errors from @hapi/wreck: status and parsed body in output/data.
  console.log(JSON.stringify({
    ok: false,
    status: error.output?.statusCode,
    payload: error.data?.payload,
    message: error.message,
  }));
}
