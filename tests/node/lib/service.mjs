// The servers run.sh started, and what the tests do with them that no library does: mint a
// user token with the binary, create and revoke a personal client over the JSON API, turn a
// secret into its private key.
//
// run.sh starts two servers, A and B, each with its own database and signing key, and passes
// their addresses here in SERVER_A_* / SERVER_B_*. Every test talks to A; B is the other
// issuer whose tokens A's relying parties must refuse.

import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { importJWK } from 'jose';

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run these tests with tests/node/run.sh, which starts the servers`);
  }
  return value;
}

export const BINARY = required('PC_BINARY');

// The binary reads a PC_* twin of every flag: none of this process's may reach it.
function childEnv() {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('PC_')));
  return { ...env, NO_COLOR: '1' };
}

class Server {
  constructor(name) {
    this.name = name;
    this.issuer = required(`SERVER_${name}_ISSUER`); // http://127.0.0.1:PORT, as given to --issuer
    this.publicHost = required(`SERVER_${name}_PUBLIC_HOST`);
    this.databaseUrl = required(`SERVER_${name}_DATABASE_URL`);
    this.logPath = required(`SERVER_${name}_LOG`);
  }

  /** The last lines of the server's log, where it says why it refused something. */
  logTail(lines = 30) {
    try {
      return readFileSync(this.logPath, 'utf8').split('\n').slice(-lines).join('\n');
    } catch (err) {
      return `(cannot read ${this.logPath}: ${err.message})`;
    }
  }

  /** For failure messages: what the server logged last. */
  describe() {
    return `server ${this.name} (${this.issuer}), log ${this.logPath}:\n${this.logTail()}`;
  }

  /** A user access token minted by the binary itself, as an operator would. */
  mint(user, roles, ttl = '1h') {
    const token = execFileSync(
      BINARY,
      ['mint-token', '--database-url', this.databaseUrl, '--issuer', this.issuer,
        '--public-host', this.publicHost, '--user', user, '--roles', roles.join(','), '--ttl', ttl],
      { env: childEnv(), encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 },
    ).trim();
    if (token.split('.').length !== 3) throw new Error(`mint-token printed no JWT: ${JSON.stringify(token)}`);
    return token;
  }

  /** Creates a personal client over the JSON API; returns the answer ({client, clientSecret}). */
  async createClient(userToken, fields = {}) {
    const body = { displayName: 'node test', scopedRoles: ['reader'], expires: '86400s', ...fields };
    const response = await fetch(`${this.issuer}/api/v1/iam/personal_clients`, {
      method: 'POST',
      headers: { authorization: `Bearer ${userToken}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const text = await response.text();
    if (response.status !== 200) {
      throw new Error(`creating a personal client: HTTP ${response.status} ${text}\n${this.describe()}`);
    }
    const answer = JSON.parse(text);
    if (!answer.client?.clientId || !answer.client?.id || !answer.clientSecret) {
      throw new Error(`the create answer lacks client.clientId, client.id or clientSecret: ${text}`);
    }
    return answer;
  }

  /** Revokes a personal client over the JSON API. */
  async deleteClient(userToken, id) {
    const response = await fetch(`${this.issuer}/api/v1/iam/personal_clients/${encodeURIComponent(id)}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${userToken}` },
    });
    if (response.status !== 200) {
      throw new Error(`deleting ${id}: HTTP ${response.status} ${await response.text()}\n${this.describe()}`);
    }
  }
}

export const A = new Server('A');
export const B = new Server('B');

/** The JWK inside a secret: `secret-token:<namespace>:v1:<base64url of the JWK>`. */
export function secretJwk(secret) {
  const parts = secret.split(':');
  if (parts.length !== 4 || parts[0] !== 'secret-token' || parts[2] !== 'v1') {
    throw new Error(`not a secret-token:<namespace>:v1:<key> secret: ${parts.slice(0, 3).join(':')}:...`);
  }
  return JSON.parse(Buffer.from(parts[3], 'base64url').toString('utf8'));
}

/** The secret's Ed25519 private key as a CryptoKey, through jose. */
export async function privateKeyOf(secret) {
  return importJWK(secretJwk(secret), 'EdDSA');
}

/** A port free on 127.0.0.1 at the time of asking. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** Decodes a JWT's header and claims without checking anything. */
export function decodeJwt(jwt) {
  const [header, payload] = jwt.split('.').slice(0, 2)
    .map((part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')));
  return { header, payload };
}
