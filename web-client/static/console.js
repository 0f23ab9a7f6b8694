// The agent console (/console): presence, offered and active conversations
// with unread counts, tabs, customer info and history, quick replies with
// variables and `/` shortcodes, transfer, close, notice on new assignments.
import { Conn, api, frames, PRESENCE } from '/static/sb.js';
import { t, add, lang } from '/static/i18n.js';
import { h, $, fill, fmtTime, fmtDur } from '/static/ui.js';
import { ConvMessages, Outbox, loadLatest, catchUp, loadOlder, watchGap, renderMessages, emojiPicker, fileKind } from '/static/chat.js';
import { staffPage, toast, upsertConv, consoleAuth, consoleEvent, offeredTo, unread } from '/static/staff.js';

add({
  'c.title': ['坐席控制台', 'Agent console'],
  'c.offers': ['待接入', 'Offered to you'],
  'c.active': ['进行中', 'Active'],
  'c.closed': ['已结束', 'Closed'],
  'c.none': ['暂无会话', 'No conversations'],
  'c.pick': ['从左侧选择一个会话', 'Pick a conversation on the left'],
  'c.accept': ['接入', 'Accept'],
  'c.customer': ['客户', 'Customer'],
  'c.topic': ['咨询类型', 'Topic'],
  'c.started': ['开始时间', 'Started'],
  'c.past': ['历史会话', 'Past conversations'],
  'c.nopast': ['无', 'None'],
  'c.first': ['首次来访', 'First contact'],
  'c.count': ['咨询次数', 'Conversations'],
  'c.more': ['更多', 'More'],
  'c.history': ['历史会话（只读）', 'Past conversation (read only)'],
  'c.transfer': ['转接', 'Transfer'],
  'c.close': ['结束会话', 'Close'],
  'c.to.agent': ['转给客服', 'To agent'],
  'c.to.team': ['转到团队', 'To team'],
  'c.note': ['备注（仅同事可见）', 'Note (staff only)'],
  'c.quick': ['快捷回复', 'Quick replies'],
  'c.quick.add': ['添加', 'Add'],
  'c.quick.code': ['短码，如 /hi', 'Code, e.g. /hi'],
  'c.quick.text': ['内容，可用 {customer.name} {agent.name}', 'Text; {customer.name} {agent.name} work'],
  'c.new': ['新会话', 'New conversation'],
  'c.placeholder': ['输入消息，回车发送，Shift+回车换行，/ 快捷回复', 'Type; Enter sends, Shift+Enter new line, / for quick replies'],
  'c.readonly': ['此会话已结束（只读）', 'This conversation has ended (read only)'],
  'c.transferred': ['会话已转出', 'Conversation transferred'],
  'c.offer.left': ['{s} 后过期', 'expires in {s}'],
  'c.offer.pane': ['此会话正在分配给您，请在 {s} 内接入', 'This conversation is offered to you; accept within {s}'],
  'c.offer.gone': ['该会话已不再分配给您', 'This conversation is no longer offered to you'],
  'c.tnote': ['转接备注', 'Transfer note'],
});

const DEFAULT_QUICK = [
  { code: '/hi', text: '您好 {customer.name}，我是客服 {agent.name}，请问有什么可以帮您？' },
  { code: '/wait', text: '请稍等，我帮您查询一下。' },
  { code: '/bye', text: '感谢您的咨询，祝您生活愉快！' },
];
const quickReplies = () => { try { return JSON.parse(localStorage.getItem('sb.quick')) || DEFAULT_QUICK; } catch { return DEFAULT_QUICK; } };
const saveQuick = (list) => localStorage.setItem('sb.quick', JSON.stringify(list));

let session, conn, outbox;
const convs = new Map(); // id -> ConversationInfo (+ .name, customer name)
const msgs = new Map(); // id -> ConvMessages
const readBy = new Map(); // conv -> customer's read seq
const typingUntil = new Map();
const cs = { convs, msgs, readBy, typingUntil }; // what server events update (staff.js consoleEvent)
const tabs = []; // open conversation ids
let sel = null;
let unseen = 0;
const me = () => session.user.id;
/** An open offer to me (not yet past its expiry as this clock sees it). */
const offeredToMe = (c) => offeredTo(c, me());
const remaining = (c) => fmtDur(Math.max(0, (c.offer_expires_at - Date.now()) / 1000));

session = staffPage('sb.console', ['agent', 'supervisor', 'admin'], start, renderAll);

