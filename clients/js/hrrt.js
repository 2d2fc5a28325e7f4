// hrrt browser client: one ES module, no dependencies.
//
//   import { connect } from './hrrt.js';
//   const live = connect({
//     url: 'wss://rt.example.com/ws',            // or the base, https://rt.example.com
//     getToken: async () => (await fetch('/api/realtime-token')).text(),
//     onEvent: (event) => render(event),
//     onResync: (resync) => refetch(resync.channel),
//     onStatus: (status) => showBadge(status.state),
//   });
//   live.close();
//
// It keeps each channel's last seq and the epoch, and resumes with
// `since` + `epoch` after every reconnect, so nothing published while it
// was away is missed; it drops a seq it already has; it refreshes its token
// in place (`auth.refresh`) before `expires_at`; and it follows the close
// codes' advice (CLOSE_ADVICE, the table of hrrt-protocol's
// `CloseCode::advice`): reconnect with jittered exponential backoff, ask
// `getToken` again, or stop. See docs/clients.md.

/**
 * What a client does when the server closes with a code: the same table as
 * hrrt-protocol's `CloseCode::advice` (a Rust test compares the two).
 * Codes not listed: `stop`.
 */
export const CLOSE_ADVICE = Object.freeze({
  1001: 'reconnect',
  1006: 'reconnect',
  1011: 'reconnect',
  1012: 'reconnect',
  1013: 'reconnect',
  1008: 'new_token',
  1009: 'fix_frame',
});

/** The longest delay `setTimeout` takes (2^31 - 1 ms, about 24.8 days). */
const MAX_TIMER_MS = 2147483647;

/** Fresh tokens refused (1008 before `connected`) in a row before stopping. */
const MAX_REFUSED_TOKENS = 3;

/**
 * The WebSocket endpoint for `url`: `wss://host/ws` as given, or a base
 * (`https://host`, `https://host/prefix`) with `/ws` added.
 * @param {string} url
 */
export function endpoint(url) {
  const text = String(url).trim().replace(/^http/, 'ws').replace(/\/+$/, '');
  return /\/ws$/.test(new URL(text).pathname) ? text : `${text}/ws`;
}

/**
 * @param {import('./hrrt').Options} options
 * @returns {import('./hrrt').Connection}
 */
