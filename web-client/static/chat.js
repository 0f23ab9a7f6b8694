// Messages of a conversation: dedupe by seq and id, gap detection, catch-up
// with `sync`, an outbox resent with the same client_msg_id, and rendering
// (text as text nodes, attachments through object URLs).
import { h, fmtTime, fmtSize, uuid } from '/static/ui.js';
import { t, systemText } from '/static/i18n.js';
import { uploadURL, frames } from '/static/sb.js';

/** The messages of one conversation, as the client knows them. */
export class ConvMessages {
  constructor(conv) {
    this.conv = conv;
    this.bySeq = new Map();
    this.contig = 0; // every seq up to here is known (or older history not loaded)
    this.hasOlder = false;
    this.loaded = false;
    this.gapTimer = null;
  }
  /** Adds or replaces (recall) a message; false when nothing changed. */
  add(m) {
    const old = this.bySeq.get(m.seq);
    // A recall is final: a copy from before it (a late event or sync page) must not bring the message back.
    if (old && old.id === m.id && (old.recalled || !m.recalled)) return false;
    this.bySeq.set(m.seq, m);
    while (this.bySeq.has(this.contig + 1)) this.contig++;
    return true;
  }
  recall(seq) {
    const m = this.bySeq.get(seq);
    if (!m || m.recalled) return false;
    this.bySeq.set(seq, { ...m, body: '', attachment: undefined, recalled: true });
    return true;
  }
  list() { return [...this.bySeq.values()].sort((a, b) => a.seq - b.seq); }
  get last() { let s = 0; for (const k of this.bySeq.keys()) s = Math.max(s, k); return s; }
  get gap() { return this.last > this.contig; }
  hasClientId(id) { for (const m of this.bySeq.values()) if (m.client_msg_id === id) return true; return false; }
}

/** Loads the newest page, so that opening a long conversation stays cheap. */
export async function loadLatest(conn, cm, lastSeq) {
  if (lastSeq > 0) {
    const r = await conn.request(frames.syncBefore(cm.conv, lastSeq + 1, 50));
    for (const m of r.messages) cm.add(m);
    cm.hasOlder = r.has_more;
    if (r.messages.length) cm.contig = Math.max(cm.contig, r.messages[0].seq - 1);
    while (cm.bySeq.has(cm.contig + 1)) cm.contig++;
  }
  cm.loaded = true;
  await catchUp(conn, cm);
}

/** Everything after the last contiguous seq (after a gap or a reconnect). */
export async function catchUp(conn, cm) {
  for (;;) {
    const r = await conn.request(frames.syncAfter(cm.conv, cm.contig, 200));
    for (const m of r.messages) cm.add(m);
    if (!r.has_more || !r.messages.length) break;
    cm.contig = Math.max(cm.contig, r.messages[r.messages.length - 1].seq);
  }
}

export async function loadOlder(conn, cm) {
  const first = Math.min(...cm.bySeq.keys());
  if (!Number.isFinite(first) || first <= 1) { cm.hasOlder = false; return; }
  const r = await conn.request(frames.syncBefore(cm.conv, first, 50));
  for (const m of r.messages) cm.add(m);
  cm.hasOlder = r.has_more;
}

/** After an out-of-order event: wait ~1 s for the gap to fill, then sync. */
export function watchGap(conn, cm, changed) {
  if (!cm.gap || cm.gapTimer) return;
  cm.gapTimer = setTimeout(async () => {
    cm.gapTimer = null;
    if (cm.gap && conn.online) { try { await catchUp(conn, cm); changed(); } catch { /* next reconnect */ } }
  }, 1000);
}

/** Messages waiting for their `ok`, kept in sessionStorage across reloads. */
export class Outbox {
  constructor(key) {
    this.key = key;
    try { this.items = JSON.parse(sessionStorage.getItem(key)) || []; } catch { this.items = []; }
    this.flushing = false;
    this.failed = [];
  }
  save() { try { sessionStorage.setItem(this.key, JSON.stringify(this.items)); } catch { /* ignore */ } }
  add(conv, kind, body, extra = {}) {
    const it = { conv, client_msg_id: uuid(), kind, body, ts: Date.now(), ...extra };
    this.items.push(it);
    this.save();
    return it;
  }
  remove(id) { this.items = this.items.filter((i) => i.client_msg_id !== id); this.save(); }
  forConv(conv) { return this.items.filter((i) => i.conv === conv); }

