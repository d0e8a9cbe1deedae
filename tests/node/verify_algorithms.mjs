// Verify tokendealer access tokens of several algorithms with jose's createRemoteJWKSet,
// one remote key set for them all (as a resource server holds it).
// Usage: node verify_algorithms.mjs JWKS_URL ISSUER AUDIENCE ALG=TOKEN [ALG=TOKEN ...]
// Each token is verified with `algorithms: [ALG]` (and typ at+jwt, issuer, audience).
// Prints one JSON object {"results": [...]}, in the order given, each {"alg", "ok": true,
// "protectedHeader", "payload"} or {"alg", "ok": false, "name", "code", "message"}; exits 0
// either way (2 on bad usage).
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [jwksUrl, issuer, audience, ...pairs] = process.argv.slice(2);
if (!jwksUrl || !issuer || !audience || pairs.length === 0 || !pairs.every((p) => p.includes('='))) {
  console.error('usage: node verify_algorithms.mjs JWKS_URL ISSUER AUDIENCE ALG=TOKEN [ALG=TOKEN ...]');
  process.exit(2);
}

const jwks = createRemoteJWKSet(new URL(jwksUrl));
const results = [];
for (const pair of pairs) {
  const split = pair.indexOf('=');
  const alg = pair.slice(0, split);
  const token = pair.slice(split + 1);
  try {
    const { payload, protectedHeader } = await jwtVerify(token, jwks, {
      issuer,
      audience,
      typ: 'at+jwt',
      algorithms: [alg],
    });
    results.push({ alg, ok: true, protectedHeader, payload });
  } catch (error) {
    results.push({ alg, ok: false, name: error.name, code: error.code, message: error.message });
  }
}
console.log(JSON.stringify({ results }));
