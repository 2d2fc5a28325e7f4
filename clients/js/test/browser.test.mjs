// The client in a real headless Chromium against a real hrrt-server:
// a server-side disconnect (1008: a new token), a token that expires while
// connected (refreshed in place), a server restart (memory engine: the
// epoch changes, reported, then live), duplicate-free replay, and the seed
// front end's plain handler beside it.
//
// Needs /usr/bin/chromium (Debian's `chromium`; scripts/test.sh installs
// it) and the debug hrrt-server (HRRT_SERVER_BIN, or target/debug/).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import path from 'node:path';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../../..');
const SECRET = 'js-client-secret-js-client-secret-js';
const BIN = process.env.HRRT_SERVER_BIN || path.join(root, 'target/debug/hrrt-server');

const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
function mint(claims) {
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64(claims);
  const sig = createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}
const now = () => Math.floor(Date.now() / 1000);
const userToken = (user, org, ttl = 600, pad = undefined) =>
  mint({ sub: user, org_id: org, role: 'user', iat: now(), exp: now() + ttl, ...(pad ? { pad } : {}) });
const service = () => mint({ sub: 'backend', role: 'service', iat: now(), exp: now() + 600 });

const freePort = () =>
  new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

let hrrtPort, hrrt, web, webPort, browser, page;
const ttl = {};
const pad = {};

async function spawnHrrt(port, extra = []) {
  const child = spawn(
    BIN,
    ['--jwt-secret', SECRET, '--listen', `127.0.0.1:${port}`, '--token-check-interval', '500ms', ...extra],
    { stdio: 'ignore' },
  );
  for (let i = 0; i < 200; i++) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/healthz`);
      if (r.ok) return child;
    } catch {}
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('hrrt-server did not start');
}

async function startHrrt() {
  hrrt = await spawnHrrt(hrrtPort);
}

async function stopHrrt() {
  const exited = new Promise((r) => hrrt.once('exit', r));
  hrrt.kill('SIGTERM');
  await exited;
}

async function publish(body, port = hrrtPort) {
  const r = await fetch(`http://127.0.0.1:${port}/api${body.path || '/events'}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${service()}`, 'content-type': 'application/json' },
    body: JSON.stringify(body.json || body),
  });
  const text = await r.text();
  assert.equal(r.status, 200, text);
  return JSON.parse(text);
}

const run = (name) => page.evaluate((n) => window.runs[n], name);
const until = (fn, arg, timeout = 10000) => page.waitForFunction(fn, arg, { timeout });
const seqs = (events, channel) => events.filter((e) => e.channel === channel).map((e) => e.seq);

before(async () => {
  hrrtPort = await freePort();
  await startHrrt();
  web = createServer(async (req, res) => {
    const file = req.url === '/hrrt.js' ? path.join(here, '../hrrt.js') : path.join(here, 'page.html');
    res.setHeader('content-type', file.endsWith('.js') ? 'text/javascript' : 'text/html');
    res.end(await readFile(file));
  });
  webPort = await freePort();
  await new Promise((r) => web.listen(webPort, '127.0.0.1', r));
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  page = await browser.newPage();
  page.on('console', (m) => consoleLines.push(m.text()));
  await page.exposeFunction('mintToken', (name) => userToken(name, 'o1', ttl[name] ?? 600, pad[name]));
  await page.goto(`http://127.0.0.1:${webPort}/page.html`);
  await until(() => window.ready === true);
});
const consoleLines = [];

after(async () => {
  await browser?.close();
  web?.close();
  if (hrrt && hrrt.exitCode === null) await stopHrrt();
});

