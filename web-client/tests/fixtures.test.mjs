// The pages' own protocol code against protocol/fixtures/ (the same files
// protocol/tests/fixtures.rs round-trips through the Rust types): every
// server fixture goes through the code that consumes it (sb.js Conn's reply
// matcher, chat.js's message store and outbox, the widget's event updates in
// widgetstate.js, the console's and dashboard's in staff.js), every client
// fixture is compared with the frame the pages build for it (sb.js frames),
// and the invalid fixtures' defects are checked never to come out of the
// pages. No server, no browser: plain Node, well under a second. A fixture
// without a case here fails the coverage tests.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { register } from 'node:module';

const STATIC = new URL('../static/', import.meta.url);
const FIXTURES = new URL('../../protocol/fixtures/', import.meta.url);

// The pages import each other as '/static/x.js', their URL on the server; in
// Node that would name the file system's root, so map it to web-client/static/.
register(`data:text/javascript,${encodeURIComponent(`
export async function resolve(specifier, context, next) {
  if (specifier.startsWith('/static/')) return next(new URL(specifier.slice(8), ${JSON.stringify(STATIC.href)}).href, context);
  return next(specifier, context);
}`)}`);
const { Conn, frames, PRESENCE } = await import('../static/sb.js');
const { ConvMessages, Outbox, loadLatest, catchUp, loadOlder, textKind, fileKind } = await import('../static/chat.js');
const { widgetState, widgetEvent, setWidgetConv, openServiceConv, consulted, inLiveQueue, queueText } = await import('../static/widgetstate.js');
const { consoleAuth, consoleEvent, unread, applyWatch, boardEvent, loadText } = await import('../static/staff.js');

const load = (dir) => Object.fromEntries(readdirSync(new URL(`${dir}/`, FIXTURES)).filter((n) => n.endsWith('.json'))
  .map((n) => [n.slice(0, -5), JSON.parse(readFileSync(new URL(`${dir}/${n}`, FIXTURES), 'utf8'))]));
const S = load('server'), C = load('client'), I = load('invalid');

const CUSTOMER = S.ok_auth.user.id; // the customer the widget is signed in as
const AGENT = S.conversation.conv.agent; // the agent serving the fixtures' conversation
const CONV = S.conversation.conv.id;
const NOW = 1763880100000;
/** The protocol's send kinds a client may use (protocol/README.md, `send`; `system` is the server's). */
const SEND_KINDS = ['text', 'emoji', 'image', 'file'];
/** The statuses of `presence` (protocol/README.md, `presence`). */
const STATUSES = ['online', 'busy', 'away', 'offline'];

// ------------------------------------------------------------------ shapes

/** A value's JSON type as the protocol names it; arrays with their items' types. */
function jsonType(v) {
  if (Array.isArray(v)) return `array<${[...new Set(v.map(jsonType))].join('|')}>`;
  if (v === null) return 'null';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}
/** Field → JSON type of a frame as it goes on the wire (fields left undefined are not sent). */
const shape = (frame) => Object.fromEntries(Object.entries(JSON.parse(JSON.stringify(frame))).map(([k, v]) => [k, jsonType(v)]));

/**
 * The page's frame has exactly the fixture's fields, with the same JSON
 * types. `via` is how the page sends it: 'request' (Conn.request adds
 * `req`) or 'send' (no `req`, no reply: the fixture's `req` is optional).
 */
function assertFrame(wire, fixture, via) {
  const want = shape(fixture);
  if (via === 'send') {
    delete want.req;
    assert.equal('req' in wire, false, `${wire.type} is sent without req`);
  }
  assert.deepEqual(shape(wire), want);
}

// ------------------------------------------------------------------ a connection without a server

/** Stands in for the browser's WebSocket: records what the page sends, delivers what the test pushes. */
class FakeSocket {
  constructor(url) { this.url = url; this.sent = []; this.answer = null; }
  send(text) {
    const f = JSON.parse(text);
    this.sent.push(f);
    const reply = f.req != null && this.answer?.(f);
    if (reply) queueMicrotask(() => this.push({ ...reply, req: f.req }));
  }
  close(code = 1000) { this.onclose?.({ code }); }
  /** A frame from the server. */
  push(frame) { this.onmessage({ data: JSON.stringify(frame) }); }
}

const until = async (cond) => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise(setImmediate);
  assert.ok(cond(), 'timed out');
};

/**
 * A real Conn (sb.js), authenticated with the ok_auth fixture over a
 * FakeSocket. Frames with `req` are answered with ok_empty unless the test
 * sets ws.answer. Stopped when the test ends.
 */
