// Types of hrrt.js (hand-written; they mirror hrrt-protocol's frames).

/** One event as a connection receives it. */
export interface HrrtEvent<P = unknown> {
  type: string;
  /** `org:<id>` or `user:<id>`. */
  channel: string;
  /** 1, 2, 3… per channel, within an epoch. */
  seq: number;
  payload: P;
  /** RFC 3339, UTC. */
  timestamp: string;
}

/** `resync.required`: refetch `channel`'s state; what follows continues from `oldest`. */
export interface Resync {
  channel: string;
  requested: number;
  oldest: number;
  reason: 'history_trimmed' | 'epoch_changed' | 'position_ahead';
  /** The new epoch, for `epoch_changed`. */
  epoch?: string;
}

export type Status =
  | { state: 'connecting'; attempt: number }
  | { state: 'live'; epoch: string | null }
  | { state: 'reconnecting'; inMs: number; attempt: number }
  | { state: 'disconnected'; code: number; reason: string }
  | { state: 'unauthorized'; code: 1008; reason: string }
  | { state: 'error'; reason?: string }
  | { state: 'stopped'; code?: number; reason: string }
  | { state: 'closed' };

export interface Options {
  /** The WebSocket endpoint (`wss://rt.example.com/ws`), or the server's base (`https://rt.example.com`; `/ws` is added). */
  url: string;
  /** A fresh token, asked at the start, after a 1008 close, and before expiry. Answer nothing to stop. */
  getToken: () => string | null | undefined | Promise<string | null | undefined>;
  onEvent?: (event: HrrtEvent) => void;
  onResync?: (resync: Resync) => void;
  onStatus?: (status: Status) => void;
  /** A WebSocket implementation (default: the browser's). */
  WebSocket?: typeof WebSocket;
  /** Reconnect backoff: `minBackoffMs` (250) doubling to `maxBackoffMs` (30 000), jittered. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** The backoff starts again once a connection stayed up this long (30 000 ms) or an event arrived. */
  stableMs?: number;
}

export interface Connection {
  close(): void;
  /** Each channel's last seq. */
  positions(): Record<string, number>;
  epoch(): string | null;
}

export function connect(options: Options): Connection;

/** The WebSocket endpoint of `url`: as given when it ends in `/ws`, else with `/ws` added. */
export function endpoint(url: string): string;

/** What the client does at each close code (codes not listed: stop); hrrt-protocol's `CloseCode::advice`. */
export const CLOSE_ADVICE: Readonly<Record<number, 'reconnect' | 'new_token' | 'fix_frame'>>;
