// express-oauth2-jwt-bearer configured with nothing but the issuer URL and an audience: it
// discovers the JWKS itself. Real Express apps on free ports, real requests.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import express from 'express';
import { auth, requiredScopes } from 'express-oauth2-jwt-bearer';
import * as client from 'openid-client';
import { A, B, freePort, privateKeyOf } from './lib/service.mjs';

/** An Express app whose /notes routes need a token for `audience`; resolves to its base URL. */
async function startApp(audience, options = {}) {
  const app = express();
  app.set('env', 'test'); // Express's default error handler then answers without logging each refusal
  app.use(auth({ issuerBaseURL: A.issuer, audience, ...options }));
  app.get('/notes', (req, res) => res.json({ sub: req.auth.payload.sub, client_id: req.auth.payload.client_id ?? null }));
  app.delete('/notes/:id', requiredScopes('writer'), (req, res) => res.status(204).end());
  const port = await freePort();
  const server = await new Promise((resolve, reject) => {
    const listening = app.listen(port, '127.0.0.1', (err) => (err ? reject(err) : resolve(listening)));
  });
  return { url: `http://127.0.0.1:${port}`, close: () => new Promise((resolve) => server.close(resolve)) };
}

async function call(url, token, method = 'GET') {
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  const response = await fetch(url, { method, headers });
  const answer = { status: response.status, challenge: response.headers.get('www-authenticate'), body: await response.text() };
  // For failure messages: the refusal's reason is in the challenge (the body is Express's error page).
  answer.toString = () => `HTTP ${answer.status}, WWW-Authenticate: ${answer.challenge ?? '(none)'}`;
  return answer;
}

describe('express-oauth2-jwt-bearer with issuerBaseURL and audience only', () => {
  let ours;
  let other;
  let strict;
  let userToken;
  let created;
  let accessToken;

  before(async () => {
    ours = await startApp(A.issuer);
    other = await startApp('https://other.example');
    strict = await startApp(A.issuer, { strict: true });
    userToken = A.mint('alice', ['reader', 'writer']);
    created = await A.createClient(userToken, { displayName: 'express', scopedRoles: ['reader'] });
    // The personal client's token, from openid-client.
    const config = await client.discovery(new URL(A.issuer), created.client.clientId, undefined,
      client.PrivateKeyJwt(await privateKeyOf(created.clientSecret)), { execute: [client.allowInsecureRequests] });
    ({ access_token: accessToken } = await client.clientCredentialsGrant(config));
  });

  after(async () => {
    await Promise.all([ours?.close(), other?.close(), strict?.close()]);
    if (created) await A.deleteClient(userToken, created.client.id);
  });

  test("a personal client's live token is let in", async () => {
    const answer = await call(`${ours.url}/notes`, accessToken);
    assert.equal(answer.status, 200, `${answer}\n${A.describe()}`);
    assert.deepEqual(JSON.parse(answer.body), { sub: 'alice', client_id: created.client.clientId });
  });

  test('a user token from mint-token is let in', async () => {
    const answer = await call(`${ours.url}/notes`, userToken);
    assert.equal(answer.status, 200, `${answer}`);
    assert.deepEqual(JSON.parse(answer.body), { sub: 'alice', client_id: null });
  });

  test('no token: 401 with a Bearer challenge', async () => {
    const answer = await call(`${ours.url}/notes`, undefined);
    assert.equal(answer.status, 401, `${answer}`);
    assert.match(answer.challenge ?? '', /^Bearer\b/);
  });

  test('an app expecting another audience refuses our tokens with 401 invalid_token', async () => {
    for (const token of [accessToken, userToken]) {
      const answer = await call(`${other.url}/notes`, token);
      assert.equal(answer.status, 401, `${answer}`);
      assert.match(answer.challenge ?? '', /error="invalid_token"/);
    }
  });

  // strict: true checks the RFC 9068 profile: typ at+jwt, and iat, sub, jti and client_id present.
  test("strict: true (RFC 9068) lets a personal client's token in", async () => {
    const answer = await call(`${strict.url}/notes`, accessToken);
    assert.equal(answer.status, 200, `${answer}`);
  });

  // A user token from mint-token names no client (see the README): strict validation refuses it.
  test('strict: true (RFC 9068) refuses a user token from mint-token: it names no client_id', async () => {
    const answer = await call(`${strict.url}/notes`, userToken);
    assert.equal(answer.status, 401, `${answer}`);
    assert.match(answer.challenge ?? '', /client_id/);
  });

  test("another server's token is refused with 401", async () => {
    const answer = await call(`${ours.url}/notes`, B.mint('alice', ['reader', 'writer']));
    assert.equal(answer.status, 401, `${answer}`);
    assert.match(answer.challenge ?? '', /error="invalid_token"/);
  });

  test('scope carries the roles: requiredScopes("writer") lets a writer in and a reader-only credential not', async () => {
    const writer = await call(`${ours.url}/notes/1`, userToken, 'DELETE');
    assert.equal(writer.status, 204, `${writer}`);
    const reader = await call(`${ours.url}/notes/1`, accessToken, 'DELETE');
    assert.equal(reader.status, 403, `${reader}`);
    assert.match(reader.challenge ?? '', /error="insufficient_scope"/);
  });
});