function start(s) {
  session = s; // on a reload ready() runs inside staffPage(), before its return value is assigned
  outbox = new Outbox('sb.console.outbox');
  const pres = $('#presence');
  for (const s of PRESENCE) pres.append(h('option', { value: s }, t(`st.${s}`)));
  pres.value = sessionStorage.getItem('sb.console.presence') || 'online';
  pres.addEventListener('change', () => setPresence(pres.value));
  conn = new Conn(session, {
    onStatus: (s) => {
      $('#net').textContent = s === 'online' ? '' : s === 'expired' ? '' : t(`net.${s}`);
      if (s === 'expired') { session.clear(); location.reload(); }
    },
    onAuth: resume,
    onEvent: event,
  });
  conn.start();
  document.addEventListener('visibilitychange', () => { if (!document.hidden) { unseen = 0; document.title = t('c.title'); markRead(); } });
  setInterval(() => { renderTyping(); tickOffers(); }, 1000);
}

/** Counts the offers down; an expired one leaves the list (the server withdraws it too). */
function tickOffers() {
  let gone = false;
  for (const el of document.querySelectorAll('[data-until]')) {
    const c = convs.get(el.dataset.conv);
    if (!c || !offeredToMe(c)) { gone = true; continue; }
    el.textContent = t(el.dataset.fmt, { s: remaining(c) });
  }
  if (gone) renderAll();
}

function setPresence(s) {
  sessionStorage.setItem('sb.console.presence', s);
  conn.request(frames.presence(s)).catch((e) => toast(t('err', { m: e.message }), 'error'));
}

async function resume(ok) {
  // The status is the user's: re-declare the one chosen here.
  setPresence($('#presence').value);
  const open = consoleAuth(convs, ok, me());
  for (const [id, c] of convs) {
    if (!open.has(id) && c.state !== 'closed' && !(c.state === 'queued' && c.offered_to === me())) {
      try { upsert(await api(session, 'GET', `/conversations/${id}`)); } catch { c.state = 'closed'; }
    }
  }
  if (!sel && tabs.length === 0) {
    const first = [...convs.values()].find((c) => c.state === 'active');
    if (first) openTab(first.id);
  }
  for (const id of tabs) {
    const cm = msgs.get(id);
    if (cm?.loaded) await catchUp(conn, cm).catch(() => {});
  }
  renderAll();
  flush();
}

function upsert(c, fromAuth) {
  const { info, news } = upsertConv(convs, c, fromAuth, me());
  if (news) notify(info);
  return info;
}

function notify(info) {
  const cur = sel && convs.get(sel);
  if (info.state === 'active' && (!cur || cur.state !== 'active' || cur.agent !== me())) openTab(info.id);
  if (document.hidden || sel !== info.id) {
    unseen++;
    document.title = `(${unseen}) ${t('c.new')} · ${t('c.title')}`;
  }
  beep();
}

let audio;
function beep() {
  try {
    audio = audio || new AudioContext();
    const o = audio.createOscillator(), g = audio.createGain();
    o.frequency.value = 880; g.gain.value = 0.08;
    o.connect(g); g.connect(audio.destination);
    o.start(); o.stop(audio.currentTime + 0.18);
  } catch { /* no audio */ }
}

function event(f) {
  const fx = consoleEvent(cs, f, me());
  if (!fx) return;
  if (fx.gap) watchGap(conn, fx.gap, renderPane);
  if (fx.news) notify(fx.news);
  if (fx.presence) $('#presence').value = fx.presence;
  if (fx.toast) toast(fx.toast);
  if (fx.notes) setTimeout(() => { for (const id of tabs) if (convs.get(id)?.agent === me()) loadNotes(id); }, 300);
  if (fx.typing) renderTyping();
  if (fx.all) renderAll();
  if (fx.changed) { renderList(); renderTabs(); }
  const pane = fx.changed || fx.pane;
  if (pane && pane === sel) renderPane();
}

function label(c) { return c.name || c.topic || (c.customer ? c.customer.slice(-6) : c.id.slice(-6)); }

function renderAll() { renderList(); renderTabs(); renderPane(); renderInfo(); }

