// The metadata documents themselves (RFC 8414), as a library fetches them: both well-known
// paths, the same JSON, the issuer exactly as configured, and endpoints that answer.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { A, B } from './lib/service.mjs';

const PATHS = ['/.well-known/openid-configuration', '/.well-known/oauth-authorization-server'];

async function getMetadata(server, path) {
  const response = await fetch(`${server.issuer}${path}`, { headers: { accept: 'application/json' } });
  const text = await response.text();
  assert.equal(response.status, 200, `GET ${path}: HTTP ${response.status} ${text}\n${server.describe()}`);
  return { response, text, json: JSON.parse(text) };
}

test('both discovery documents are the same JSON, served as JSON with a Cache-Control', async () => {
  const [oidc, oauth] = await Promise.all(PATHS.map((path) => getMetadata(A, path)));
  for (const [path, { response }] of [[PATHS[0], oidc], [PATHS[1], oauth]]) {
    assert.match(response.headers.get('content-type') ?? '(none)', /^application\/json\b/, `${path} content-type`);
    const cacheControl = response.headers.get('cache-control');
    assert.ok(cacheControl, `${path} has no Cache-Control header`);
  }
  assert.deepEqual(oidc.json, oauth.json, 'the two documents differ');
});

test('the metadata names the issuer exactly as configured and the endpoints under it', async () => {
  const { json: metadata } = await getMetadata(A, PATHS[1]);
  const issuer = A.issuer;
  assert.equal(metadata.issuer, issuer, 'issuer is not the --issuer value, character for character');
  assert.equal(metadata.token_endpoint, `${issuer}/auth/v1/token`);
  assert.equal(metadata.jwks_uri, `${issuer}/.well-known/jwks.json`);
  assert.equal(typeof metadata.introspection_endpoint, 'string', 'no introspection_endpoint');
  assert.ok(metadata.introspection_endpoint.startsWith(`${issuer}/`), metadata.introspection_endpoint);
  assert.deepEqual(metadata.grant_types_supported, ['client_credentials']);
  assert.deepEqual(metadata.token_endpoint_auth_methods_supported, ['private_key_jwt']);
  assert.ok(metadata.token_endpoint_auth_signing_alg_values_supported?.includes('EdDSA'),
    `token_endpoint_auth_signing_alg_values_supported: ${JSON.stringify(metadata.token_endpoint_auth_signing_alg_values_supported)}`);
  assert.ok(Array.isArray(metadata.response_types_supported), 'response_types_supported is required (RFC 8414 §2)');
});

test('each server publishes its own issuer', async () => {
  const [a, b] = await Promise.all([A, B].map((server) => getMetadata(server, PATHS[0])));
  assert.equal(a.json.issuer, A.issuer);
  assert.equal(b.json.issuer, B.issuer);
  assert.notEqual(a.json.issuer, b.json.issuer);
});

test('the advertised jwks_uri serves public Ed25519 keys only', async () => {
  const { json: metadata } = await getMetadata(A, PATHS[0]);
  const response = await fetch(metadata.jwks_uri);
  assert.equal(response.status, 200, `GET ${metadata.jwks_uri}: HTTP ${response.status}`);
  const jwks = await response.json();
  assert.ok(Array.isArray(jwks.keys) && jwks.keys.length > 0, `no keys: ${JSON.stringify(jwks)}`);
  for (const key of jwks.keys) {
    assert.equal(key.kty, 'OKP', JSON.stringify(key));
    assert.equal(key.crv, 'Ed25519', JSON.stringify(key));
    assert.equal(typeof key.kid, 'string', `a key without kid: ${JSON.stringify(key)}`);
    assert.equal(key.d, undefined, 'the JWKS publishes a private key');
  }
});

test('the advertised token endpoint is the OAuth token endpoint', async () => {
  const { json: metadata } = await getMetadata(A, PATHS[0]);
  // No client: the endpoint answers with an OAuth error in JSON (RFC 6749 §5.2), not a 404.
  const response = await fetch(metadata.token_endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'client_credentials' }),
  });
  assert.ok([400, 401].includes(response.status), `HTTP ${response.status}`);
  const body = await response.json();
  assert.equal(typeof body.error, 'string', JSON.stringify(body));
});
