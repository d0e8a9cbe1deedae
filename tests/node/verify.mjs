// Verify a tokendealer access token with jose against the dealer's JWKS.
// Usage: node verify.mjs JWKS_URL TOKEN ISSUER AUDIENCE
// Prints one JSON object: {"ok": true, "payload", "protectedHeader"} or
// {"ok": false, "name", "code", "message"}; exits 0 either way (2 on bad usage).
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [jwksUrl, token, issuer, audience] = process.argv.slice(2);
if (!jwksUrl || !token || !issuer || !audience) {
  console.error('usage: node verify.mjs JWKS_URL TOKEN ISSUER AUDIENCE');
  process.exit(2);
}

const jwks = createRemoteJWKSet(new URL(jwksUrl));
try {
  const { payload, protectedHeader } = await jwtVerify(token, jwks, {
    issuer,
    audience,
    typ: 'at+jwt',
    algorithms: ['RS512'],
  });
  console.log(JSON.stringify({ ok: true, payload, protectedHeader }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, name: error.name, code: error.code, message: error.message }));
}
