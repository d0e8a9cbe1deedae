// Fetch a token from tokendealer with openid-client's client-credentials grant, the client
// authenticating with private_key_jwt (RFC 7523 §2.2): RFC 8414 discovery from the issuer
// URL, then a token request carrying a client assertion signed with the given private key.
// Usage: node private_key_jwt.mjs ISSUER CLIENT_ID PRIVATE_JWK_JSON [SCOPE]
// The private JWK names its key with "kid" (sent in the assertion's header); its "alg", when
// present, is the signing algorithm, else RS256 / ES256 / ES384 / EdDSA by key type.
// Prints one JSON object: {"ok": true, "response": {...token endpoint response...},
// "assertion": {"header", "claims"}} or {"ok": false, "step", "name", "code", "status",
// "error", "assertion"}; exits 0 either way (2 on bad usage). "assertion" is the decoded
// client assertion openid-client sent (the last one), so the caller sees its "aud".
import * as client from 'openid-client';
import { importJWK } from 'jose';

const [issuer, clientId, jwkText, scope] = process.argv.slice(2);
if (!issuer || !clientId || !jwkText) {
  console.error('usage: node private_key_jwt.mjs ISSUER CLIENT_ID PRIVATE_JWK_JSON [SCOPE]');
  process.exit(2);
}

function defaultAlg(jwk) {
  if (jwk.alg) return jwk.alg;
  if (jwk.kty === 'RSA') return 'RS256';
  if (jwk.kty === 'EC') return jwk.crv === 'P-384' ? 'ES384' : 'ES256';
  if (jwk.kty === 'OKP') return 'EdDSA';
  throw new TypeError(`unsupported kty ${jwk.kty}`);
}

function decodePart(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

// Remember the client assertion of each request (read from the form body) before sending it.
let assertion;
const recordingFetch = (url, options) => {
  const body = options?.body;
  const form = body instanceof URLSearchParams ? body : typeof body === 'string' ? new URLSearchParams(body) : undefined;
  const signed = form?.get('client_assertion');
  if (signed) {
    const [header, claims] = signed.split('.');
    assertion = { header: decodePart(header), claims: decodePart(claims) };
  }
  return fetch(url, options);
};

let step = 'import key';
try {
  const jwk = JSON.parse(jwkText);
  const key = await importJWK(jwk, defaultAlg(jwk));
  const auth = client.PrivateKeyJwt(jwk.kid ? { key, kid: jwk.kid } : key);

  step = 'discovery';
  // The test server listens on plain-HTTP loopback, hence allowInsecureRequests; 'oauth2'
  // reads /.well-known/oauth-authorization-server (RFC 8414) rather than OIDC's document.
  const config = await client.discovery(new URL(issuer), clientId, undefined, auth, {
    algorithm: 'oauth2',
    execute: [client.allowInsecureRequests],
  });
  config[client.customFetch] = recordingFetch;

  step = 'clientCredentialsGrant';
  const response = await client.clientCredentialsGrant(config, scope ? { scope } : {});
  console.log(JSON.stringify({ ok: true, response, assertion }));
} catch (error) {
  let body;
  if (error.response && !error.response.bodyUsed) {
    body = await error.response.json().catch(() => undefined);
  }
  console.log(JSON.stringify({
    ok: false,
    step,
    name: error.name,
    code: error.code,
    message: error.message,
    status: error.status,
    error: error.error ?? body?.error,
    assertion,
  }));
}
