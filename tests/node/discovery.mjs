// Use tokendealer from its issuer URL alone with openid-client: RFC 8414 discovery, the
// client-credentials grant, RFC 7662 introspection, RFC 7009 revocation, introspection again.
// Usage: node discovery.mjs ISSUER CLIENT_ID CLIENT_SECRET basic|post [SCOPE]
// Prints one JSON object: {"ok": true, "metadata", "token", "introspection", "after"} or
// {"ok": false, "step", "name", "code", "message", "error", "status", "cause"}; exits 0 either way
// (2 on bad usage).
import * as client from 'openid-client';

const [issuer, clientId, clientSecret, method, scope] = process.argv.slice(2);
if (!issuer || !clientId || !clientSecret || !['basic', 'post'].includes(method)) {
  console.error('usage: node discovery.mjs ISSUER CLIENT_ID CLIENT_SECRET basic|post [SCOPE]');
  process.exit(2);
}

let step = 'discovery';
try {
  // The test server listens on plain-HTTP loopback, hence allowInsecureRequests.
  const options = { algorithm: 'oauth2', execute: [client.allowInsecureRequests] };
  // A bare secret means client_secret_post in openid-client; basic is asked for explicitly.
  const config = method === 'basic'
    ? await client.discovery(new URL(issuer), clientId, undefined, client.ClientSecretBasic(clientSecret), options)
    : await client.discovery(new URL(issuer), clientId, clientSecret, undefined, options);
  const metadata = config.serverMetadata();

  step = 'clientCredentialsGrant';
  const tokens = await client.clientCredentialsGrant(config, scope ? { scope } : {});

  step = 'tokenIntrospection';
  const introspection = await client.tokenIntrospection(config, tokens.access_token);

  step = 'tokenRevocation';
  await client.tokenRevocation(config, tokens.access_token);

  step = 'tokenIntrospection after revocation';
  const after = await client.tokenIntrospection(config, tokens.access_token);

  console.log(JSON.stringify({
    ok: true,
    metadata,
    token: {
      access_token: tokens.access_token,
      token_type: tokens.token_type,
      expires_in: tokens.expires_in,
      scope: tokens.scope,
    },
    introspection,
    after,
  }));
} catch (error) {
  console.log(JSON.stringify({
    ok: false,
    step,
    name: error.name,
    code: error.code,
    message: error.message,
    error: error.error,
    status: error.status,
    // WWWAuthenticateChallengeError: the parsed challenges; ResponseBodyError: the body.
    cause: error.cause instanceof Error ? undefined : error.cause,
  }));
}
