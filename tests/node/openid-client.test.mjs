// A client that knows only the issuer URL, its client id and its secret: openid-client discovers
// the token endpoint, signs the client assertion (private_key_jwt) and gets a token; the token is
// then checked by oauth4webapi as a resource server would (RFC 9068) against the same metadata.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as client from 'openid-client';
import * as oauth from 'oauth4webapi';
import { A, decodeJwt, privateKeyOf } from './lib/service.mjs';

const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

describe('openid-client with a personal client secret', () => {
  let userToken;
  let created;
  let key;
  // What openid-client sent to the token endpoint, as sent (the requests themselves are real).
  const sent = [];
  const recordingFetch = async (url, options) => {
    if (options?.method === 'POST') sent.push({ url, body: new URLSearchParams(options.body) });
    return fetch(url, options);
  };

  before(async () => {
    userToken = A.mint('alice', ['reader', 'writer']);
    created = await A.createClient(userToken, { displayName: 'openid-client', scopedRoles: ['reader'] });
    key = await privateKeyOf(created.clientSecret);
  });

  after(async () => {
    // Revoked by the last test; this one is for a run that stopped before it.
    if (created) await A.deleteClient(userToken, created.client.id).catch(() => {});
  });

  async function discover(options = {}) {
    return client.discovery(
      new URL(A.issuer),
      created.client.clientId,
      undefined,
      client.PrivateKeyJwt(key),
      { execute: [client.allowInsecureRequests], [client.customFetch]: recordingFetch, ...options },
    );
  }

  test('discovery from the issuer URL alone finds the token endpoint and keys', async () => {
    for (const algorithm of ['oidc', 'oauth2']) {
      const config = await discover({ algorithm });
      const metadata = config.serverMetadata();
      assert.equal(metadata.issuer, A.issuer, `${algorithm} discovery`);
      assert.equal(metadata.token_endpoint, `${A.issuer}/auth/v1/token`, `${algorithm} discovery`);
      assert.equal(metadata.jwks_uri, `${A.issuer}/.well-known/jwks.json`, `${algorithm} discovery`);
    }
  });

  test('clientCredentialsGrant returns a bearer token, and the assertion it signed is accepted', async () => {
    const config = await discover();
    sent.length = 0;
    let tokens;
    try {
      tokens = await client.clientCredentialsGrant(config);
    } catch (err) {
      assert.fail(`the token request failed: ${err.name} ${err.code ?? ''} ${err.message} ` +
        `${JSON.stringify(err.cause ?? err.error ?? '')}\nsent: ${describeSent(sent)}\n${A.describe()}`);
    }
    assert.equal(tokens.token_type, 'bearer'); // lower-cased by the library
    assert.equal(typeof tokens.access_token, 'string');
    assert.ok(tokens.expires_in > 0 && tokens.expires_in <= 3600, `expires_in ${tokens.expires_in}`);

    // What the library sent: the defaults of oauth4webapi's PrivateKeyJwt.
    assert.equal(sent.length, 1, `requests: ${describeSent(sent)}`);
    const [request] = sent;
    assert.equal(String(request.url), `${A.issuer}/auth/v1/token`);
    assert.equal(request.body.get('grant_type'), 'client_credentials');
    assert.equal(request.body.get('client_id'), created.client.clientId);
    assert.equal(request.body.get('client_assertion_type'), ASSERTION_TYPE);
    const { header, payload } = decodeJwt(request.body.get('client_assertion'));
    // oauth4webapi names an Ed25519 key's algorithm "Ed25519" (RFC 9864), not "EdDSA" (the
    // jose tests sign theirs "EdDSA"): the server takes both.
    assert.equal(header.alg, 'Ed25519', 'the algorithm oauth4webapi names in the assertion');
    assert.equal(payload.aud, A.issuer, 'the default assertion audience is the issuer, one string');
    assert.equal(payload.iss, created.client.clientId);
    assert.equal(payload.sub, created.client.clientId);
    assert.equal(typeof payload.jti, 'string');
    assert.ok(payload.exp - payload.iat <= 300, `assertion lifetime ${payload.exp - payload.iat} s`);
  });

  test('a scope parameter, as many clients send, does not stop the grant', async () => {
    const config = await discover();
    const tokens = await client.clientCredentialsGrant(config, { scope: 'reader' });
    assert.equal(typeof tokens.access_token, 'string');
  });

  test('oauth4webapi validates the token as an RFC 9068 access token against the discovered metadata', async () => {
    const config = await discover();
    const { access_token: accessToken } = await client.clientCredentialsGrant(config);
    const metadata = config.serverMetadata();
    const request = new Request('http://resource.example/notes', {
      headers: { authorization: `Bearer ${accessToken}` },
    });
    const claims = await oauth.validateJwtAccessToken(metadata, request, metadata.issuer, {
      [oauth.allowInsecureRequests]: true,
    });
    assert.equal(claims.iss, A.issuer);
    assert.equal(claims.aud, A.issuer);
    assert.equal(claims.sub, 'alice');
    assert.equal(claims.client_id, created.client.clientId);
    assert.deepEqual(claims.roles, ['reader']);
    assert.equal(claims.scope, 'reader');

    // The same token for another audience is refused.
    await assert.rejects(
      oauth.validateJwtAccessToken(metadata, request, 'https://other.example', { [oauth.allowInsecureRequests]: true }),
      (err) => err instanceof oauth.OperationProcessingError && err.code === oauth.JWT_CLAIM_COMPARISON && /aud/.test(err.message),
    );
  });

  // RFC 9068 §2.2 makes client_id REQUIRED, and a user token from mint-token has none: no client
  // obtained it. The README says strict validators refuse it; this holds the README to it.
  test('oauth4webapi refuses a user token from mint-token: it names no client_id', async () => {
    const config = await discover();
    const metadata = config.serverMetadata();
    const request = new Request('http://resource.example/notes', {
      headers: { authorization: `Bearer ${userToken}` },
    });
    await assert.rejects(
      oauth.validateJwtAccessToken(metadata, request, metadata.issuer, { [oauth.allowInsecureRequests]: true }),
      (err) => err instanceof oauth.OperationProcessingError && /client_id/.test(err.message),
    );
  });

  test('a revoked credential gets invalid_client from the token endpoint', async () => {
    const config = await discover();
    await A.deleteClient(userToken, created.client.id);
    await assert.rejects(client.clientCredentialsGrant(config), (err) => {
      assert.ok(err instanceof client.ResponseBodyError, `${err.name}: ${err.message}`);
      assert.equal(err.error, 'invalid_client');
      assert.equal(err.status, 401);
      return true;
    });
    created = undefined;
  });
});

function describeSent(requests) {
  return JSON.stringify(requests.map(({ url, body }) => {
    const fields = Object.fromEntries(body);
    if (fields.client_assertion) fields.client_assertion = decodeJwt(fields.client_assertion);
    return { url: String(url), ...fields };
  }), null, 1);
}
