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
  /** The server: `https://hrrt.example.com` (ws/wss is derived). */
  url: string;
  /** A fresh token, asked at the start, after a 1008 close, and before expiry. Answer nothing to stop. */
  getToken: () => string | null | undefined | Promise<string | null | undefined>;
  onEvent?: (event: HrrtEvent) => void;
  onResync?: (resync: Resync) => void;
  onStatus?: (status: Status) => void;
  /** A WebSocket implementation (default: the browser's). */
  WebSocket?: typeof WebSocket;
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

export interface Connection {
  close(): void;
  /** Each channel's last seq. */
  positions(): Record<string, number>;
  epoch(): string | null;
}

export function connect(options: Options): Connection;