async function connected(t) {
  // The smallest globals Conn needs outside a page: the socket, the page's address, window events.
  globalThis.WebSocket = FakeSocket;
  globalThis.location ??= { protocol: 'http:', host: 'switchboard.test' };
  globalThis.addEventListener ??= () => {};
  const events = [], auths = [];
  const session = { fresh: async () => C.auth.token, refresh: async () => {} };
  const conn = new Conn(session, { onEvent: (f) => events.push(f), onAuth: (ok) => { auths.push(ok); } });
  conn.start();
  await until(() => conn.ws);
  const ws = conn.ws;
  t.after(() => conn.stop());
  ws.onopen();
  const auth = ws.sent[0];
  ws.push({ ...S.ok_auth, req: auth.req });
  await until(() => auths.length === 1);
  ws.answer = () => S.ok_empty;
  return { conn, ws, events, auths, auth };
}

/** Sends `frame` with the page's Conn.request; the frame as it went on the wire, and the reply. */
function request(c, frame) {
  const reply = c.conn.request(frame);
  return { wire: c.ws.sent.at(-1), reply };
}
/** Sends `frame` with Conn.send (no reply expected); the frame as it went on the wire. */
function sendOnly(c, frame) {
  c.conn.send(frame);
  return c.ws.sent.at(-1);
}

// ------------------------------------------------------------------ page state as the pages set it up

/** The widget after the ok_auth fixture: its open service conversation. */
function widgetAfterAuth() {
  const st = widgetState();
  setWidgetConv(st, openServiceConv(S.ok_auth));
  return st;
}
/** The console's maps (console.js) after the ok_auth fixture, signed in as `me`. */
function consoleAfterAuth(me = AGENT) {
  const cs = { convs: new Map(), msgs: new Map(), readBy: new Map(), typingUntil: new Map() };
  consoleAuth(cs.convs, S.ok_auth, me);
  return cs;
}
/** The dashboard's board (dashboard.js) after the ok_watch snapshot. */
function boardAfterWatch() {
  const board = { queues: new Map(), agents: new Map(), active: new Map() };
  applyWatch(board, S.ok_watch);
  return board;
}
/** Loads the ok_sync page (seq 41, and 42 recalled) into `cm` as a page opening the conversation does. */
async function loadSynced(cm) {
  const replies = [S.ok_sync, { ...S.ok_sync, messages: [], has_more: false }];
  await loadLatest({ request: async () => replies.shift() }, cm, 42);
  return cm;
}
const storeAfterSync = () => loadSynced(new ConvMessages(S.ok_sync.conv));
/** The ok_sync fixture's recalled message as it was before the recall. */
function beforeRecall() {
  const { recalled, ...m } = S.ok_sync.messages.find((x) => x.id === S.recalled.msg_id);
  assert.equal(recalled, true);
  return { ...m, body: '订单号 12345 的退款' };
}
const seqs = (cm) => cm.list().map((m) => m.seq);
const snapshot = (v) => structuredClone(v);

// ------------------------------------------------------------------ server frames → the pages

