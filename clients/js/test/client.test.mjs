// The client's own rules, in Node, against servers that misbehave on
// purpose (a real hrrt-server cannot): each "server" below is a WebSocket
// stand-in written here, passed as the `WebSocket` option.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, endpoint, CLOSE_ADVICE } from '../hrrt.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A WebSocket whose server does `behave(socket)` once open. */
function server(behave) {
  const sockets = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
      setTimeout(() => {
        if (this.readyState !== 0) return;
        this.readyState = 1;
        behave(this, sockets.length);
      }, 1);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code = 1000, reason = '') {
      this.serverClose(code, reason);
    }
    // What the server sends.
    frame(frame) {
      this.onmessage?.({ data: JSON.stringify({ timestamp: new Date().toISOString(), ...frame }) });
    }
    serverClose(code, reason = '') {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  return { FakeSocket, sockets };
}

const connected = (socket, extra = {}) =>
  socket.frame({
    type: 'connected',
    payload: {
      connection_id: 'c',
      user_id: '1',
      org_id: '7',
      epoch: 'e1',
      positions: { 'org:7': 0, 'user:1': 0 },
      expires_at: new Date(Date.now() + 3600_000).toISOString(),
      ...extra,
    },
  });

/** Collects statuses until `done(statuses)` holds (bounded by `ms`). */
async function statuses(options, done, ms = 5000) {
  const seen = [];
  const live = connect({ getToken: () => 't', url: 'http://hrrt.test', ...options, onStatus: (s) => seen.push(s) });
  const deadline = Date.now() + ms;
  while (!done(seen) && Date.now() < deadline) await sleep(5);
  live.close();
  return seen;
}

test('url: the WebSocket endpoint as given, or a base with /ws added', () => {
  assert.equal(endpoint('wss://rt.example.com/ws'), 'wss://rt.example.com/ws');
  assert.equal(endpoint('wss://rt.example.com/ws/'), 'wss://rt.example.com/ws');
  assert.equal(endpoint('https://rt.example.com'), 'wss://rt.example.com/ws');
  assert.equal(endpoint('http://127.0.0.1:8000/'), 'ws://127.0.0.1:8000/ws');
  assert.equal(endpoint('https://example.com/realtime'), 'wss://example.com/realtime/ws');
  const { FakeSocket, sockets } = server(() => {});
  const live = connect({ url: 'wss://rt.example.com/ws', getToken: () => 't', WebSocket: FakeSocket });
  return sleep(10).then(() => {
    live.close();
    assert.ok(sockets[0].url.startsWith('wss://rt.example.com/ws?token=t'), sockets[0].url);
  });
});

test('without a WebSocket implementation: one clear error naming the option', () => {
  const saved = globalThis.WebSocket;
  try {
    delete globalThis.WebSocket;
    assert.throws(
      () => connect({ url: 'http://hrrt.test', getToken: () => 't' }),
      (e) => e instanceof TypeError && /WebSocket option/.test(e.message),
    );
  } finally {
    if (saved) globalThis.WebSocket = saved;
  }
});

test('close() while getToken is pending opens nothing and reports nothing after', async () => {
  const { FakeSocket, sockets } = server((s) => connected(s));
  let answer;
  const events = [];
  const live = connect({
    url: 'http://hrrt.test',
    WebSocket: FakeSocket,
    getToken: () => new Promise((r) => (answer = r)),
    onEvent: (e) => events.push(e),
  });
  await sleep(5);
  live.close();
  answer('t');
  await sleep(30);
  assert.equal(sockets.length, 0, 'no socket after close()');
  assert.deepEqual(events, []);
});

test('a token with weeks left is refreshed once, near its expiry, not at once', async () => {
  let tokens = 0;
  const { FakeSocket, sockets } = server((s) =>
    connected(s, { expires_at: new Date(Date.now() + 40 * 24 * 3600_000).toISOString() }),
  );
  const live = connect({
    url: 'http://hrrt.test',
    WebSocket: FakeSocket,
    getToken: () => {
      tokens += 1;
      return 't';
    },
  });
  await sleep(300);
  live.close();
  assert.equal(tokens, 1, 'getToken asked once, at the start');
  assert.equal(sockets[0].sent.length, 0, 'no auth.refresh sent');
});

test('a server that accepts and closes at once sees the backoff grow', async () => {
  const { FakeSocket, sockets } = server((s) => {
    connected(s);
    s.serverClose(1013, 'connection limit');
  });
  const seen = await statuses(
    { WebSocket: FakeSocket, minBackoffMs: 4, maxBackoffMs: 10_000 },
    (s) => s.filter((x) => x.state === 'reconnecting').length >= 5,
  );
  const attempts = seen.filter((s) => s.state === 'reconnecting').map((s) => s.attempt);
  assert.deepEqual(attempts.slice(0, 5), [1, 2, 3, 4, 5], `backoff reset on connected: ${attempts}`);
  assert.ok(sockets.length <= 6, `${sockets.length} sockets`);
});

test('a connection that proved itself (an event) starts the backoff again', async () => {
  const { FakeSocket } = server((s, n) => {
    connected(s);
    if (n === 3) s.frame({ type: 'entity.created', channel: 'org:7', seq: 1, payload: {} });
    s.serverClose(1013, 'slow consumer');
  });
  const seen = await statuses(
    { WebSocket: FakeSocket, minBackoffMs: 4, maxBackoffMs: 10_000 },
    (s) => s.filter((x) => x.state === 'reconnecting').length >= 4,
  );
  const attempts = seen.filter((s) => s.state === 'reconnecting').map((s) => s.attempt);
  assert.deepEqual(attempts.slice(0, 4), [1, 2, 1, 2], `${attempts}`);
});

test('fresh tokens refused three times in a row: stopped, with the reason', async () => {
  let tokens = 0;
  const { FakeSocket, sockets } = server((s) => s.serverClose(1008, 'invalid token'));
  const seen = await statuses(
    {
      WebSocket: FakeSocket,
      minBackoffMs: 1,
      getToken: () => {
        tokens += 1;
        return `t${tokens}`;
      },
    },
    (s) => s.some((x) => x.state === 'stopped'),
  );
  await sleep(50);
  const stopped = seen.find((s) => s.state === 'stopped');
  assert.ok(stopped, seen.map((s) => s.state).join(','));
  assert.match(stopped.reason, /3 fresh tokens in a row were refused \(invalid token\)/);
  assert.equal(sockets.length, 3);
  assert.equal(tokens, 3);
});

test('close codes follow one table (the Rust test holds it to CloseCode::advice)', async () => {
  assert.equal(CLOSE_ADVICE[1013], 'reconnect');
  assert.equal(CLOSE_ADVICE[1000], undefined);
  // 1000 from the server: stop, not a reconnect loop.
  const { FakeSocket, sockets } = server((s) => {
    connected(s);
    s.serverClose(1000, 'bye');
  });
  const seen = await statuses({ WebSocket: FakeSocket }, (s) => s.some((x) => x.state === 'stopped'));
  assert.ok(seen.some((s) => s.state === 'stopped' && s.code === 1000), seen.map((s) => s.state).join(','));
  assert.equal(sockets.length, 1);
});
