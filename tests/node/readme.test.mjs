// The js blocks of README.md's "Resource servers and OAuth libraries" section, run exactly as
// written: api.mjs as a server of its own, token.mjs as a client calling it, verify.mjs imported
// as a resource server would import it. Each block names its file on its first line.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { A, B, freePort } from './lib/service.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const README = join(HERE, '..', '..', 'README.md');
const BEGIN = '<!-- resource servers: begin -->';
const END = '<!-- resource servers: end -->';
const NAMES = ['api.mjs', 'verify.mjs', 'token.mjs'];

/** The ```js blocks between the markers, by the file name their first line gives. */
function readmeBlocks() {
  const text = readFileSync(README, 'utf8');
  const start = text.indexOf(`\n${BEGIN}\n`);
  const end = text.indexOf(`\n${END}\n`);
  assert.ok(start >= 0 && end > start, `README.md has no "${BEGIN}" ... "${END}" section`);
  const blocks = {};
  for (const [, code] of text.slice(start, end).matchAll(/^```js\n([\s\S]*?)^```$/gm)) {
    const name = code.match(/^\/\/ ([\w-]+\.mjs)\b/)?.[1];
    assert.ok(name, `a js block does not name its file on its first line:\n${code}`);
    assert.equal(blocks[name], undefined, `two blocks are named ${name}`);
    blocks[name] = code;
  }
  assert.deepEqual(Object.keys(blocks).sort(), [...NAMES].sort(), 'the README section lacks a block');
  return blocks;
}

/** The environment a reader's shell would give the block: none of ours, theirs added. */
function blockEnv(extra) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('PC_')
    && !name.startsWith('SERVER_') && name !== 'NODE_ENV' && !name.startsWith('NODE_TEST')));
  return { ...env, ...extra };
}

/** Runs a block to its end (at most 30 s); resolves to {code, stdout, stderr}. */
function runBlock(dir, name, env) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(dir, name)], { cwd: dir, env: blockEnv(env) });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => { stdout += chunk; });
    child.stderr.on('data', (chunk) => { stderr += chunk; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? signal, stdout, stderr });
    });
  });
}

describe('README: resource servers and OAuth libraries, as written', () => {
  let dir;
  let api;
  let apiUrl;
  let apiOutput = '';
  let userToken;
  let created;

  before(async () => {
    const blocks = readmeBlocks();
    dir = mkdtempSync(join(tmpdir(), 'pc-node-readme-'));
    // The blocks import their packages as a reader's project would, from a node_modules beside them.
    symlinkSync(join(HERE, 'node_modules'), join(dir, 'node_modules'), 'dir');
    writeFileSync(join(dir, 'package.json'), '{"type": "module", "private": true}\n');
    for (const [name, code] of Object.entries(blocks)) writeFileSync(join(dir, name), code);

    const port = await freePort();
    apiUrl = `http://127.0.0.1:${port}`;
    api = spawn(process.execPath, [join(dir, 'api.mjs')],
      { cwd: dir, env: blockEnv({ PC_ISSUER: A.issuer, PORT: String(port) }) });
    api.stdout.on('data', (chunk) => { apiOutput += chunk; });
    api.stderr.on('data', (chunk) => { apiOutput += chunk; });
    // Up to 10 s for the "listening on PORT" line; then fail with what it printed.
    for (let i = 0; i < 100 && !apiOutput.includes(`listening on ${port}`); i += 1) {
      if (api.exitCode !== null) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.ok(apiOutput.includes(`listening on ${port}`), `api.mjs did not start; it printed:\n${apiOutput}`);

    userToken = A.mint('alice', ['reader', 'writer']);
    created = await A.createClient(userToken, { displayName: 'readme', scopedRoles: ['reader'] });
  });

  after(async () => {
    if (api && api.exitCode === null) {
      const closed = new Promise((resolve) => api.once('close', resolve));
      api.kill('SIGTERM');
      await closed;
    }
    if (created) await A.deleteClient(userToken, created.client.id);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('token.mjs gets a token with the secret and calls api.mjs with it', async () => {
    const run = await runBlock(dir, 'token.mjs', {
      PC_ISSUER: A.issuer,
      PC_CLIENT_ID: created.client.clientId,
      PC_CLIENT_SECRET: created.clientSecret,
      API_URL: `${apiUrl}/whoami`,
    });
    assert.equal(run.code, 0, `token.mjs exited ${run.code}:\n${run.stderr}${run.stdout}\n${A.describe()}`);
    const expected = JSON.stringify({ user: 'alice', client: created.client.clientId, roles: ['reader'] });
    assert.match(run.stdout, /^200 /, run.stdout);
    assert.ok(run.stdout.includes(expected), `expected ${expected} in: ${run.stdout}`);
    assert.match(run.stdout, /\(token good for \d+ s\)/);
  });

  test('api.mjs: no token is 401; requiredScopes("writer") admits a writer', async () => {
    const anonymous = await fetch(`${apiUrl}/whoami`);
    assert.equal(anonymous.status, 401);
    const writer = await fetch(`${apiUrl}/notes/7`, { method: 'DELETE', headers: { authorization: `Bearer ${userToken}` } });
    assert.equal(writer.status, 204, `${writer.status} ${writer.headers.get('www-authenticate')}\n${apiOutput}`);
  });

  test("verify.mjs returns a valid token's claims and refuses another issuer's", async () => {
    const previous = process.env.PC_ISSUER;
    process.env.PC_ISSUER = A.issuer; // verify.mjs reads it once, as it is imported
    let verify;
    try {
      ({ verify } = await import(pathToFileURL(join(dir, 'verify.mjs')).href));
    } finally {
      if (previous === undefined) delete process.env.PC_ISSUER; else process.env.PC_ISSUER = previous;
    }
    const claims = await verify(userToken);
    assert.equal(claims.sub, 'alice');
    assert.deepEqual(claims.roles, ['reader', 'writer']);
    await assert.rejects(verify(B.mint('alice', ['reader'])), /no applicable key|matching key|signature/i);
  });
});
