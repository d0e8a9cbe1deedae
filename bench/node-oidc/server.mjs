// node-oidc-provider set up as bench/bench_vs_node.py compares tokendealer with: the
// client_credentials grant, JWT access tokens signed RS512 with the key tokendealer signs
// with (the same RSA private key, the same kid), one client authenticating with
// client_secret_basic.
//
//   CLIENT_SECRET=SECRET node server.mjs --port PORT --key KEY.pem --kid KID --client-id ID
//
// (the secret in the environment, not on the command line other users can read).
//
// Listens on 127.0.0.1:PORT; prints "listening" once it accepts connections.
import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    key: { type: 'string' },
    kid: { type: 'string' },
    'client-id': { type: 'string' },
  },
});
const clientSecret = process.env.CLIENT_SECRET;
if (!clientSecret) {
  console.error('missing CLIENT_SECRET in the environment');
  process.exit(2);
}
for (const name of ['port', 'key', 'client-id']) {
  if (!args[name]) {
    console.error(`missing --${name}`);
    process.exit(2);
  }
}

const jwk = createPrivateKey(readFileSync(args.key)).export({ format: 'jwk' });
if (jwk.kty !== 'RSA') {
  console.error('the key must be an RSA private key');
  process.exit(2);
}
const signingKey = { ...jwk, alg: 'RS512', use: 'sig', ...(args.kid ? { kid: args.kid } : {}) };

const RESOURCE = 'urn:tokendealer:bench';
const issuer = `http://${args.host}:${args.port}`;

const provider = new Provider(issuer, {
  jwks: { keys: [signingKey] },
  clients: [
    {
      client_id: args['client-id'],
      client_secret: clientSecret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'read',
    },
  ],
  scopes: ['read'],
  ttl: { ClientCredentials: 3600 },
  // The keystore holds an RS512 key alone; the defaults (RS256) would have no key.
  enabledJWA: { idTokenSigningAlgValues: ['RS512'] },
  clientDefaults: { id_token_signed_response_alg: 'RS512' },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'read',
        audience: RESOURCE,
        accessTokenTTL: 3600, // tokendealer's default token lifetime
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS512' } },
      }),
    },
  },
  // The same path as tokendealer's token endpoint, so one wrk script serves both.
  routes: { token: '/oauth/token' },
});
provider.proxy = false;

const server = provider.listen(Number(args.port), args.host, () => {
  console.log(`listening on ${issuer}`);
});
server.keepAliveTimeout = 75_000;

for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