const SERVER = {
  ok_auth: async (t) => {
    const c = await connected(t);
    assert.deepEqual(c.auths, [S.ok_auth]);
    assert.equal(c.conn.online, true);
    assert.equal(c.conn.heartbeat, S.ok_auth.heartbeat_s * 1000);
    assert.deepEqual(c.events, [], 'a reply is not an event');
    // The widget resumes its open service conversation, not the group.
    const st = widgetAfterAuth();
    assert.equal(st.conv.id, 'cv_9d4e1b7a');
    assert.equal(st.cm.conv, 'cv_9d4e1b7a');
    assert.equal(st.myRead, 41);
    // The console lists the service conversations; unread = last_seq − last_read_seq.
    const cs = consoleAfterAuth();
    const ids = consoleAuth(new Map(), S.ok_auth, AGENT);
    assert.deepEqual([...ids], S.ok_auth.conversations.map((x) => x.id));
    assert.deepEqual([...cs.convs.keys()], ['cv_9d4e1b7a']);
    assert.equal(unread(cs.convs.get('cv_9d4e1b7a')), 43 - 41);
  },

  ok_consult: async (t) => {
    const c = await connected(t);
    c.ws.answer = () => S.ok_consult;
    const r = await request(c, frames.consult({ team: C.consult.team, topic: C.consult.topic, text: C.consult.text })).reply;
    assert.equal(r.conv, 'cv_7h3j5k9m');
    // The widget waits in that conversation until its `conversation` event tells more.
    const st = widgetState();
    setWidgetConv(st, consulted(r.conv));
    assert.equal(st.conv.id, 'cv_7h3j5k9m');
    assert.equal(st.cm.conv, 'cv_7h3j5k9m');
    assert.equal(inLiveQueue(st.conv), true);
    assert.equal(queueText(st.queue), '正在为您接通客服…');
  },

  ok_empty: async (t) => {
    const c = await connected(t);
    c.ws.answer = null;
    const accept = request(c, frames.accept(CONV));
    const close = request(c, frames.close(CONV));
    let accepted = false;
    accept.reply.then(() => { accepted = true; });
    // Replies come in any order: the one for `close` settles `close` only.
    c.ws.push({ ...S.ok_empty, req: close.wire.req });
    assert.deepEqual(await close.reply, { ...S.ok_empty, req: close.wire.req });
    await new Promise(setImmediate);
    assert.equal(accepted, false);
    c.ws.push({ ...S.ok_empty, req: accept.wire.req });
    assert.deepEqual(await accept.reply, { ...S.ok_empty, req: accept.wire.req });
    assert.deepEqual(c.events, []);
  },

  ok_send: async (t) => {
    const c = await connected(t);
    c.ws.answer = (f) => (f.type === 'send' ? S.ok_send : null);
    const outbox = new Outbox('test.outbox');
    // The fixture pair: send_text is the frame ok_send answers.
    const it = outbox.add(C.send_text.conv, textKind(C.send_text.body), C.send_text.body);
    it.client_msg_id = C.send_text.client_msg_id;
    const cm = await storeAfterSync();
    const sent = [];
    await outbox.flush(c.conn, (msg) => { sent.push(msg); cm.add(msg); }, () => assert.fail('not failed'));
    assert.deepEqual(sent, [S.ok_send.msg]);
    assert.deepEqual(outbox.items, [], 'acked: out of the outbox');
    // The stored message replaces the "sending" bubble (matched by client_msg_id).
    assert.equal(cm.hasClientId(it.client_msg_id), true);
    assert.deepEqual(seqs(cm), [41, 42, 44]);
  },

  ok_sync: async (t) => {
    const c = await connected(t);
    // The newest page, then the catch-up after it finds nothing more.
    c.ws.answer = (f) => (f.before != null ? S.ok_sync : { ...S.ok_sync, messages: [], has_more: false });
    const cm = new ConvMessages(S.ok_sync.conv);
    await loadLatest(c.conn, cm, 42);
    assert.deepEqual(seqs(cm), [41, 42]);
    const recalled = cm.list()[1];
    assert.equal(recalled.recalled, true);
    assert.equal(recalled.body, '');
    assert.equal(cm.hasOlder, S.ok_sync.has_more, 'has_more of a `before` page: older messages exist');
    assert.equal(cm.contig, 42);
    assert.equal(cm.loaded, true);
    assert.deepEqual(c.ws.sent.slice(-2).map((f) => [f.before, f.after]), [[43, undefined], [undefined, 42]]);
  },

  ok_watch: async (t) => {
    const c = await connected(t);
    c.ws.answer = () => S.ok_watch;
    const board = { queues: new Map(), agents: new Map(), active: new Map() };
    applyWatch(board, await request(c, frames.watch('all')).reply);
    // One queue card per team, in the snapshot's order, rows in queue order.
    assert.deepEqual([...board.queues.keys()], ['t_4k8m2n6p', 't_6q1w3e5r']);
    assert.deepEqual(board.queues.get('t_4k8m2n6p').map((w) => [w.conv, w.position]), [['cv_7h3j5k9m', 1], ['cv_1n3p5r7t', 2]]);
    assert.deepEqual(board.queues.get('t_6q1w3e5r'), []);
    // The agent board: status and load/capacity.
    assert.deepEqual([...board.agents.values()].map((a) => [a.user, a.status, loadText(a)]),
      [['u_a3m9q7td', 'online', '3/5'], ['u_a7r2v5ke', 'away', '0/4']]);
  },

  error: async (t) => {
    const c = await connected(t);
    c.ws.answer = () => S.error;
    await assert.rejects(request(c, frames.close(CONV)).reply, { code: 'not_found', message: 'conversation not found' });
    // The outbox drops a message the server refused for good, and says so.
    const outbox = new Outbox('test.outbox');
    outbox.add(CONV, 'text', '你好');
    const failed = [];
    await outbox.flush(c.conn, () => assert.fail('not sent'), (it, e) => failed.push([it.body, e.code]));
    assert.deepEqual(failed, [['你好', S.error.code]]);
    assert.deepEqual(outbox.items, []);
    assert.deepEqual(c.events, []);
  },

  pong: async (t) => {
    const c = await connected(t);
    c.conn.lastRx = 0;
    c.ws.push(S.pong);
    assert.deepEqual(c.events, [], 'a reply is not an event');
    // Heard from the server: the heartbeat keeps the connection (silent for 2 × heartbeat_s it would close it).
    assert.ok(c.conn.lastRx > 0);
    c.conn.tick();
    assert.equal(c.conn.ws, c.ws);
    assert.equal(c.conn.online, true);
  },

  message: async () => {
    // Widget: into the store by seq, whatever the arrival order; 43 is missing, so a gap.
    const st = widgetAfterAuth();
    await loadSynced(st.cm);
    assert.equal(widgetEvent(st, S.message, CUSTOMER, NOW), 'message');
    st.cm.add(S.ok_send.msg);
    assert.deepEqual(seqs(st.cm), [41, 42, 44, 45]);
    assert.deepEqual(st.cm.list().at(-1), S.message.msg);
    assert.equal(st.cm.contig, 42);
    assert.equal(st.cm.gap, true, 'the widget syncs after 42');
    assert.equal(st.cm.add(S.message.msg), false, 'the same message twice changes nothing');
    // Console: the conversation's last seq and unread count, the customer's name from the sender.
    const cs = consoleAfterAuth();
    const cm = await storeAfterSync();
    cs.msgs.set(CONV, cm);
    cs.typingUntil.set(CONV, NOW + 5000);
    assert.deepEqual(consoleEvent(cs, S.message, AGENT, NOW), { changed: CONV, gap: cm });
    const c = cs.convs.get(CONV);
    assert.equal(c.last_seq, 45);
    assert.equal(c.name, '王小明');
    assert.equal(unread(c), 45 - 41);
    assert.deepEqual(seqs(cm), [41, 42, 45]);
    assert.equal(cs.typingUntil.has(CONV), false, 'a message ends the typing indicator');
  },

  conversation: () => {
    // Widget: the queued conversation became active; the queue line goes.
    const st = widgetState();
    setWidgetConv(st, consulted(CONV));
    st.queue = { position: 1, eta_s: 30 };
    assert.equal(widgetEvent(st, S.conversation, CUSTOMER, NOW), 'conversation');
    assert.equal(st.conv.state, 'active');
    assert.equal(st.conv.agent, AGENT);
    assert.equal(st.queue, null);
    // ... another conversation does not replace an open one, and replaces a closed one.
    const other = widgetState();
    setWidgetConv(other, consulted('cv_7h3j5k9m'));
    const before = snapshot(other);
    assert.equal(widgetEvent(other, S.conversation, CUSTOMER, NOW), null);
    assert.deepEqual(snapshot(other), before);
    other.conv.state = 'closed';
    assert.equal(widgetEvent(other, S.conversation, CUSTOMER, NOW), 'new-conversation');
    assert.equal(other.cm.conv, CONV);
    // Console: new to it and mine, so news; a known one keeps its own read mark (events carry 0).
    const fresh = { convs: new Map(), msgs: new Map(), readBy: new Map(), typingUntil: new Map() };
    const fx = consoleEvent(fresh, S.conversation, AGENT, NOW);
    assert.equal(fx.all, true);
    assert.equal(fx.news.id, CONV);
    const cs = consoleAfterAuth();
    consoleEvent(cs, { type: 'receipt', conv: CONV, user: AGENT, seq: 43 }, AGENT, NOW);
    assert.equal(consoleEvent(cs, S.conversation, AGENT, NOW).news, null, 'already mine: no news');
    assert.equal(cs.convs.get(CONV).last_read_seq, 43);
    // Dashboard: an active row with team and agent; closed, it goes.
    const board = boardAfterWatch();
    assert.equal(boardEvent(board, S.conversation, NOW), true);
    assert.deepEqual(board.active.get(CONV), { conv: CONV, team: 't_4k8m2n6p', agent: AGENT, since: NOW });
    boardEvent(board, S.conversation, NOW + 1000);
    assert.equal(board.active.get(CONV).since, NOW, 'same agent: its time keeps running');
    boardEvent(board, { ...S.conversation, conv: { ...S.conversation.conv, state: 'closed' } }, NOW);
    assert.equal(board.active.has(CONV), false);
  },

  queue: () => {
    const st = widgetState();
    setWidgetConv(st, consulted(S.ok_consult.conv));
    assert.equal(widgetEvent(st, S.queue, CUSTOMER, NOW), 'render');
    assert.deepEqual(st.queue, { position: 3, eta_s: 180 });
    assert.equal(queueText(st.queue), '正在为您排队：前面还有 2 位，预计等待 3 分钟');
    assert.equal(queueText({ position: 1, eta_s: 45 }), '马上轮到您了，预计等待 不到 1 分钟');
    // A late `queue` for a conversation already offered is ignored.
    const offered = widgetState();
    setWidgetConv(offered, { ...consulted(S.queue.conv), offered_to: AGENT, offer_expires_at: NOW + 30000 });
    assert.equal(widgetEvent(offered, S.queue, CUSTOMER, NOW), null);
    assert.equal(offered.queue, null);
    // Staff pages take their queues from queue_update.
    assert.equal(consoleEvent(consoleAfterAuth(), S.queue, AGENT, NOW), null);
    assert.equal(boardEvent(boardAfterWatch(), S.queue, NOW), false);
  },

  queue_update: () => {
    const board = boardAfterWatch();
    assert.equal(boardEvent(board, S.queue_update, NOW), true);
    assert.deepEqual([...board.queues.keys()], ['t_4k8m2n6p', 't_6q1w3e5r'], 'cards stay in place');
    assert.deepEqual(board.queues.get('t_4k8m2n6p').map((w) => [w.conv, w.customer, w.position]), [['cv_1n3p5r7t', 'u_c9b7z5x3', 1]]);
    assert.deepEqual(board.queues.get('t_6q1w3e5r'), []);
  },

  presence: () => {
    // Dashboard: same status, so the "in status" time keeps running; load from the event.
    const board = boardAfterWatch();
    assert.equal(boardEvent(board, { ...S.presence, load: 4 }, NOW), true);
    assert.deepEqual(board.agents.get(S.presence.user), { user: 'u_a3m9q7td', status: 'online', load: 4, capacity: 5, since: 1763876400000 });
    boardEvent(board, S.presence, NOW);
    assert.equal(loadText(board.agents.get(S.presence.user)), '3/5');
    boardEvent(board, { ...S.presence, user: 'u_a7r2v5ke' }, NOW);
    assert.deepEqual(board.agents.get('u_a7r2v5ke'), { user: 'u_a7r2v5ke', status: 'online', load: 3, capacity: 4, since: NOW });
    // Console: the agent's own status shows in its select (which must offer it).
    assert.deepEqual(consoleEvent(consoleAfterAuth(), S.presence, AGENT, NOW), { presence: 'online' });
    assert.ok(PRESENCE.includes(S.presence.status));
    assert.equal(consoleEvent(consoleAfterAuth('u_a7r2v5ke'), S.presence, 'u_a7r2v5ke', NOW), null, "another agent's status");
  },

  receipt: () => {
    // Widget (the customer): the agent read up to 45, so the customer's messages up to 45 show "read".
    const st = widgetAfterAuth();
    assert.equal(widgetEvent(st, S.receipt, CUSTOMER, NOW), 'render');
    assert.equal(st.otherRead, 45);
    assert.equal(st.myRead, 41);
    // Console (the agent who read): its unread count drops to 0.
    const cs = consoleAfterAuth();
    consoleEvent(cs, S.message, AGENT, NOW);
    assert.deepEqual(consoleEvent(cs, S.receipt, AGENT, NOW), { changed: CONV });
    assert.equal(cs.convs.get(CONV).last_read_seq, 45);
    assert.equal(unread(cs.convs.get(CONV)), 0);
    assert.equal(consoleEvent(cs, { ...S.receipt, conv: 'cv_unknown' }, AGENT, NOW), null);
  },

  recalled: () => {
    for (const [page, apply] of [
      ['widget', (cm, f) => { const st = widgetAfterAuth(); st.cm = cm; return widgetEvent(st, f, CUSTOMER, NOW); }],
      ['console', (cm, f) => { const cs = consoleAfterAuth(); cs.msgs.set(CONV, cm); return consoleEvent(cs, f, AGENT, NOW); }],
    ]) {
      const cm = new ConvMessages(CONV);
      cm.add(S.ok_sync.messages[0]);
      cm.add(beforeRecall());
      assert.ok(apply(cm, S.recalled), page);
      const m = cm.list().find((x) => x.seq === S.recalled.seq);
      assert.equal(m.id, S.recalled.msg_id, page);
      assert.equal(m.recalled, true, page);
      assert.equal(m.body, '', page);
      assert.equal(apply(cm, S.recalled), null, `${page}: a second recalled changes nothing`);
      // A copy from before the recall (a late event or sync page) does not bring it back.
      assert.equal(cm.add(beforeRecall()), false, page);
      assert.equal(cm.list()[1].recalled, true, page);
    }
  },

  notice: () => {
    const st = widgetAfterAuth();
    assert.equal(widgetEvent(st, S.notice, CUSTOMER, NOW), 'render');
    assert.equal(st.notice, S.notice.text);
    // A known code gets the widget's own wording (no fixture has left_message: this one is derived).
    widgetEvent(st, { ...S.notice, level: 'info', code: 'left_message', conv: CONV }, CUSTOMER, NOW);
    assert.equal(st.notice, '暂时没有客服在线，您可以留言，客服上线后会尽快回复。');
    assert.deepEqual(consoleEvent(consoleAfterAuth(), S.notice, AGENT, NOW), { toast: S.notice.text });
  },

  notice_transfer_note: () => {
    // To the agent a conversation was transferred to: a toast, and its notes reloaded from the history.
    assert.deepEqual(consoleEvent(consoleAfterAuth(), S.notice_transfer_note, AGENT, NOW),
      { toast: '转接备注：客户要求退款，订单 12345', notes: true });
  },

  rate_request: () => {
    const st = widgetAfterAuth();
    assert.equal(widgetEvent(st, S.rate_request, CUSTOMER, NOW), 'render');
    assert.equal(st.rating, 'ask');
    st.rating = 'done';
    assert.equal(widgetEvent(st, S.rate_request, CUSTOMER, NOW), null, 'rated already');
    assert.equal(st.rating, 'done');
  },

  typing: () => {
    const st = widgetAfterAuth();
    assert.equal(widgetEvent(st, S.typing, CUSTOMER, NOW), 'typing');
    assert.equal(st.typingUntil, NOW + 5000);
    // The console shows others' typing, never its own user's.
    const cs = consoleAfterAuth();
    assert.equal(consoleEvent(cs, S.typing, AGENT, NOW), null);
    assert.equal(cs.typingUntil.size, 0);
    assert.deepEqual(consoleEvent(cs, { ...S.typing, user: CUSTOMER }, AGENT, NOW), { typing: true });
    assert.equal(cs.typingUntil.get(CONV), NOW + 5000);
  },
};