function renderList() {
  const offers = [], active = [];
  for (const c of convs.values()) {
    if (offeredToMe(c)) offers.push(c);
    else if (c.state === 'active' && c.agent === me()) active.push(c);
  }
  const item = (c, offer) => h('div', {
    class: `conv-item${sel === c.id ? ' sel' : ''}`, dataset: { conv: c.id }, onclick: () => openTab(c.id),
  },
  h('span', { class: 'nm' }, label(c)),
  offer ? h('span', { class: 'countdown muted', dataset: { conv: c.id, until: c.offer_expires_at, fmt: 'c.offer.left' } }, t('c.offer.left', { s: remaining(c) })) : null,
  offer ? h('button', { class: 'primary accept', type: 'button', onclick: (e) => { e.stopPropagation(); accept(c.id); } }, t('c.accept'))
    : unread(c) ? h('span', { class: 'badge' }, unread(c)) : null);
  fill($('#list'),
    offers.length ? h('h4', {}, t('c.offers')) : null, offers.map((c) => item(c, true)),
    h('h4', {}, t('c.active')), active.length ? active.map((c) => item(c, false)) : h('div', { class: 'muted conv-item' }, t('c.none')));
}

function accept(id) {
  conn.request(frames.accept(id)).then(() => openTab(id), (e) => toast(t('err', { m: e.message }), 'error'));
}

function openTab(id) {
  if (!tabs.includes(id)) tabs.push(id);
  sel = id;
  ensure(id);
  unseen = 0; document.title = t('c.title');
  renderAll();
}

/** Loads a conversation's messages, read marks and transfer notes once it is readable (not while only offered). */
function ensure(id) {
  const c = convs.get(id);
  if (c && c.state === 'queued' && c.offered_to === me()) return;
  let cm = msgs.get(id);
  if (!cm && conn?.online) {
    cm = new ConvMessages(id);
    msgs.set(id, cm);
    {
      loadLatest(conn, cm, c?.last_seq || 0).then(() => {
        nameFromMessages(id);
        renderAll();
      }).catch(() => {});
      api(session, 'GET', `/conversations/${id}/members`).then((ms) => {
        for (const m of ms) if (m.role === 'customer' || m.user === c?.customer) readBy.set(id, m.last_read_seq);
        if (sel === id) renderPane();
      }).catch(() => {});
      loadNotes(id);
    }
  }
}

/** The notes of the transfers to me, from the conversation's history. */
function loadNotes(id) {
  api(session, 'GET', `/conversations/${id}/events`).then((r) => {
    const c = convs.get(id);
    if (!c) return;
    c.notes = r.items.filter((e) => e.kind === 'transferred' && e.note && e.agent === me());
    if (sel === id) renderInfo();
  }, () => {});
}

function nameFromMessages(id) {
  const c = convs.get(id), cm = msgs.get(id);
  if (!c || !cm || c.name) return;
  const m = cm.list().find((x) => x.sender.id === c.customer);
  if (m) c.name = m.sender.name;
}

function closeTab(id) {
  const i = tabs.indexOf(id);
  if (i >= 0) tabs.splice(i, 1);
  if (sel === id) sel = tabs[Math.max(0, i - 1)] || null;
  renderAll();
}

function renderTabs() {
  $('#tabs').replaceChildren(...tabs.map((id) => {
    const c = convs.get(id) || { id };
    return h('button', { class: `tab${sel === id ? ' sel' : ''}`, type: 'button', dataset: { conv: id }, onclick: () => { sel = id; renderAll(); } },
      label(c), unread(c) && sel !== id ? h('span', { class: 'badge' }, unread(c)) : null,
      h('span', { class: 'x', onclick: (e) => { e.stopPropagation(); closeTab(id); } }, '×'));
  }));
}

