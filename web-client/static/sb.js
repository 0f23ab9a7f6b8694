// Switchboard client core: tokens (sessionStorage only, never in a URL),
// REST calls, and the WebSocket connection with auth, request/reply,
// heartbeat and reconnect (protocol/README.md, "Reconnecting").

export class ApiError extends Error {
  constructor(status, code, message) { super(message || code); this.status = status; this.code = code; }
}

/**
 * The client frames the pages send (protocol/README.md, "Client frames"),
 * without `req` (Conn.request adds it). Optional fields left undefined are
 * not sent: JSON.stringify drops them. tests/fixtures.test.mjs holds each
 * one against protocol/fixtures/client/.
 */
export const frames = {
  auth: (token) => ({ type: 'auth', token }),
  ping: () => ({ type: 'ping' }),
  /** An outbox item (chat.js): body and attachment only when it has them. */
  send: (it) => {
    const f = { type: 'send', conv: it.conv, client_msg_id: it.client_msg_id, kind: it.kind };
    if (it.body) f.body = it.body;
    if (it.attachment) f.attachment = it.attachment;
    return f;
  },
  syncAfter: (conv, after, limit) => ({ type: 'sync', conv, after, limit }),
  syncBefore: (conv, before, limit) => ({ type: 'sync', conv, before, limit }),
  read: (conv, seq) => ({ type: 'read', conv, seq }),
  typing: (conv) => ({ type: 'typing', conv }),
  consult: ({ team, topic, text } = {}) => ({ type: 'consult', team, topic, text }),
  presence: (status) => ({ type: 'presence', status }),
  accept: (conv) => ({ type: 'accept', conv }),
  /** To `agent` when one is chosen, else to `team`; a blank note is not sent. */
  transfer: (conv, { agent, team, note }) => ({
    type: 'transfer', conv, ...(agent ? { to_agent: agent } : { to_team: team }), note: note || undefined,
  }),
  close: (conv) => ({ type: 'close', conv }),
  rate: (conv, score, comment) => ({ type: 'rate', conv, score, comment: comment || undefined }),
  watch: (teams) => ({ type: 'watch', teams }),
  assign: (conv, agent) => ({ type: 'assign', conv, agent }),
};

/** The statuses an agent can declare with `presence`, in the console's order. */
export const PRESENCE = ['online', 'busy', 'away', 'offline'];

/** Tokens of one page, kept in this tab's sessionStorage under `key`. */
export class Session {
  constructor(key) {
    this.key = key;
    try { this.data = JSON.parse(sessionStorage.getItem(key)) || null; } catch { this.data = null; }
    this.refreshing = null;
  }
  get token() { return this.data?.access_token; }
  get user() { return this.data?.user; }
  set(pair) {
    this.data = {
      access_token: pair.access_token, refresh_token: pair.refresh_token, user: pair.user,
      expires_at: Date.now() + pair.expires_in * 1000,
    };
    this.save();
  }
  save() { try { sessionStorage.setItem(this.key, JSON.stringify(this.data)); } catch { /* private mode */ } }
  clear() { this.data = null; try { sessionStorage.removeItem(this.key); } catch { /* ignore */ } }
  /** A usable access token, refreshed when it expires within a minute. */
  async fresh() {
    if (this.data && this.data.expires_at - Date.now() < 60000) await this.refresh();
    return this.token;
  }
  /** One refresh at a time: refresh tokens rotate and must never be used twice. */
  refresh() {
    if (!this.refreshing) {
      const rt = this.data?.refresh_token;
      this.refreshing = (async () => {
        if (!rt) throw new ApiError(401, 'unauthorized', 'no session');
        const r = await fetch('/api/v1/auth/refresh', {
          method: 'POST', headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ refresh_token: rt }),
        });
        if (r.status === 401) { this.clear(); throw new ApiError(401, 'unauthorized', 'session expired'); }
        if (!r.ok) throw new ApiError(r.status, 'unavailable', 'refresh failed');
        this.set(await r.json());
      })().finally(() => { this.refreshing = null; });
    }
    return this.refreshing;
  }
}