test('a server-side disconnect (1008) fetches a new token and loses nothing', async () => {
  await page.evaluate((url) => window.start('alice', url), `http://127.0.0.1:${hrrtPort}`);
  await until(() => window.runs.alice.statuses.includes('live'));
  await publish({ type: 'entity.created', org_id: 'o1', payload: { n: 1 } });
  await until(() => window.runs.alice.events.length >= 1);
  await publish({ path: '/disconnect', json: { user_id: 'alice', reason: 'access changed' } });
  // Published while it is away: replayed on its resume.
  await publish({ type: 'entity.created', org_id: 'o1', payload: { n: 2 } });
  await publish({ type: 'share.created', user_id: 'alice', payload: { share_id: 5 } });
  await until(() => window.runs.alice.events.length >= 3);
  const r = await run('alice');
  assert.ok(r.statuses.includes('unauthorized'), r.statuses.join(','));
  assert.ok(r.tokens >= 2, 'asked getToken again after 1008');
  assert.deepEqual(seqs(r.events, 'org:o1'), [1, 2]);
  assert.deepEqual(seqs(r.events, 'user:alice'), [1]);
});

test('a token that expires while connected is refreshed in place', async () => {
  ttl.bob = 3;
  const expires = Date.now() + 3000;
  await page.evaluate((url) => window.start('bob', url), `http://127.0.0.1:${hrrtPort}`);
  await until(() => window.runs.bob.statuses.includes('live'));
  await until(() => window.runs.bob.tokens >= 2);
  // Past the first token's expiry, and two of the server's checks (500 ms).
  await until((t) => Date.now() > t + 1000, expires);
  const { seq } = await publish({ type: 'entity.updated', org_id: 'o1', payload: { n: 3 } });
  await until((s) => window.runs.bob.events.some((e) => e.seq === s), seq);
  const r = await run('bob');
  assert.ok(r.tokens >= 2, 'refreshed with a new token');
  assert.deepEqual(r.statuses.filter((s) => s === 'live'), ['live'], `no reconnect: ${r.statuses}`);
});