let paneEls = null;
function renderPane() {
  const pane = $('#pane');
  if (!sel) { paneEls = null; pane.replaceChildren(h('div', { class: 'empty' }, t('c.pick'))); return; }
  const c = convs.get(sel);
  if (c && c.state === 'queued' && c.offered_to === me()) {
    paneEls = null;
    const open = offeredToMe(c);
    pane.replaceChildren(h('div', { class: 'empty offer-pane' },
      open ? h('div', { class: 'countdown', dataset: { conv: c.id, until: c.offer_expires_at, fmt: 'c.offer.pane' } }, t('c.offer.pane', { s: remaining(c) })) : t('c.offer.gone'),
      open ? h('button', { class: 'primary accept', type: 'button', onclick: () => accept(c.id) }, t('c.accept')) : null));
    return;
  }
  ensure(sel);
  const writable = c && c.state === 'active' && c.agent === me();
  if (!paneEls || paneEls.conv !== sel || paneEls.writable !== writable || paneEls.lang !== lang()) {
    paneEls = { conv: sel, writable, lang: lang(), msgs: h('div', { class: 'msgs', role: 'log' }), typing: h('div', { class: 'typing' }) };
    pane.replaceChildren(paneEls.msgs, paneEls.typing, writable ? composer(sel) : h('div', { class: 'composer muted' }, readOnlyPast(c) ? t('c.history') : c?.agent && c.agent !== me() && c.state === 'active' ? t('c.transferred') : t('c.readonly')));
  }
  const cm = msgs.get(sel);
  if (cm) {
    renderMessages(paneEls.msgs, {
      cm, pending: outbox.forConv(sel), me: me(), readSeq: readBy.get(sel) || 0, session, names: true, lang: lang(),
      onOlder: () => loadOlder(conn, cm).then(renderPane),
    });
  }
  markRead();
  renderTyping();
}

function renderTyping() {
  if (paneEls) paneEls.typing.textContent = (typingUntil.get(sel) || 0) > Date.now() ? t('typing') : '';
}

function markRead() {
  if (!sel || document.hidden || !conn?.online) return;
  const c = convs.get(sel), cm = msgs.get(sel);
  if (!c || !cm || !cm.loaded || readOnlyPast(c)) return;
  const seq = cm.contig;
  if (seq > (c.last_read_seq || 0)) {
    c.last_read_seq = seq;
    conn.send(frames.read(sel, seq));
    renderList(); renderTabs();
  }
}

function expand(text, conv) {
  const c = convs.get(conv);
  return text.replaceAll('{customer.name}', c?.name || t('c.customer')).replaceAll('{agent.name}', session.user.name);
}

