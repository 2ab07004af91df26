// A resource server with jose alone: the JWKS from the discovered metadata, jwtVerify with the
// issuer, the audience and typ at+jwt, for a user token and for a personal client's token; and
// what it must refuse.

import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { SignJWT, createRemoteJWKSet, errors, jwtVerify } from 'jose';
import { A, B, decodeJwt, privateKeyOf } from './lib/service.mjs';

async function discover(server) {
  const response = await fetch(`${server.issuer}/.well-known/openid-configuration`);
  assert.equal(response.status, 200, `discovery: HTTP ${response.status}\n${server.describe()}`);
  return response.json();
}

/** A personal client's access token from the HTTP token endpoint, by hand (jose signs). */
async function clientToken(server, created) {
  const key = await privateKeyOf(created.clientSecret);
  const clientId = created.client.clientId;
  const assertion = await new SignJWT({})
    .setProtectedHeader({ alg: 'EdDSA' })
    .setIssuer(clientId)
    .setSubject(clientId)
    .setAudience(server.issuer)
    .setIssuedAt()
    .setExpirationTime('60s')
    .setJti(crypto.randomUUID())
    .sign(key);
  const metadata = await discover(server);
  const response = await fetch(metadata.token_endpoint, {
    method: 'POST',
    body: new URLSearchParams({
      grant_type: 'client_credentials',
      client_id: clientId,
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: assertion,
    }),
  });
  const text = await response.text();
  assert.equal(response.status, 200, `token endpoint: HTTP ${response.status} ${text}\n${server.describe()}`);
  const answer = JSON.parse(text);
  assert.equal(answer.token_type, 'Bearer');
  return answer;
}

describe('jose with the discovered JWKS', () => {
  let metadata;
  let jwks;
  let userToken;
  let created;
  let issued;

  before(async () => {
    metadata = await discover(A);
    jwks = createRemoteJWKSet(new URL(metadata.jwks_uri));
    userToken = A.mint('alice', ['reader', 'writer'], '1h');
    created = await A.createClient(userToken, { displayName: 'jose', scopedRoles: ['reader'] });
    issued = await clientToken(A, created);
  });

  const expected = () => ({ issuer: metadata.issuer, audience: metadata.issuer, typ: 'at+jwt' });

  test('a user token from mint-token verifies, with the claims of RFC 9068', async () => {
    const { payload, protectedHeader } = await jwtVerify(userToken, jwks, expected());
    assert.equal(protectedHeader.alg, 'EdDSA');
    assert.equal(protectedHeader.typ, 'at+jwt');
    assert.equal(typeof protectedHeader.kid, 'string');
    assert.equal(payload.iss, A.issuer);
    assert.equal(payload.aud, A.issuer, 'aud is the issuer URL, one string');
    assert.equal(payload.sub, 'alice');
    assert.deepEqual(payload.roles, ['reader', 'writer']);
    assert.equal(payload.scope, 'reader writer');
    assert.equal(typeof payload.jti, 'string');
    assert.equal(payload.exp - payload.iat, 3600, '--ttl 1h');
    assert.equal(payload.client_id, undefined, 'a user token names no client');
  });

  test("a personal client's token verifies, naming the client and only its scoped roles", async () => {
    const { payload, protectedHeader } = await jwtVerify(issued.access_token, jwks, expected());
    assert.equal(protectedHeader.typ, 'at+jwt');
    assert.equal(payload.sub, 'alice');
    assert.equal(payload.client_id, created.client.clientId);
    assert.deepEqual(payload.roles, ['reader']);
    assert.equal(payload.scope, 'reader');
    assert.equal(payload.aud, A.issuer);
    assert.ok(Math.abs(payload.exp - payload.iat - issued.expires_in) <= 1,
      `exp - iat = ${payload.exp - payload.iat}, expires_in = ${issued.expires_in}`);
  });

  test('a token checked for another audience is refused', async () => {
    await assert.rejects(
      jwtVerify(issued.access_token, jwks, { ...expected(), audience: 'https://other.example' }),
      (err) => err instanceof errors.JWTClaimValidationFailed && err.claim === 'aud',
    );
    await assert.rejects(
      jwtVerify(userToken, jwks, { ...expected(), audience: 'https://other.example' }),
      (err) => err instanceof errors.JWTClaimValidationFailed && err.claim === 'aud',
    );
  });

  test('a token checked for another issuer is refused', async () => {
    await assert.rejects(
      jwtVerify(userToken, jwks, { ...expected(), issuer: B.issuer }),
      (err) => err instanceof errors.JWTClaimValidationFailed && err.claim === 'iss',
    );
  });

  test("another server's token finds no key in this server's JWKS", async () => {
    const foreign = B.mint('alice', ['reader']);
    const { header } = decodeJwt(foreign);
    await assert.rejects(
      jwtVerify(foreign, jwks, expected()),
      (err) => err instanceof errors.JWKSNoMatchingKey,
      `B's token (kid ${header.kid}) was accepted by A's keys`,
    );
  });

  test('a token whose signature was altered is refused', async () => {
    const [head, body, signature] = userToken.split('.');
    const bytes = Buffer.from(signature, 'base64url');
    bytes[0] ^= 1;
    await assert.rejects(
      jwtVerify(`${head}.${body}.${bytes.toString('base64url')}`, jwks, expected()),
      (err) => err instanceof errors.JWSSignatureVerificationFailed,
    );
  });

  test('revoked: the token still verifies locally until exp; introspection says it is not active', async () => {
    const { access_token: accessToken } = await clientToken(A, created);
    await A.deleteClient(userToken, created.client.id);
    // A JWT carries its own proof: a resource server that checks it locally cannot see the
    // revocation (the README says so, and points to introspection).
    const { payload } = await jwtVerify(accessToken, jwks, expected());
    assert.equal(payload.client_id, created.client.clientId);

    assert.equal(typeof metadata.introspection_endpoint, 'string', 'no introspection_endpoint in the metadata');
    const resourceServer = A.mint('notes-api', ['resource-server']);
    const response = await fetch(metadata.introspection_endpoint, {
      method: 'POST',
      headers: { authorization: `Bearer ${resourceServer}` },
      body: new URLSearchParams({ token: accessToken }),
    });
    const text = await response.text();
    assert.equal(response.status, 200, `introspection: HTTP ${response.status} ${text}\n${A.describe()}`);
    assert.deepEqual(JSON.parse(text), { active: false });
  });
});