/** Server frames no page uses, with the reason; each must leave every page's state as it was. */
const IGNORED_SERVER = {
  ticket: 'the pages have no tickets yet (the protocol: emitted by the tickets module, not by this version)',
  sla: 'as ticket: SLA clocks belong to tickets',
};

for (const [name, run] of Object.entries(SERVER)) test(`server/${name}.json reaches the pages' handlers`, run);

for (const [name, why] of Object.entries(IGNORED_SERVER)) {
  test(`server/${name}.json is ignored by every page (${why})`, async (t) => {
    const c = await connected(t);
    c.ws.push(S[name]);
    assert.deepEqual(c.events, [S[name]], 'Conn hands it over as an event');
    const st = widgetAfterAuth(), cs = consoleAfterAuth(), board = boardAfterWatch();
    const before = snapshot([st, cs, board]);
    assert.equal(widgetEvent(st, S[name], CUSTOMER, NOW), null);
    assert.equal(consoleEvent(cs, S[name], AGENT, NOW), null);
    assert.equal(boardEvent(board, S[name], NOW), false);
    assert.deepEqual(snapshot([st, cs, board]), before);
  });
}

test('Conn hands every server event to the page and keeps every reply to itself', async (t) => {
  const c = await connected(t);
  for (const [name, f] of Object.entries(S)) {
    const n = c.events.length;
    c.ws.push(f);
    const isReply = ['ok', 'error', 'pong'].includes(f.type);
    assert.equal(c.events.length, n + (isReply ? 0 : 1), name);
    if (!isReply) assert.deepEqual(c.events.at(-1), f, name);
    // Events never carry req; replies are recognized by type even without a pending request.
    assert.equal(isReply || !('req' in f), true, name);
  }
});

