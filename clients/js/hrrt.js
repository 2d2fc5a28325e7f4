// hrrt browser client: one ES module, no dependencies.
//
//   import { connect } from './hrrt.js';
//   const live = connect({
//     url: 'https://hrrt.example.com',
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
// codes' advice: 1001/1011/1013 (and a dropped link) reconnect with
// jittered exponential backoff, 1008 asks `getToken` again (and stops when
// it answers nothing), 1009 stops and reports a bug.

const RECONNECT = new Set([1001, 1006, 1011, 1012, 1013]);

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
  } = options;
  if (typeof getToken !== 'function') throw new TypeError('connect: getToken must be a function');
  const base = String(url).replace(/^http/, 'ws').replace(/\/+$/, '');
  const positions = {};
  let epoch = null;
  let token = null;
  let ws = null;
  let closed = false;
  let attempt = 0;
  let retryTimer = null;
  let refreshTimer = null;

  const status = (state, extra = {}) => {
    try {
      onStatus({ state, ...extra });
    } catch (e) {
      console.error('hrrt onStatus threw', e);
    }
  };

  const scheduleRefresh = (expiresAt) => {
    clearTimeout(refreshTimer);
    const left = Date.parse(expiresAt) - Date.now();
    if (!(left > 0)) return;
    // Refresh with a margin: 30 s, or half of what is left for short tokens.
    const at = Math.max(0, left - Math.min(30000, left / 2));
    refreshTimer = setTimeout(async () => {
      try {
        const fresh = await getToken();
        if (fresh && ws && ws.readyState === 1) {
          token = fresh;
          ws.send(JSON.stringify({ type: 'auth.refresh', token: fresh }));
        }
      } catch (e) {
        status('error', { reason: `getToken failed: ${e}` });
      }
    }, at);
  };

  const retry = () => {
    if (closed) return;
    const ceiling = Math.min(maxBackoffMs, minBackoffMs * 2 ** attempt);
    const wait = ceiling / 2 + Math.random() * (ceiling / 2);
    attempt += 1;
    status('reconnecting', { inMs: Math.round(wait), attempt });
    retryTimer = setTimeout(open, wait);
  };

  async function open() {
    if (closed) return;
    if (!token) {
      try {
        token = await getToken();
      } catch (e) {
        status('error', { reason: `getToken failed: ${e}` });
        retry();
        return;
      }
      if (!token) {
        status('stopped', { reason: 'getToken answered no token' });
        closed = true;
        return;
      }
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
    const socket = new Socket(`${base}/ws?${query}`);
    ws = socket;
    socket.onmessage = (message) => {
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      switch (frame.type) {
        case 'connected': {
          const p = frame.payload || {};
          epoch = p.epoch ?? epoch;
          for (const [channel, seq] of Object.entries(p.positions || {})) {
            // A fresh channel starts at the server's latest; a resumed one
            // keeps its own position (the replay brings it up to date).
            if (!(channel in positions)) positions[channel] = seq;
          }
          attempt = 0;
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
          onEvent(frame);
        }
      }
    };
    socket.onclose = (event) => {
      if (ws === socket) ws = null;
      clearTimeout(refreshTimer);
      if (closed) return;
      if (event.code === 1008) {
        // Never retried with the same token.
        token = null;
        status('unauthorized', { code: event.code, reason: event.reason });
        retry();
      } else if (event.code === 1009) {
        closed = true;
        status('stopped', {
          code: event.code,
          reason: `the server refused a frame as too large (a client bug): ${event.reason}`,
        });
      } else if (RECONNECT.has(event.code) || event.code < 4000) {
        status('disconnected', { code: event.code, reason: event.reason });
        retry();
      } else {
        closed = true;
        status('stopped', { code: event.code, reason: event.reason });
      }
    };
  }

  open();
  return {
    close() {
      closed = true;
      clearTimeout(retryTimer);
      clearTimeout(refreshTimer);
      if (ws) ws.close(1000, 'client closed');
      status('closed');
    },
    positions: () => ({ ...positions }),
    epoch: () => epoch,
  };
}
