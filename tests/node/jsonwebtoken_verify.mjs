// Verify a tokendealer access token with jsonwebtoken, the key found by kid with jwks-rsa.
// Usage: node jsonwebtoken_verify.mjs JWKS_URL TOKEN ISSUER AUDIENCE [hs256-confusion]
// With hs256-confusion the token is re-signed as HS256 keyed with the very public-key PEM
// jwks-rsa returns (the RFC 8725 §2.1 algorithm-confusion attack) and verified with
// algorithms ['HS256'] and that PEM.
// Prints one JSON object: {"ok": true, "header", "payload"} or {"ok": false, "name",
// "message"}; exits 0 either way (2 on bad usage).
import { createHmac } from 'node:crypto';
import jwt from 'jsonwebtoken';
import jwksClient from 'jwks-rsa';

const [jwksUri, token, issuer, audience, mode] = process.argv.slice(2);
if (!jwksUri || !token || !issuer || !audience || ![undefined, 'hs256-confusion'].includes(mode)) {
  console.error('usage: node jsonwebtoken_verify.mjs JWKS_URL TOKEN ISSUER AUDIENCE [hs256-confusion]');
  process.exit(2);
}

function hs256Forgery(original, secret) {
  const [, payload] = original.split('.');
  const header = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'at+jwt' })).toString('base64url');
  const signature = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

try {
  const decoded = jwt.decode(token, { complete: true });
  if (decoded === null) throw new Error('not a JWT');
  const signingKey = await jwksClient({ jwksUri }).getSigningKey(decoded.header.kid);
  const publicKey = signingKey.getPublicKey();
  const confused = mode === 'hs256-confusion';
  const { header, payload } = jwt.verify(confused ? hs256Forgery(token, publicKey) : token, publicKey, {
    algorithms: confused ? ['HS256'] : ['RS512'],
    issuer,
    audience,
    complete: true,
  });
  console.log(JSON.stringify({ ok: true, header, payload }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, name: error.name, message: error.message }));
}