// ------------------------------------------------------------------ client frames ← the pages

/**
 * How the pages build each client fixture, with the fixture's values.
 * build(c, fixture) returns the frame as it went on the wire; `via` as in assertFrame.
 */
const CLIENT = {
  auth: { via: 'request', page: 'sb.js Conn, the first frame', build: (c, fx) => {
    assert.equal(c.auth.token, fx.token);
    return c.auth;
  } },
  ping: { via: 'send', page: 'sb.js Conn.tick, when nothing was sent for heartbeat_s', build: (c) => {
    c.conn.lastTx = 0;
    c.conn.tick();
    return c.ws.sent.at(-1);
  } },
  send_text: { via: 'request', page: 'chat.js Outbox.flush of the widget/console composer', build: async (c, fx) => {
    const outbox = new Outbox('test.outbox');
    const it = outbox.add(fx.conv, textKind(fx.body), fx.body);
    await outbox.flush(c.conn, () => {}, () => {});
    const wire = c.ws.sent.at(-1);
    assert.equal(wire.client_msg_id, it.client_msg_id);
    assert.equal(wire.kind, 'text');
    return wire;
  } },
  send_image: { via: 'request', page: 'chat.js Outbox.flush of an uploaded image', build: async (c, fx) => {
    const outbox = new Outbox('test.outbox');
    outbox.add(fx.conv, fileKind('image/png'), fx.body, { attachment: fx.attachment, name: 'shot.png', size: 48213 });
    // The widget and console send images without a caption: body is optional for images.
    outbox.add(fx.conv, fileKind('image/png'), '', { attachment: fx.attachment, name: 'shot.png', size: 48213 });
    await outbox.flush(c.conn, () => {}, () => {});
    const [captioned, bare] = c.ws.sent.slice(-2);
    const { body, ...noCaption } = fx;
    assertFrame(bare, noCaption, 'request');
    assert.equal(typeof body, 'string');
    return captioned;
  } },
  sync_after: { via: 'request', page: 'chat.js catchUp, after a gap or a reconnect', build: async (c, fx) => {
    c.ws.answer = () => ({ ...S.ok_sync, messages: [], has_more: false });
    const cm = new ConvMessages(fx.conv);
    cm.contig = fx.after;
    await catchUp(c.conn, cm);
    return c.ws.sent.at(-1);
  } },
  sync_before: { via: 'request', page: 'chat.js loadOlder, "earlier messages"', build: async (c, fx) => {
    c.ws.answer = () => ({ ...S.ok_sync, messages: [], has_more: false });
    const cm = await storeAfterSync(); // its first message is 41, the fixture's `before`
    await loadOlder(c.conn, cm);
    assert.equal(cm.hasOlder, false);
    return c.ws.sent.at(-1);
  } },
  read: { via: 'send', page: 'widget.js / console.js markRead, up to the store\'s contiguous seq', build: async (c, fx) => {
    const cm = await storeAfterSync();
    assert.equal(cm.contig, 42);
    return sendOnly(c, frames.read(fx.conv, cm.contig));
  } },
  typing: { via: 'send', page: 'widget.js / console.js composer input', build: (c, fx) => sendOnly(c, frames.typing(fx.conv)) },
  consult: { via: 'request', page: 'widget.js resume (the pre-chat form) and newChat', build: (c, fx) => {
    // The other consults the widget sends carry fewer of the optional fields.
    assert.deepEqual(JSON.parse(JSON.stringify(frames.consult())), { type: 'consult' });
    assert.deepEqual(JSON.parse(JSON.stringify(frames.consult({ team: fx.team }))), { type: 'consult', team: fx.team });
    return request(c, frames.consult({ team: fx.team, topic: fx.topic, text: fx.text })).wire;
  } },
  presence: { via: 'request', page: 'console.js setPresence', build: (c, fx) => request(c, frames.presence(fx.status)).wire },
  accept: { via: 'request', page: 'console.js accept', build: (c, fx) => request(c, frames.accept(fx.conv)).wire },
  transfer_agent: { via: 'request', page: 'console.js transfer dialog, an agent chosen', build: (c, fx) =>
    request(c, frames.transfer(fx.conv, { agent: fx.to_agent, team: '', note: fx.note })).wire },
  transfer_team: { via: 'request', page: 'console.js transfer dialog, a team chosen, no note', build: (c, fx) =>
    request(c, frames.transfer(fx.conv, { agent: '', team: fx.to_team, note: '' })).wire },
  close: { via: 'request', page: 'widget.js end button, console.js closeConv', build: (c, fx) => request(c, frames.close(fx.conv)).wire },
  rate: { via: 'request', page: 'widget.js rateBox', build: (c, fx) => {
    assert.equal('comment' in JSON.parse(JSON.stringify(frames.rate(fx.conv, 4, ''))), false, 'a blank comment is not sent');
    return request(c, frames.rate(fx.conv, fx.score, fx.comment)).wire;
  } },
  watch_all: { via: 'request', page: 'dashboard.js onAuth', build: (c, fx) => request(c, frames.watch(fx.teams)).wire },
  // Only the dashboard watches, with "all"; a list goes through the same builder.
  watch_list: { via: 'request', page: 'sb.js frames.watch with a list of teams', build: (c, fx) => request(c, frames.watch(fx.teams)).wire },
  assign: { via: 'request', page: 'dashboard.js assign / reassign', build: (c, fx) => request(c, frames.assign(fx.conv, fx.agent)).wire },
};

