// What the staff pages share: the login screen, the header (language switch,
// user, log out), the session, and what the console and the dashboard keep
// from the server's events.
import { Session, api } from '/static/sb.js';
import { t, add, setLang, lang, applyStatic } from '/static/i18n.js';
import { h, $ } from '/static/ui.js';

add({
  'login.title': ['登录', 'Sign in'],
  'login.user': ['用户名', 'Username'],
  'login.pass': ['密码', 'Password'],
  'login.go': ['登录', 'Sign in'],
  'login.bad': ['用户名或密码错误', 'Wrong username or password'],
  'login.role': ['此页面需要以下角色之一：{r}', 'This page needs one of these roles: {r}'],
  'logout': ['退出', 'Sign out'],
  'st.online': ['在线', 'Online'],
  'st.busy': ['忙碌', 'Busy'],
  'st.away': ['离开', 'Away'],
  'st.offline': ['离线', 'Offline'],
  'state.queued': ['排队中', 'Waiting'],
  'state.active': ['进行中', 'Active'],
  'state.closed': ['已结束', 'Closed'],
});

/**
 * Starts a staff page: shows the login form until a user with one of
 * `roles` is signed in, then calls ready(session). `rerender` runs after a
 * language switch.
 */
export function staffPage(key, roles, ready, rerender) {
  const session = new Session(key);
  applyStatic();
  const langBtn = $('#lang');
  langBtn.textContent = t('lang.switch');
  langBtn.addEventListener('click', () => {
    setLang(lang() === 'en' ? 'zh-CN' : 'en');
    langBtn.textContent = t('lang.switch');
    rerender?.();
  });
  $('#logout').addEventListener('click', () => { session.clear(); location.reload(); });
  const go = () => {
    $('#who').textContent = session.user.name;
    $('#login')?.remove();
    document.body.classList.add('in');
    ready(session);
  };
  if (session.token && roles.includes(session.user.role)) { go(); return session; }
  const err = h('div', { class: 'err' });
  const form = h('form', { class: 'login-box' },
    h('h2', {}, t('login.title')),
    h('label', {}, t('login.user'), h('input', { name: 'username', autocomplete: 'username', required: true })),
    h('label', {}, t('login.pass'), h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true })),
    err, h('button', { class: 'primary', type: 'submit' }, t('login.go')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    try {
      const pair = await api(null, 'POST', '/auth/login', { username: f.get('username'), password: f.get('password') });
      if (!roles.includes(pair.user.role)) { err.textContent = t('login.role', { r: roles.join(', ') }); return; }
      session.set(pair);
      go();
    } catch (ex) {
      err.textContent = ex.status === 401 ? t('login.bad') : t('err', { m: ex.message });
    }
  });
  document.body.append(h('div', { id: 'login' }, form));
  return session;
}

/** A small notice line at the top of the page. */
export function toast(text, level = 'info') {
  // Not `toast info`: `.info` is the console's side panel.
  const el = h('div', { class: level === 'info' ? 'toast' : `toast ${level}` }, text);
  document.body.append(el);
  setTimeout(() => el.remove(), 4000);
}