export function connect(options) {
  const {
    url,
    getToken,
    onEvent = () => {},
    onResync = () => {},
    onStatus = () => {},
    WebSocket: Socket = globalThis.WebSocket,
    minBackoffMs = 250,
    maxBackoffMs = 30000,
    stableMs = 30000,
  } = options;
  if (typeof getToken !== 'function') throw new TypeError('connect: getToken must be a function');
  if (typeof Socket !== 'function') {
    throw new TypeError(
      'connect: no WebSocket implementation here (Node before 22 has none): ' +
        "pass one as the WebSocket option, e.g. connect({ WebSocket: (await import('ws')).WebSocket, … })",
    );
  }
  const target = endpoint(url);
  const positions = {};
  let epoch = null;
  let token = null;
  let ws = null;
  let closed = false;
  let attempt = 0;
  let refused = 0;
  let retryTimer = null;
  let refreshTimer = null;
  let stableTimer = null;

  const status = (state, extra = {}) => {
    try {
      onStatus({ state, ...extra });
    } catch (e) {
      console.error('hrrt onStatus threw', e);
    }
  };

  const stop = (extra) => {
    closed = true;
    clearTimeout(retryTimer);
    clearTimeout(refreshTimer);
    clearTimeout(stableTimer);
    unwatch();
    status('stopped', extra);
  };

  // The backoff starts again only once a connection has proved itself (up
  // for `stableMs`, or an event arrived): a server that accepts and closes
  // at once sees the backoff grow, not a reconnect storm.
  const proven = () => {
    clearTimeout(stableTimer);
    attempt = 0;
  };

  const scheduleRefresh = (expiresAt) => {
    clearTimeout(refreshTimer);
    const left = Date.parse(expiresAt) - Date.now();
    if (!(left > 0)) return;
    // Refresh with a margin: 30 s, or half of what is left for short tokens.
    const at = Math.max(0, left - Math.min(30000, left / 2));
    if (at > MAX_TIMER_MS) {
      // Longer than a timer can wait: wait what it can, then look again.
      refreshTimer = setTimeout(() => scheduleRefresh(expiresAt), MAX_TIMER_MS);
      return;
    }
    refreshTimer = setTimeout(async () => {
      let fresh;
      try {
        fresh = await getToken();
      } catch (e) {
        if (!closed) status('error', { reason: `getToken failed: ${e}` });
        return;
      }
      if (closed) return;
      if (fresh && ws && ws.readyState === 1) {
        token = fresh;
        ws.send(JSON.stringify({ type: 'auth.refresh', token: fresh }));
      }
    }, at);
  };

  const retry = () => {
    if (closed) return;
    const ceiling = Math.min(maxBackoffMs, minBackoffMs * 2 ** attempt);
    const wait = ceiling / 2 + Math.random() * (ceiling / 2);
    attempt += 1;
    status('reconnecting', { inMs: Math.round(wait), attempt });
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => {
      retryTimer = null;
      open();
    }, wait);
  };

  // The browser says it is back (network up again, or the tab shown after
  // a sleep): a client waiting out a backoff goes now.
  const wake = () => {
    if (closed || retryTimer === null) return;
    if (typeof document !== 'undefined' && document.visibilityState === 'hidden') return;
    clearTimeout(retryTimer);
    retryTimer = null;
    open();
  };
  const watch = () => {
    globalThis.addEventListener?.('online', wake);
    globalThis.document?.addEventListener?.('visibilitychange', wake);
  };
  const unwatch = () => {
    globalThis.removeEventListener?.('online', wake);
    globalThis.document?.removeEventListener?.('visibilitychange', wake);
  };

  async function open() {
    if (closed) return;
    if (!token) {
      let fresh;
      try {
        fresh = await getToken();
      } catch (e) {
        if (closed) return;
        status('error', { reason: `getToken failed: ${e}` });
        retry();
        return;
      }
      // close() may have come while getToken was running.
      if (closed) return;
      if (!fresh) {
        stop({ reason: 'getToken answered no token' });
        return;
      }
      token = fresh;
    }
    const query = new URLSearchParams({ token });
    const since = Object.entries(positions)
      .map(([channel, seq]) => `${channel}@${seq}`)
      .join(',');
    if (since) {
      query.set('since', since);
      if (epoch) query.set('epoch', epoch);
    }
    status('connecting', { attempt });
    const socket = new Socket(`${target}?${query}`);
    ws = socket;
    let connected = false;
    socket.onmessage = (message) => {
      if (closed || ws !== socket) return;
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      switch (frame.type) {
        case 'connected': {
          const p = frame.payload || {};
          connected = true;
          refused = 0;
          epoch = p.epoch ?? epoch;
          for (const [channel, seq] of Object.entries(p.positions || {})) {
            // A fresh channel starts at the server's latest; a resumed one
            // keeps its own position (the replay brings it up to date).
            if (!(channel in positions)) positions[channel] = seq;
          }
          clearTimeout(stableTimer);
          stableTimer = setTimeout(proven, stableMs);
          scheduleRefresh(p.expires_at);
          status('live', { epoch });
          return;
        }
        case 'resync.required': {
          const p = frame.payload || {};
          if (p.epoch) epoch = p.epoch;
          // What follows continues from `oldest`.
          if (p.channel) positions[p.channel] = Math.max(0, (p.oldest ?? 1) - 1);
          onResync(p);
          return;
        }
        case 'auth.refreshed':
          scheduleRefresh(frame.payload?.expires_at);
          return;
        case 'ping':
          return;
        case 'error':
          status('error', { reason: frame.payload?.message });
          return;
        default: {
          const { channel, seq } = frame;
          if (typeof channel !== 'string' || typeof seq !== 'number') return;
          if (channel in positions && seq <= positions[channel]) return; // a duplicate
          positions[channel] = seq;
          proven();
          onEvent(frame);
        }
      }
    };
    socket.onclose = (event) => {
      if (ws === socket) ws = null;
      clearTimeout(refreshTimer);
      clearTimeout(stableTimer);
      if (closed) return;
      const advice = CLOSE_ADVICE[event.code] ?? 'stop';
      if (advice === 'new_token') {
        // Never retried with the same token; fresh ones refused again and
        // again will not start working by themselves.
        token = null;
        if (!connected) refused += 1;
        if (refused >= MAX_REFUSED_TOKENS) {
          stop({
            code: event.code,
            reason: `${refused} fresh tokens in a row were refused (${event.reason}): ` +
              'getToken gives tokens this server does not accept',
          });
          return;
        }
        status('unauthorized', { code: event.code, reason: event.reason });
        retry();
      } else if (advice === 'fix_frame') {
        stop({
          code: event.code,
          reason: `the server refused a frame as too large (a client bug): ${event.reason}`,
        });
      } else if (advice === 'reconnect') {
        status('disconnected', { code: event.code, reason: event.reason });
        retry();
      } else {
        stop({ code: event.code, reason: event.reason });
      }
    };
  }

  watch();
  open();
  return {
    close() {
      if (closed) return;
      closed = true;
      clearTimeout(retryTimer);
      clearTimeout(refreshTimer);
      clearTimeout(stableTimer);
      unwatch();
      if (ws) ws.close(1000, 'client closed');
      ws = null;
      status('closed');
    },
    positions: () => ({ ...positions }),
    epoch: () => epoch,
  };
}