/** A REST call. `body` is JSON, or FormData sent as it is. */
export async function api(session, method, path, body) {
  for (let attempt = 0; ; attempt++) {
    const headers = {};
    const token = session && await session.fresh();
    if (token) headers.authorization = `Bearer ${token}`;
    let payload = body;
    if (body !== undefined && !(body instanceof FormData)) {
      headers['content-type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    const r = await fetch(`/api/v1${path}`, { method, headers, body: payload });
    if (r.status === 401 && session?.data && attempt === 0) {
      await session.refresh();
      continue;
    }
    if (r.status === 204) return null;
    const data = await r.json().catch(() => null);
    if (!r.ok) throw new ApiError(r.status, data?.code || 'internal', data?.message || r.statusText);
    return data;
  }
}

/** Fetches an upload (it needs the Authorization header) as an object URL. */
const blobs = new Map();
export function uploadURL(session, id) {
  if (!blobs.has(id)) {
    blobs.set(id, (async () => {
      const r = await fetch(`/api/v1/uploads/${encodeURIComponent(id)}`, {
        headers: { authorization: `Bearer ${await session.fresh()}` },
      });
      if (!r.ok) { blobs.delete(id); throw new ApiError(r.status, 'not_found', 'upload'); }
      return URL.createObjectURL(await r.blob());
    })());
  }
  return blobs.get(id);
}

/**
 * The WebSocket connection. Handlers: onAuth(okReply) after every successful
 * auth (sync and resend there), onEvent(frame) for server events,
 * onStatus('connecting'|'online'|'offline'|'expired').
 */
export class Conn {
  constructor(session, handlers) {
    this.session = session;
    this.h = handlers;
    this.ws = null;
    this.authed = false;
    this.req = 0;
    this.pending = new Map();
    this.attempt = 0;
    this.timer = null;
    this.stopped = true;
    this.gen = 0;
    addEventListener('online', () => { if (!this.ws && !this.stopped) this.connectNow(); });
  }
  get online() { return this.authed; }
  start() { this.stopped = false; this.connectNow(); }
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
  }
  connectNow() { clearTimeout(this.timer); this.timer = null; this.open(); }

  async open() {
    if (this.ws || this.stopped) return;
    const gen = ++this.gen;
    this.h.onStatus?.('connecting');
    let token;
    try { token = await this.session.fresh(); } catch (e) {
      if (e.status === 401) { this.stopped = true; this.h.onStatus?.('expired'); return; }
      return this.retry();
    }
    if (gen !== this.gen || this.stopped) return;
    const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
    this.ws = ws;
    this.lastRx = this.lastTx = Date.now();
    ws.onopen = () => {
      const req = ++this.req;
      this.pending.set(req, {
        resolve: (ok) => this.authOk(ok, ws),
        reject: () => { /* 4003 follows; handled in onclose */ },
      });
      this.raw({ ...frames.auth(token), req });
    };
    ws.onmessage = (e) => {
      this.lastRx = Date.now();
      let f;
      try { f = JSON.parse(e.data); } catch { return; }
      if (f.req != null && this.pending.has(f.req)) {
        const p = this.pending.get(f.req);
        this.pending.delete(f.req);
        clearTimeout(p.timeout);
        if (f.type === 'error') p.reject(Object.assign(new Error(f.message), { code: f.code }));
        else p.resolve(f);
        return;
      }
      if (f.type === 'ok' || f.type === 'pong' || f.type === 'error') return;
      this.h.onEvent?.(f);
    };
    ws.onclose = (e) => this.closed(ws, e.code);
  }

  async authOk(ok, ws) {
    if (ws !== this.ws) return;
    this.authed = true;
    this.attempt = 0;
    this.heartbeat = (ok.heartbeat_s || 25) * 1000;
    clearInterval(this.beat);
    this.beat = setInterval(() => this.tick(), 2000);
    this.h.onStatus?.('online');
    try { await this.h.onAuth?.(ok); } catch (e) { console.warn('resume failed', e); }
  }

  tick() {
    if (!this.ws || !this.authed) return;
    const now = Date.now();
    if (now - this.lastRx > 2 * this.heartbeat) { this.ws.close(4000); return; }
    if (now - this.lastTx > this.heartbeat) this.raw(frames.ping());
  }

  closed(ws, code) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.authed = false;
    clearInterval(this.beat);
    for (const p of this.pending.values()) {
      clearTimeout(p.timeout);
      p.reject(Object.assign(new Error('disconnected'), { code: 'disconnected' }));
    }
    this.pending.clear();
    if (this.stopped) return;
    this.h.onStatus?.('offline');
    if (code === 4003) {
      // The token was refused: refresh it, never retry with the same one.
      this.session.refresh().then(() => this.retry(), (e) => {
        if (e.status === 401) { this.stopped = true; this.h.onStatus?.('expired'); } else this.retry();
      });
      return;
    }
    this.retry();
  }

  /** Jittered exponential backoff: 0.5 s doubling to 30 s, each wait ±50 %. */
  retry() {
    if (this.stopped || this.timer) return;
    const base = Math.min(30000, 500 * 2 ** this.attempt++);
    this.timer = setTimeout(() => { this.timer = null; this.open(); }, base * (0.5 + Math.random()));
  }

  raw(frame) {
    this.lastTx = Date.now();
    this.ws.send(JSON.stringify(frame));
  }

  /** Sends a frame without waiting (dropped when offline). */
  send(frame) { if (this.authed) this.raw(frame); }

  /** Sends a frame with a `req`; resolves with the `ok`, rejects with the `error` (err.code). */
  request(frame, timeoutMs = 15000) {
    if (!this.authed) return Promise.reject(Object.assign(new Error('offline'), { code: 'disconnected' }));
    const req = ++this.req;
    return new Promise((resolve, reject) => {
      const timeout = setTimeout(() => {
        this.pending.delete(req);
        reject(Object.assign(new Error('timeout'), { code: 'disconnected' }));
      }, timeoutMs);
      this.pending.set(req, { resolve, reject, timeout });
      this.raw({ ...frame, req });
    });
  }
}