  /** Sends the queue in order; stops when offline (resent after the next auth). */
  async flush(conn, sent, failed) {
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (this.items.length && conn.online) {
        const it = this.items[0];
        try {
          const ok = await conn.request(frames.send(it));
          this.remove(it.client_msg_id);
          sent(ok.msg);
        } catch (e) {
          if (['disconnected', 'rate_limited', 'internal', 'unavailable'].includes(e.code)) {
            if (e.code !== 'disconnected') setTimeout(() => this.flush(conn, sent, failed), 2000);
            break;
          }
          this.remove(it.client_msg_id);
          failed(it, e);
        }
      }
    } finally { this.flushing = false; }
  }
}

/**
 * Renders a conversation into `box`. opts: cm, pending (outbox items), me
 * (user id), readSeq (the other side's read mark), session, names (show
 * sender names), onOlder.
 */
export function renderMessages(box, opts) {
  const { cm, pending = [], me, readSeq = 0, session } = opts;
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  const cache = box._cache || (box._cache = new Map());
  const used = new Map();
  const nodes = [];
  if (cm.hasOlder && opts.onOlder) nodes.push(h('button', { class: 'older', onclick: opts.onOlder }, t('older')));
  for (const m of cm.list()) {
    const mine = m.sender.id === me;
    const key = `${m.id}|${m.recalled ? 1 : 0}|${mine && m.seq <= readSeq ? 1 : 0}|${opts.lang}`;
    let el = cache.get(key);
    if (!el) el = messageNode(m, mine, mine ? (m.seq <= readSeq ? 'read' : 'unread') : null, session, opts.names);
    used.set(key, el);
    nodes.push(el);
  }
  for (const it of pending) {
    if (cm.hasClientId(it.client_msg_id)) continue;
    nodes.push(messageNode({ ...it, sender: { id: me }, seq: 0, pending: true }, true, 'sending', session, false));
  }
  box._cache = used;
  box.replaceChildren(...nodes);
  if (nearBottom || opts.forceBottom) box.scrollTop = box.scrollHeight;
}

function messageNode(m, mine, state, session, names) {
  if (m.kind === 'system') {
    return h('div', { class: 'msg system', dataset: { seq: m.seq, id: m.id } },
      h('span', { class: 'text' }, systemText(m.body)));
  }
  let content;
  if (m.recalled) content = h('span', { class: 'text recalled' }, t('msg.recalled'));
  else if (m.kind === 'image' && m.attachment) {
    const img = h('img', { class: 'att', alt: m.body || t('msg.image') });
    if (m.preview) img.src = m.preview;
    else uploadURL(session, m.attachment).then((u) => { img.src = u; }, () => { img.alt = t('msg.image'); });
    content = [img, m.body ? h('div', { class: 'text' }, m.body) : null];
  } else if (m.kind === 'file' && m.attachment) {
    const a = h('a', { class: 'file', href: '#' }, `📎 ${m.name || m.body || t('msg.file')}`);
    a.addEventListener('click', async (e) => {
      e.preventDefault();
      const u = await uploadURL(session, m.attachment);
      const dl = h('a', { href: u, download: m.name || m.body || 'file' });
      document.body.append(dl); dl.click(); dl.remove();
    });
    content = [a, m.size ? h('small', {}, ` ${fmtSize(m.size)}`) : null];
  } else content = h('span', { class: 'text' }, m.body);
  const status = state === 'sending' ? t('msg.sending') : state === 'read' ? t('msg.read') : state === 'unread' ? t('msg.unread') : '';
  return h('div', {
    class: `msg ${mine ? 'mine' : 'theirs'}${m.pending ? ' pending' : ''}`,
    dataset: m.pending ? { cmid: m.client_msg_id } : { seq: m.seq, id: m.id },
  },
  names && !mine ? h('div', { class: 'who' }, m.sender.name) : null,
  h('div', { class: 'bubble' }, content),
  h('div', { class: 'meta' }, fmtTime(m.ts), status ? h('span', { class: `st ${state}` }, ` · ${status}`) : null));
}

/** The `send` kind of typed text: `emoji` when it is nothing but emoji. */
export const textKind = (body) => (/^(\p{Extended_Pictographic}|\u200d|\ufe0f|\s)+$/u.test(body) ? 'emoji' : 'text');
/** The `send` kind of an upload of type `mime`: `image` needs an image/* upload. */
export const fileKind = (mime) => (mime.startsWith('image/') ? 'image' : 'file');

export const EMOJI = ['😀', '😂', '😊', '😍', '🤔', '😅', '😭', '😡', '👍', '👎', '👏', '🙏', '💪', '🎉', '❤️', '💔', '🌹', '☕', '🔥', '✅', '❌', '❓', '👌', '🤝'];

/** Builds the emoji picker; pick(e) gets the chosen emoji. */
export function emojiPicker(pick) {
  return h('div', { class: 'emoji-panel', hidden: true },
    EMOJI.map((e) => h('button', { type: 'button', class: 'emo', onclick: () => pick(e) }, e)));
}