/** The names of staff users, by id (for showing agents). */
export async function staffNames(session) {
  const names = new Map();
  let cursor = '';
  for (let i = 0; i < 20; i++) {
    const page = await api(session, 'GET', `/users?limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    for (const u of page.items) names.set(u.id, u);
    if (!page.next_cursor) break;
    cursor = page.next_cursor;
  }
  return names;
}

// ---------------------------------------------------------------- server events
// What the console and the dashboard keep from the server's events
// (protocol/README.md, "Server events"), free of the DOM so that
// tests/fixtures.test.mjs runs it on protocol/fixtures/server/ in Node. Each
// update returns what the page must redraw or do next; a falsy result means
// nothing changed (unknown events, such as `ticket` and `sla`, too).

add({ 'c.tnote.toast': ['转接备注：{m}', 'Transfer note: {m}'] });

export const unread = (c) => Math.max(0, (c.last_seq || 0) - (c.last_read_seq || 0));

/** An open offer to `me` (not yet past its expiry as this clock sees it). */
export const offeredTo = (c, me, now = Date.now()) => c.state === 'queued' && c.offered_to === me && !(c.offer_expires_at && c.offer_expires_at <= now);

/**
 * Stores a ConversationInfo in `convs` (id → info). `news` when it has just
 * become mine or been offered to me (the console then opens it and sounds).
 */
export function upsertConv(convs, c, fromAuth, me) {
  const old = convs.get(c.id);
  const info = { ...old, ...c };
  if (!fromAuth && old) info.last_read_seq = old.last_read_seq; // events carry 0
  if (!fromAuth && !old) info.last_read_seq = c.last_read_seq || 0;
  convs.set(c.id, info);
  const wasMine = old && old.state === 'active' && old.agent === me;
  const nowMine = info.state === 'active' && info.agent === me;
  const offered = offeredTo(info, me);
  const wasOffered = old && old.state === 'queued' && old.offered_to === me;
  return { info, news: !fromAuth && ((nowMine && !wasMine) || (offered && !wasOffered)) };
}

/** The `auth` reply's service conversations into `convs`; returns the ids the reply holds. */
export function consoleAuth(convs, ok, me) {
  for (const c of ok.conversations) if (c.kind === 'service') upsertConv(convs, c, true, me);
  return new Set(ok.conversations.map((c) => c.id));
}

/**
 * A server event on the console's state `cs` = {convs, msgs, readBy,
 * typingUntil} (maps by conversation id). Returns null or what to do:
 * `all` redraw everything; `changed` redraw the list, the tabs and (when
 * shown) the pane of that conversation; `pane` only its pane; `gap` watch
 * these ConvMessages for a gap; `news` a conversation newly mine or offered;
 * `typing`; `presence` the status to show; `toast` a text; `notes` reload
 * the transfer notes.
 */
export function consoleEvent(cs, f, me, now = Date.now()) {
  switch (f.type) {
    case 'message': {
      const c = cs.convs.get(f.msg.conv);
      if (c) c.last_seq = Math.max(c.last_seq, f.msg.seq);
      if (c && !c.name && f.msg.sender.id === c.customer) c.name = f.msg.sender.name;
      const cm = cs.msgs.get(f.msg.conv);
      cm?.add(f.msg);
      cs.typingUntil.delete(f.msg.conv);
      // No sound for messages: one per new assignment is enough.
      return { changed: f.msg.conv, gap: cm || null };
    }
    case 'conversation': {
      if (f.conv.kind !== 'service') return null;
      const { info, news } = upsertConv(cs.convs, f.conv, false, me);
      return { all: true, news: news ? info : null };
    }
    case 'receipt': {
      const c = cs.convs.get(f.conv);
      if (!c) return null;
      if (f.user === me) c.last_read_seq = Math.max(c.last_read_seq || 0, f.seq);
      else cs.readBy.set(f.conv, Math.max(cs.readBy.get(f.conv) || 0, f.seq));
      return { changed: f.conv };
    }
    case 'typing':
      if (f.user === me) return null;
      cs.typingUntil.set(f.conv, now + 5000);
      return { typing: true };
    case 'recalled':
      return cs.msgs.get(f.conv)?.recall(f.seq) ? { pane: f.conv } : null;
    case 'presence':
      return f.user === me ? { presence: f.status } : null;
    case 'notice':
      return f.code === 'transfer_note'
        // The history holds the note too: the console refreshes the notes of its conversations.
        ? { toast: t('c.tnote.toast', { m: f.text }), notes: true }
        : { toast: f.text };
    default: return null;
  }
}

// The dashboard.

/** The `watch` snapshot into the dashboard's board = {queues: team → waiting[], agents: user → AgentState}. */
export function applyWatch(board, snap) {
  board.queues.clear();
  for (const q of snap.queues) board.queues.set(q.team, q.waiting);
  board.agents.clear();
  for (const a of snap.agents) board.agents.set(a.user, a);
}

/** A watch delta on the board (also `active`: conv → {conv, team, agent, since}); true when it changed. */
export function boardEvent(board, f, now = Date.now()) {
  if (f.type === 'queue_update') {
    board.queues.set(f.queue.team, f.queue.waiting);
    return true;
  }
  if (f.type === 'presence') {
    // Sent once per team of the agent: applying it twice changes nothing.
    const a = board.agents.get(f.user) || { user: f.user, capacity: 0, since: 0 };
    if (a.status !== f.status) a.since = now;
    a.status = f.status;
    if (f.load != null) a.load = f.load;
    board.agents.set(f.user, a);
    return true;
  }
  if (f.type === 'conversation' && f.conv.kind === 'service') {
    const c = f.conv;
    if (c.state === 'active' && c.agent) {
      const old = board.active.get(c.id);
      board.active.set(c.id, { conv: c.id, team: c.team, agent: c.agent, since: old && old.agent === c.agent ? old.since : now });
    } else board.active.delete(c.id);
    return true;
  }
  return false;
}

/** "load/capacity" of an agent on the board. */
export const loadText = (a) => `${a.load ?? 0}/${a.capacity || '?'}`;