function composer(conv) {
  const text = h('textarea', { rows: 2, maxlength: 8000, 'aria-label': 'message' });
  text.placeholder = t('c.placeholder');
  const suggest = h('div', { class: 'suggest', hidden: true });
  const emoji = emojiPicker((e) => { text.value += e; text.focus(); });
  const file = h('input', { type: 'file', hidden: true });
  let matches = [], pick = 0;
  const showSuggest = () => {
    const v = text.value;
    matches = v.startsWith('/') && !v.includes('\n') ? quickReplies().filter((q) => q.code.startsWith(v.split(' ')[0])) : [];
    pick = Math.min(pick, Math.max(0, matches.length - 1));
    suggest.hidden = !matches.length;
    suggest.replaceChildren(...matches.map((q, i) => h('div', { class: i === pick ? 'sel' : '', onmousedown: (e) => { e.preventDefault(); use(q); } },
      h('b', {}, q.code), ' ', expand(q.text, conv))));
  };
  const use = (q) => { text.value = expand(q.text, conv); suggest.hidden = true; matches = []; text.focus(); };
  let lastTyping = 0;
  text.addEventListener('input', () => {
    showSuggest();
    if (Date.now() - lastTyping > 3000) { lastTyping = Date.now(); conn.send(frames.typing(conv)); }
  });
  text.addEventListener('keydown', (e) => {
    if (matches.length) {
      if (e.key === 'ArrowDown') { pick = (pick + 1) % matches.length; showSuggest(); e.preventDefault(); return; }
      if (e.key === 'ArrowUp') { pick = (pick + matches.length - 1) % matches.length; showSuggest(); e.preventDefault(); return; }
      if (e.key === 'Tab' || (e.key === 'Enter' && !e.shiftKey)) { e.preventDefault(); use(matches[pick]); return; }
      if (e.key === 'Escape') { suggest.hidden = true; matches = []; return; }
    }
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  const send = () => {
    const body = text.value.trim();
    if (!body) return;
    text.value = '';
    lastTyping = 0;
    outbox.add(conv, 'text', body);
    flush();
  };
  file.addEventListener('change', async () => {
    const f = file.files[0];
    file.value = '';
    if (!f) return;
    try {
      const fd = new FormData();
      fd.append('file', f, f.name);
      const up = await api(session, 'POST', '/uploads', fd);
      const kind = fileKind(up.mime);
      outbox.add(conv, kind, kind === 'image' ? '' : up.name, { attachment: up.id, name: up.name, size: up.size });
      flush();
    } catch (e) { toast(t('upload.failed', { m: e.message }), 'error'); }
  });
  return h('div', { class: 'composer' }, suggest, emoji,
    h('button', { class: 'ibtn', type: 'button', title: t('emoji'), onclick: () => { emoji.hidden = !emoji.hidden; } }, '😊'),
    h('button', { class: 'ibtn', type: 'button', title: t('attach'), onclick: () => file.click() }, '📎'),
    h('button', { class: 'ibtn', type: 'button', title: t('c.quick'), onclick: quickDialog }, '⚡'),
    file, text, h('button', { class: 'primary send', type: 'button', onclick: send }, t('send')));
}

function flush() {
  outbox.flush(conn, (msg) => {
    msgs.get(msg.conv)?.add(msg);
    const c = convs.get(msg.conv);
    if (c) c.last_seq = Math.max(c.last_seq, msg.seq);
    if (msg.conv === sel) renderPane();
  }, (it, e) => toast(t('err', { m: e.message }), 'error'));
  if (sel) renderPane();
}

// ---------------------------------------------------------------- customer panel
// The profile and every past conversation of the selected conversation's
// customer, whoever served it (GET /customers/{id}, /customers/{id}/conversations).

const customers = new Map(); // customer id -> { profile, items, next, conv, at, busy }
const CUSTOMER_PAGE = 20;
const CUSTOMER_TTL_MS = 60000;

/** A customer's conversation opened from the past list that is not mine: read only, no read marks. */
const readOnlyPast = (c) => !!c?.history && c.agent !== me();

/**
 * Loads a customer's profile and first page of conversations, again when
 * another of its conversations is selected or the copy is a minute old;
 * `more` appends the next page. Redraws the panel when it is still showing
 * that customer.
 */
async function loadCustomer(id, conv, more = false) {
  const old = customers.get(id);
  if (old?.busy) return;
  if (more ? !old?.next : old && old.conv === conv && Date.now() - old.at < CUSTOMER_TTL_MS) return;
  const entry = more ? old : { items: [], ...old, conv, at: Date.now() };
  entry.busy = true;
  customers.set(id, entry);
  if (more) renderInfo();
  const path = `/customers/${encodeURIComponent(id)}`;
  try {
    if (more) {
      const page = await api(session, 'GET', `${path}/conversations?limit=${CUSTOMER_PAGE}&cursor=${encodeURIComponent(entry.next)}`);
      const seen = new Set(entry.items.map((x) => x.id));
      entry.items = [...entry.items, ...page.items.filter((x) => !seen.has(x.id))];
      entry.next = page.next_cursor;
    } else {
      const [profile, page] = await Promise.all([
        api(session, 'GET', path), api(session, 'GET', `${path}/conversations?limit=${CUSTOMER_PAGE}`),
      ]);
      Object.assign(entry, { profile, items: page.items, next: page.next_cursor });
    }
  } catch { /* keep what is shown; tried again after CUSTOMER_TTL_MS */ }
  entry.busy = false;
  if (sel && convs.get(sel)?.customer === id) renderInfo();
}

/** Opens one of the customer's past conversations in a tab (read only unless it is mine). */
function openPast(x, profile) {
  if (!convs.has(x.id)) convs.set(x.id, { ...x, name: profile?.name, history: true });
  openTab(x.id);
}

/** The past conversations (all but the selected one), with "more" while pages remain. */
function pastList(c, cust) {
  const items = (cust?.items || []).filter((x) => x.id !== c.id);
  return h('div', { class: 'past-list' },
    items.length ? items.map((x) => h('div', { class: 'past', dataset: { conv: x.id }, onclick: () => openPast(x, cust.profile) },
      `${fmtTime(x.created_at)} · ${x.topic || ''} · ${t(`state.${x.state}`)}`)) : h('div', {}, t('c.nopast')),
    cust?.next ? h('button', { class: 'ghost more-past', type: 'button', disabled: cust.busy, onclick: () => loadCustomer(c.customer, c.id, true) }, t('c.more')) : null);
}

function renderInfo() {
  const box = $('#info');
  const c = sel && convs.get(sel);
  if (!c) { box.replaceChildren(); return; }
  const mine = c.state === 'active' && c.agent === me();
  const cust = c.customer ? customers.get(c.customer) : null;
  const p = cust?.profile;
  fill(box,
    h('h4', {}, t('c.customer')),
    h('div', { class: 'cust-name' }, h('b', {}, p?.name || c.name || '—')),
    h('div', { class: 'muted' }, c.customer || ''),
    p ? h('div', { class: 'muted cust-first' }, `${t('c.first')}: ${fmtTime(p.created_at)}`) : null,
    p ? h('div', { class: 'muted cust-count' }, `${t('c.count')}: ${p.conversations}`) : null,
    c.topic ? h('div', {}, `${t('c.topic')}: ${c.topic}`) : null,
    (c.notes || []).map((n) => h('div', { class: 'transfer-note' }, h('b', {}, `${t('c.tnote')} · ${fmtTime(n.at)}`), h('div', { class: 'text' }, n.note))),
    h('div', { class: 'muted' }, `${t('c.started')}: ${fmtTime(c.created_at)}`),
    h('div', { class: 'muted' }, t(`state.${c.state}`)),
    mine ? h('div', { class: 'row' },
      h('button', { class: 'ghost', type: 'button', id: 'transfer', onclick: () => transferDialog(c.id) }, t('c.transfer')),
      h('button', { class: 'danger', type: 'button', id: 'close', onclick: () => closeConv(c.id) }, t('c.close'))) : null,
    h('h4', {}, t('c.past')), pastList(c, cust));
  if (c.customer) loadCustomer(c.customer, c.id);
}

function closeConv(id) {
  conn.request(frames.close(id)).catch((e) => toast(t('err', { m: e.message }), 'error'));
}

async function transferDialog(id) {
  const [users, teams] = await Promise.all([
    api(session, 'GET', '/users?role=agent&limit=200'), api(session, 'GET', '/teams'),
  ]).catch((e) => { toast(t('err', { m: e.message }), 'error'); return [null, null]; });
  if (!users) return;
  const agentSel = h('select', { name: 'agent' }, h('option', { value: '' }, '—'),
    users.items.filter((u) => u.id !== me() && !u.disabled).map((u) => h('option', { value: u.id }, u.name)));
  const teamSel = h('select', { name: 'team' }, h('option', { value: '' }, '—'), teams.items.map((x) => h('option', { value: x.id }, x.name)));
  const note = h('textarea', { name: 'note', rows: 2, maxlength: 500 });
  const err = h('div', { class: 'err' });
  const dlg = h('dialog', {}, h('form', { method: 'dialog' },
    h('h3', {}, t('c.transfer')),
    h('label', {}, t('c.to.agent'), agentSel), h('label', {}, t('c.to.team'), teamSel), h('label', {}, t('c.note'), note), err,
    h('div', { class: 'row' }, h('button', { class: 'ghost', value: 'cancel' }, t('cancel')), h('button', { class: 'primary', value: 'ok', id: 'do-transfer' }, t('c.transfer')))));
  dlg.addEventListener('close', async () => {
    if (dlg.returnValue !== 'ok') { dlg.remove(); return; }
    try { await conn.request(frames.transfer(id, { agent: agentSel.value, team: teamSel.value, note: note.value.trim() })); } catch (e) { toast(t('err', { m: e.message }), 'error'); }
    dlg.remove();
  });
  document.body.append(dlg);
  dlg.showModal();
}

function quickDialog() {
  const list = h('div');
  const draw = () => list.replaceChildren(...quickReplies().map((q, i) => h('div', { class: 'inline' },
    h('b', {}, q.code), h('span', { class: 'muted' }, q.text),
    h('button', { type: 'button', class: 'ghost', onclick: () => { const l = quickReplies(); l.splice(i, 1); saveQuick(l); draw(); } }, '×'))));
  draw();
  const code = h('input', { placeholder: t('c.quick.code') });
  const text = h('input', { placeholder: t('c.quick.text') });
  const dlg = h('dialog', {}, h('form', { method: 'dialog' }, h('h3', {}, t('c.quick')), list,
    h('div', { class: 'inline' }, code, text, h('button', { type: 'button', class: 'primary', onclick: () => {
      const c = code.value.trim();
      if (!c || !text.value.trim()) return;
      const l = quickReplies().filter((q) => q.code !== (c.startsWith('/') ? c : `/${c}`));
      l.push({ code: c.startsWith('/') ? c : `/${c}`, text: text.value.trim() });
      saveQuick(l); code.value = ''; text.value = ''; draw();
    } }, t('c.quick.add'))),
    h('div', { class: 'row' }, h('button', { class: 'ghost', value: 'ok' }, 'OK'))));
  dlg.addEventListener('close', () => dlg.remove());
  document.body.append(dlg);
  dlg.showModal();
}