/** Client frames no page sends, with the reason. */
const NOT_SENT = {
  recall: 'no page offers recalling a message; the pages only show recalls (server/recalled.json)',
};

for (const [name, { via, page, build }] of Object.entries(CLIENT)) {
  test(`client/${name}.json is what ${page} sends`, async (t) => {
    const c = await connected(t);
    const wire = await build(c, C[name]);
    assert.equal(wire.type, C[name].type);
    assertFrame(wire, C[name], via);
    if (via === 'request') assert.ok(Number.isSafeInteger(wire.req), 'req is an integer');
  });
}

for (const [name, why] of Object.entries(NOT_SENT)) {
  test(`client/${name}.json is sent by no page (${why})`, () => {
    const type = C[name].type;
    assert.equal(Object.keys(CLIENT).some((k) => C[k].type === type), false, `a CLIENT case sends ${type}`);
    assert.equal(frames[type], undefined, `frames.${type} exists: give ${name}.json a case in CLIENT`);
  });
}

test('the pages build client frames only with sb.js frames (so the cases above cover them all)', () => {
  const types = [...new Set(Object.values(C).map((f) => f.type))].join('|');
  const inline = new RegExp(`type:\\s*'(${types})'`, 'g');
  for (const file of readdirSync(STATIC).filter((n) => n.endsWith('.js') && n !== 'sb.js')) {
    const src = readFileSync(new URL(file, STATIC), 'utf8');
    assert.deepEqual(src.match(inline) || [], [], `${file} builds a frame inline`);
  }
});