test('the seed front end handler works unchanged beside the client', async () => {
  await page.evaluate(([url, t]) => window.seed(url, t), [`http://127.0.0.1:${hrrtPort}`, userToken('carol', 'o1')]);
  await until(() => window.seedConnected === true);
  await publish({ type: 'entity.created', org_id: 'o1', payload: { id: 9, name: 'Seed' } });
  for (let i = 0; i < 100 && !consoleLines.some((l) => l.includes('New entity:')); i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(consoleLines.some((l) => l.includes('New entity:') && l.includes('Seed')), consoleLines.join('\n'));
});

test('a server restart is an epoch change, reported, then live again, without duplicates', async () => {
  const before = await run('alice');
  const oldEpoch = await page.evaluate(() => window.runs.alice.live.epoch());
  await stopHrrt();
  await startHrrt();
  await until(() => window.runs.alice.resyncs.some((r) => r.reason === 'epoch_changed'), null, 20000);
  await until(() => window.runs.alice.statuses.at(-1) === 'live', null, 20000);
  const { seq } = await publish({ type: 'entity.deleted', org_id: 'o1', payload: { id: 1 } });
  assert.equal(seq, 1, 'the new epoch starts at 1');
  await until((s) => window.runs.alice.events.some((e) => e.type === 'entity.deleted' && e.seq === s), seq);
  const r = await run('alice');
  const resync = r.resyncs.find((x) => x.reason === 'epoch_changed');
  assert.notEqual(resync.epoch, oldEpoch);
  assert.equal(await page.evaluate(() => window.runs.alice.live.epoch()), resync.epoch);
  // Every channel's seqs strictly increase within each epoch: no duplicate.
  const org = seqs(r.events, 'org:o1');
  assert.deepEqual(org.slice(0, seqs(before.events, 'org:o1').length), seqs(before.events, 'org:o1'));
  assert.equal(org.at(-1), 1);
});

test('a slow-consumer close (1013) reconnects and resumes every event once', async () => {
  // A send queue of one frame: a batch fanned out faster than the socket
  // takes it closes the tab as a slow consumer.
  const port = await freePort();
  const slow = await spawnHrrt(port, ['--send-queue', '1']);
  try {
    await page.evaluate((url) => window.start('dave', url), `http://127.0.0.1:${port}`);
    await until(() => window.runs.dave.statuses.includes('live'));
    let published = 0;
    for (let i = 0; i < 20 && !(await run('dave')).codes.includes(1013); i++) {
      const batch = Array.from({ length: 50 }, (_, k) => ({
        type: 'entity.created', org_id: 'o1', payload: { k },
      }));
      await publish({ json: batch }, port);
      published += 50;
      await until((n) => window.runs.dave.events.length >= n, published, 15000);
    }
    const r = await run('dave');
    assert.ok(r.codes.includes(1013), `closed as a slow consumer: ${r.codes}`);
    assert.deepEqual(seqs(r.events, 'org:o1'), Array.from({ length: published }, (_, i) => i + 1));
  } finally {
    await page.evaluate(() => window.runs.dave.live.close());
    const exited = new Promise((r) => slow.once('exit', r));
    slow.kill('SIGTERM');
    await exited;
  }
});

test('a 1009 close stops the client and reports a bug instead of retrying', async () => {
  // A server that takes frames of at most 1 KiB, and a token (sent in
  // the refresh frame) over that: the refresh is refused with 1009.
  const port = await freePort();
  const strict = await spawnHrrt(port, ['--max-message-bytes', '1024']);
  try {
    ttl.erin = 2;
    pad.erin = 'x'.repeat(1500);
    await page.evaluate((url) => window.start('erin', url), `http://127.0.0.1:${port}`);
    await until(() => window.runs.erin.statuses.includes('stopped'), null, 15000);
    const r = await run('erin');
    assert.ok(r.codes.includes(1009), `closed 1009: ${r.codes}`);
    // Stopped at the 1009, and nothing after it. (The server may reset the
    // socket before the browser reads its 1009 when the oversized frame is
    // still arriving; the browser then sees 1006 and the client rightly
    // reconnects once, until a 1009 arrives.)
    assert.equal(r.statuses.at(-1), 'stopped', `${r.statuses}`);
    // An absence can only be waited out: a retry would show within the
    // first backoff step (at most 250 ms); give it 1 s.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const after = await run('erin');
    assert.deepEqual(after.statuses, r.statuses, 'no retry after the 1009');
  } finally {
    const exited = new Promise((r) => strict.once('exit', r));
    strict.kill('SIGTERM');
    await exited;
  }
});

test('the WebSocket endpoint as url (wss://host/ws) connects as the base does', async () => {
  await page.evaluate((url) => window.start('frank', url), `ws://127.0.0.1:${hrrtPort}/ws`);
  await until(() => window.runs.frank.statuses.includes('live'));
  const { seq } = await publish({ type: 'share.created', user_id: 'frank', payload: { share_id: 1 } });
  await until((s) => window.runs.frank.events.some((e) => e.seq === s), seq);
  await page.evaluate(() => window.runs.frank.live.close());
});

test('back online: a client waiting out a long backoff reconnects at once', async () => {
  const port = await freePort();
  let server = await spawnHrrt(port);
  const stop = async () => {
    const exited = new Promise((r) => server.once('exit', r));
    server.kill('SIGTERM');
    await exited;
  };
  try {
    // A backoff far longer than the test: only the online event can bring
    // it back in time.
    await page.evaluate(
      (url) => window.start('gina', url, { minBackoffMs: 60000, maxBackoffMs: 60000 }),
      `http://127.0.0.1:${port}`,
    );
    await until(() => window.runs.gina.statuses.includes('live'));
    await stop();
    await until(() => window.runs.gina.statuses.at(-1) === 'reconnecting');
    server = await spawnHrrt(port);
    await page.evaluate(() => window.dispatchEvent(new Event('online')));
    await until(() => window.runs.gina.statuses.at(-1) === 'live', null, 10000);
  } finally {
    await page.evaluate(() => window.runs.gina?.live.close());
    await stop();
  }
});