// ------------------------------------------------------------------ invalid frames never come from the pages

/** Every frame the CLIENT cases build, on one connection. */
async function everyBuiltFrame(t) {
  const c = await connected(t);
  const out = [];
  for (const [name, { via, build }] of Object.entries(CLIENT)) {
    c.ws.answer = () => S.ok_empty;
    const n = c.ws.sent.length;
    await build(c, C[name]);
    out.push(...c.ws.sent.slice(n).map((wire) => ({ name, via, wire })));
  }
  out.push({ name: 'auth', via: 'request', wire: c.auth });
  return out;
}

const INVALID = {
  missing_field: async (t, bad) => {
    // The field the fixture lacks (client_msg_id) is on every send the outbox makes, 1 to 128 bytes.
    const missing = Object.keys(C.send_text).filter((k) => !(k in bad));
    assert.deepEqual(missing, ['client_msg_id']);
    const sends = (await everyBuiltFrame(t)).filter((x) => x.wire.type === 'send');
    assert.ok(sends.length >= 3);
    for (const { wire } of sends) {
      for (const k of missing) assert.equal(typeof wire[k], 'string', k);
      const bytes = Buffer.byteLength(wire.client_msg_id);
      assert.ok(bytes >= 1 && bytes <= 128, `${bytes} bytes`);
    }
  },
  missing_type: async (t, bad) => {
    assert.equal('type' in bad, false);
    for (const { name, wire } of await everyBuiltFrame(t)) assert.equal(typeof wire.type, 'string', name);
  },
  unknown_type: async (t, bad) => {
    const known = new Set(Object.values(C).map((f) => f.type));
    assert.equal(known.has(bad.type), false);
    for (const { name, wire } of await everyBuiltFrame(t)) assert.ok(known.has(wire.type), `${name}: ${wire.type}`);
  },
  req_not_integer: async (t, bad) => {
    assert.equal(typeof bad.req, 'string');
    const reqs = (await everyBuiltFrame(t)).filter((x) => x.via === 'request').map((x) => x.wire.req);
    for (const r of reqs) assert.ok(Number.isSafeInteger(r), String(r));
    assert.equal(new Set(reqs).size, reqs.length, 'one req per request');
  },
  wrong_field_type: async (t, bad) => {
    // read's seq: an integer from the store, never a string.
    const reads = (await everyBuiltFrame(t)).filter((x) => x.wire.type === bad.type);
    assert.ok(reads.length > 0);
    for (const { wire } of reads) {
      assert.equal(jsonType(wire.seq), 'integer');
      assert.notEqual(jsonType(wire.seq), jsonType(bad.seq));
    }
  },
  presence_unknown_status: (t, bad) => {
    // The console's select offers exactly the protocol's statuses, and can show every status the server sends.
    assert.deepEqual([...PRESENCE].sort(), [...STATUSES].sort());
    assert.equal(PRESENCE.includes(bad.status), false);
    for (const s of [C.presence.status, S.presence.status, ...S.ok_watch.agents.map((a) => a.status)]) assert.ok(PRESENCE.includes(s), s);
  },
  send_kind_video: async (t, bad) => {
    // The kinds the composers choose: typed text (text or emoji), an upload (image or file), whatever its type.
    const kinds = new Set([
      ...['你好', '👍', '👍🏻❤️', '好的👍', ' 🎉 '].map(textKind),
      ...['image/png', 'image/webp', 'application/pdf', 'text/plain', 'video/mp4', 'application/octet-stream'].map(fileKind),
    ]);
    assert.deepEqual([...kinds].sort(), [...SEND_KINDS].sort());
    assert.equal(kinds.has(bad.kind), false);
    for (const { wire } of (await everyBuiltFrame(t)).filter((x) => x.wire.type === 'send')) assert.ok(SEND_KINDS.includes(wire.kind), wire.kind);
  },
  watch_teams_some: async (t, bad) => {
    // teams: "all" (what the dashboard sends) or a list of ids; any other string is refused.
    assert.match(readFileSync(new URL('dashboard.js', STATIC), 'utf8'), /frames\.watch\('all'\)/);
    const watches = (await everyBuiltFrame(t)).filter((x) => x.wire.type === 'watch');
    assert.equal(watches.length, 2);
    for (const { wire } of watches) {
      assert.ok(wire.teams === 'all' || (Array.isArray(wire.teams) && wire.teams.every((x) => typeof x === 'string')), JSON.stringify(wire.teams));
      assert.notEqual(wire.teams, bad.teams);
    }
  },
};

for (const [name, check] of Object.entries(INVALID)) {
  test(`invalid/${name}.json: no page builds its defect`, (t) => check(t, I[name]));
}

// ------------------------------------------------------------------ coverage

for (const [dir, all, tables] of [
  ['server', S, { SERVER, IGNORED_SERVER }],
  ['client', C, { CLIENT, NOT_SENT }],
  ['invalid', I, { INVALID }],
]) {
  test(`every fixture in protocol/fixtures/${dir}/ has exactly one case here`, () => {
    const cases = Object.values(tables).flatMap((tb) => Object.keys(tb));
    for (const name of Object.keys(all)) {
      assert.equal(cases.filter((x) => x === name).length, 1, `${dir}/${name}.json: add it to ${Object.keys(tables).join(' or ')}`);
    }
    for (const name of cases) assert.ok(name in all, `${name}: no ${dir}/${name}.json`);
    assert.ok(cases.length > 0);
  });
}
