// The customer widget (/widget): pre-chat form, consult, queue position,
// messages with outbox and resume, uploads, receipts, typing, rating.
import { Session, Conn, api, frames } from '/static/sb.js';
import { t, add, setLang, lang, applyStatic } from '/static/i18n.js';
import { h, $, fmtSize } from '/static/ui.js';
import { Outbox, loadLatest, catchUp, loadOlder, watchGap, renderMessages, emojiPicker, textKind, fileKind } from '/static/chat.js';
import { widgetState, widgetEvent, setWidgetConv, openServiceConv, consulted, inLiveQueue, queueText } from '/static/widgetstate.js';

add({
  'w.title': ['在线客服', 'Customer service'],
  'w.end': ['结束会话', 'End chat'],
  'w.hello': ['您好！请留下称呼和问题，我们马上为您安排客服。', 'Hello! Tell us your name and question and we will find an agent for you.'],
  'w.name': ['您的称呼', 'Your name'],
  'w.phone': ['手机号（选填）', 'Phone (optional)'],
  'w.topic': ['咨询类型', 'Topic'],
  'w.topic.any': ['请选择', 'Choose'],
  'w.question': ['您想咨询什么？', 'What can we help with?'],
  'w.start': ['开始咨询', 'Start chat'],
  'w.noid': ['无法确认您的身份，请刷新网页后重试。', 'We could not confirm who you are; reload the page and try again.'],
  'w.nolink': ['此链接无效或已过期，请从网站重新打开客服窗口。', 'This link is invalid or expired; open the chat again from the website.'],
  'w.busy': ['此网络发起的新咨询过多，请一分钟后再试。', 'Too many new chats from this network; try again in a minute.'],
  'w.placeholder': ['输入消息，回车发送', 'Type a message, Enter to send'],
  'w.rate.title': ['请为本次服务评分', 'Please rate this conversation'],
  'w.rate.comment': ['其他意见（选填）', 'Comments (optional)'],
  'w.rate.submit': ['提交评价', 'Submit'],
  'w.rate.thanks': ['感谢您的评价！', 'Thank you for your rating!'],
  'w.ended': ['会话已结束', 'The conversation has ended'],
  'w.new': ['发起新的咨询', 'Start a new chat'],
  'w.phone.line': ['联系电话：{p}', 'Phone: {p}'],
});

// ---------------------------------------------------------------- config
// Non-secret settings come in the query (from /embed.js); the quick-link
// token comes in the fragment (never sent to a server) or, from a link the
// server made, in `?quick=`. Either is moved to sessionStorage at once and
// removed from the address bar. `?identity=1` says the embedding page has a
// signed customer identity: it arrives by postMessage (never in a URL) and is
// exchanged for a session instead of a quick link; the name comes with it.
// With neither, the visitor starts anonymously (POST /auth/anonymous).
const qs = new URLSearchParams(location.search);
const frag = new URLSearchParams(location.hash.slice(1));
const cfg = {
  team: qs.get('team') || undefined,
  greeting: qs.get('greeting') || '',
  topics: (qs.get('topics') || '').split(',').map((s) => s.trim()).filter(Boolean),
  color: qs.get('color') || '',
  embed: qs.has('embed'),
  identity: qs.has('identity'),
};
const quick = frag.get('quick') || qs.get('quick');
if (quick) { try { sessionStorage.setItem('sb.widget.quick', quick); } catch { /* ignore */ } }
if (frag.has('quick') || qs.has('quick')) {
  qs.delete('quick');
  const rest = qs.toString();
  history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : ''));
}
const quickToken = () => quick || sessionStorage.getItem('sb.widget.quick');
if (/^#?[0-9a-fA-F]{3,8}$/.test(cfg.color)) document.body.style.setProperty('--c', `#${cfg.color.replace('#', '')}`);

// ---------------------------------------------------------------- state
const session = new Session('sb.widget');
const outbox = new Outbox('sb.widget.outbox');
const st = widgetState(); // its fields and their updates by server events: widgetstate.js
const view = $('#view');
let ui = null; // elements of the chat screen

const conn = new Conn(session, {
  onStatus: (s) => { st.net = s; if (s === 'expired') { session.clear(); if (identity) signIn(identity); else renderStart(); } renderNet(); },
  onAuth: resume,
  onEvent: event,
});

function me() { return session.user?.id; }

// ---------------------------------------------------------------- start
let anonOff = false; // the server answered 403: anonymous starts are off, a link is needed

function renderStart(error) {
  ui = null;
  $('#end').hidden = true;
  // Without a quick link the visitor starts anonymously (unless the server said no).
  const blocked = cfg.identity ? !session.token : anonOff && !quickToken();
  const err = h('div', { class: 'err' }, error || (blocked ? t(cfg.identity ? 'w.noid' : 'w.nolink') : ''));
  const form = h('form', { class: 'start' },
    h('p', {}, cfg.greeting || t('w.hello')),
    cfg.identity ? null : h('label', {}, t('w.name'), h('input', { name: 'name', maxlength: 64, autocomplete: 'name', required: true })),
    h('label', {}, t('w.phone'), h('input', { name: 'phone', type: 'tel', maxlength: 20, autocomplete: 'tel' })),
    cfg.topics.length ? h('label', {}, t('w.topic'), h('select', { name: 'topic' },
      h('option', { value: '' }, t('w.topic.any')), cfg.topics.map((x) => h('option', { value: x }, x)))) : null,
    h('label', {}, t('w.question'), h('textarea', { name: 'question', rows: 3, maxlength: 2000 })),
    err,
    h('button', { class: 'primary', type: 'submit', disabled: blocked }, t('w.start')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    form.querySelector('button').disabled = true;
    let anon = false;
    try {
      if (!cfg.identity && quickToken()) {
        const pair = await api(null, 'POST', '/auth/quick', { token: quickToken(), name: f.get('name').trim() || undefined });
        session.set(pair);
        sessionStorage.removeItem('sb.widget.quick');
      } else if (!cfg.identity) {
        anon = true;
        session.set(await api(null, 'POST', '/auth/anonymous', { name: f.get('name').trim() || undefined }));
      }
      let text = (f.get('question') || '').trim();
      const phone = (f.get('phone') || '').trim();
      if (phone) text = `${text}${text ? '\n' : ''}${t('w.phone.line', { p: phone })}`;
      sessionStorage.setItem('sb.widget.consult', JSON.stringify({ team: cfg.team, topic: f.get('topic') || undefined, text: text || undefined }));
      renderChat();
      conn.start();
    } catch (ex) {
      anonOff = anon && ex.status === 403;
      err.textContent = ex.status === 401 || anonOff ? t(cfg.identity ? 'w.noid' : 'w.nolink')
        : anon && ex.status === 429 ? t('w.busy') : t('err', { m: ex.message });
      form.querySelector('button').disabled = anonOff;
    }
  });
  view.replaceChildren(form);
}

// ---------------------------------------------------------------- identity
let identity = null; // {id, name, ts, sig} from the embedding page

/** Signs in the site's customer: reuses this tab's session of the same
 * customer, else exchanges the identity; a customer with history goes
 * straight to the chat, a new one gets the pre-chat form without a name. */
async function signIn(idn) {
  identity = idn;
  const ext = String(idn?.id ?? '');
  if (session.token && sessionStorage.getItem('sb.widget.ext') === ext) { renderChat(); conn.start(); return; }
  session.clear();
  try {
    session.set(await api(null, 'POST', '/auth/identity', idn));
    sessionStorage.setItem('sb.widget.ext', ext);
    const list = await api(session, 'GET', '/conversations?limit=20');
    if (list.items.some((c) => c.kind === 'service')) { renderChat(); conn.start(); } else renderStart();
  } catch (ex) {
    session.clear();
    renderStart(ex.status && ex.status < 500 ? t('w.noid') : t('err', { m: ex.message }));
  }
}

function awaitIdentity() {
  const late = setTimeout(() => renderStart(), 10000);
  addEventListener('message', (e) => {
    if (e.source !== parent || e.data?.type !== 'switchboard:identity' || identity) return;
    clearTimeout(late);
    signIn(e.data.identity);
  });
  parent.postMessage({ type: 'switchboard:ready' }, '*');
}

// ---------------------------------------------------------------- resume
/** After every auth: find the conversation, catch up, consult if asked, resend the outbox. */
async function resume(ok) {
  const open = openServiceConv(ok);
  if (open) setConv(open);
  else if (st.conv && st.conv.state !== 'closed') {
    // It closed while we were away.
    try { setConv(await api(session, 'GET', `/conversations/${st.conv.id}`)); } catch { /* keep */ }
  } else if (!st.conv) {
    // Reopened: show the newest conversation as history.
    const list = await api(session, 'GET', '/conversations?limit=20');
    const last = list.items.find((c) => c.kind === 'service');
    if (last) setConv(last);
  }
  const pendingConsult = sessionStorage.getItem('sb.widget.consult');
  if (pendingConsult && (!st.conv || st.conv.state === 'closed')) {
    const c = JSON.parse(pendingConsult);
    const r = await conn.request(frames.consult(c));
    sessionStorage.removeItem('sb.widget.consult');
    if (!st.conv || st.conv.id !== r.conv) setConv(consulted(r.conv));
  } else if (pendingConsult) sessionStorage.removeItem('sb.widget.consult');
  if (st.conv) {
    const cm = st.cm;
    if (!cm.loaded) await loadLatest(conn, cm, st.conv.last_seq);
    else await catchUp(conn, cm);
    if (!st.otherRead) {
      try {
        const members = await api(session, 'GET', `/conversations/${st.conv.id}/members`);
        for (const m of members) if (m.user !== me()) st.otherRead = Math.max(st.otherRead, m.last_read_seq);
      } catch { /* not fatal */ }
    }
    if (inLiveQueue(st.conv)) {
      // A repeated consult answers with a fresh `queue` event.
      conn.request(frames.consult()).catch(() => {});
    }
  }
  render();
  flush();
}

function setConv(info) {
  setWidgetConv(st, info);
  if (!ui) renderChat();
}

function flush() {
  outbox.flush(conn, (msg) => { if (st.cm && msg.conv === st.cm.conv) st.cm.add(msg); render(); },
    (it, e) => { st.notice = t('err', { m: e.message }); render(); });
  render();
}

// ---------------------------------------------------------------- events
function event(f) {
  const next = widgetEvent(st, f, me());
  if (!next) return; // unknown events are ignored
  if (next === 'typing') { renderTyping(); setTimeout(renderTyping, 5100); return; }
  if (next === 'message') watchGap(conn, st.cm, render);
  if (f.type === 'conversation' && !ui) renderChat();
  if (next === 'new-conversation') loadLatest(conn, st.cm, f.conv.last_seq).then(render, () => {});
  render();
}

// ---------------------------------------------------------------- chat UI
function renderChat() {
  const text = h('textarea', { rows: 1, maxlength: 8000, 'aria-label': 'message' });
  text.placeholder = t('w.placeholder');
  const file = h('input', { type: 'file', hidden: true, accept: 'image/png,image/jpeg,image/gif,image/webp,application/pdf,text/plain,application/zip,.docx,.xlsx,.pptx' });
  const emoji = emojiPicker((e) => { text.value += e; text.focus(); });
  ui = {
    queue: h('div', { class: 'queue', hidden: true }),
    notice: h('div', { class: 'notice', hidden: true }),
    msgs: h('div', { class: 'msgs', role: 'log' }),
    typing: h('div', { class: 'typing' }),
    preview: h('div', { class: 'preview', hidden: true }),
    bottom: h('div'),
    composer: h('div', { class: 'composer' },
      emoji,
      h('button', { class: 'ibtn', type: 'button', title: t('emoji'), onclick: () => { emoji.hidden = !emoji.hidden; } }, '😊'),
      h('button', { class: 'ibtn', type: 'button', title: t('attach'), onclick: () => file.click() }, '📎'),
      file, text,
      h('button', { class: 'send', type: 'button', onclick: () => sendText(text) }, t('send'))),
    text,
  };
  text.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); sendText(text); }
  });
  text.addEventListener('input', () => {
    if (st.conv && st.conv.state !== 'closed' && Date.now() - lastTyping > 3000) {
      lastTyping = Date.now();
      conn.send(frames.typing(st.conv.id));
    }
  });
  file.addEventListener('change', () => { if (file.files[0]) preview(file.files[0]); file.value = ''; });
  view.replaceChildren(ui.queue, ui.notice, ui.msgs, ui.typing, ui.preview, ui.bottom);
  render();
}

let lastTyping = 0;
function sendText(text) {
  const body = text.value.trim();
  if (!body || !st.conv || st.conv.state === 'closed') return;
  text.value = '';
  lastTyping = 0; // typing again after a send is news
  outbox.add(st.conv.id, textKind(body), body);
  flush();
}

function preview(f) {
  const isImg = f.type.startsWith('image/');
  const url = isImg ? URL.createObjectURL(f) : null;
  const err = h('span', { class: 'err' });
  const go = h('button', { class: 'send primary', type: 'button' }, t('send'));
  go.addEventListener('click', async () => {
    go.disabled = true;
    try {
      const fd = new FormData();
      fd.append('file', f, f.name);
      const up = await api(session, 'POST', '/uploads', fd);
      outbox.add(st.conv.id, fileKind(f.type), isImg ? '' : up.name, { attachment: up.id, name: up.name, size: up.size });
      ui.preview.hidden = true;
      flush();
    } catch (e) {
      err.textContent = t('upload.failed', { m: e.message });
      go.disabled = false;
    }
  });
  ui.preview.replaceChildren(isImg ? h('img', { src: url, alt: f.name }) : h('span', {}, '📄'),
    h('span', { class: 'name' }, `${f.name} (${fmtSize(f.size)})`), err, go,
    h('button', { type: 'button', class: 'ibtn', onclick: () => { ui.preview.hidden = true; } }, '✕'));
  ui.preview.hidden = false;
}

function render() {
  renderNet();
  if (!ui) return;
  const c = st.conv;
  $('#end').hidden = !c || c.state === 'closed';
  ui.queue.hidden = !st.queue && !(c && c.state === 'queued' && !c.pending);
  ui.queue.textContent = queueText(st.queue);
  if (st.queue) ui.queue.dataset.position = st.queue.position;
  ui.notice.hidden = !st.notice || (c && c.state === 'active');
  ui.notice.textContent = st.notice;
  if (st.cm) {
    renderMessages(ui.msgs, {
      cm: st.cm, pending: outbox.forConv(st.cm.conv), me: me(), readSeq: st.otherRead, session,
      lang: lang(), onOlder: () => loadOlder(conn, st.cm).then(render),
    });
    markRead();
  }
  renderTyping();
  // Only when it changes: re-inserting the composer (or the rating form) on
  // every event would blur it, and a key pressed meanwhile would be lost.
  const mode = c && c.state === 'closed' ? `closed|${st.rating}` : 'composer';
  if (ui.bottomMode !== mode) {
    ui.bottomMode = mode;
    ui.bottom.replaceChildren(mode === 'composer' ? ui.composer : st.rating === 'ask' ? rateBox() : ended());
  }
}

function renderTyping() {
  if (ui) ui.typing.textContent = Date.now() < st.typingUntil ? t('typing') : '';
}

function renderNet() {
  const n = $('#net');
  n.textContent = st.net === 'online' ? '' : st.net === 'offline' ? t('net.offline') : st.net === 'connecting' && session.token ? t('net.connecting') : '';
  n.dataset.state = st.net;
}

function markRead() {
  if (!st.cm || document.visibilityState !== 'visible' || !conn.online) return;
  const last = st.cm.contig;
  if (last > st.myRead) {
    st.myRead = last;
    conn.send(frames.read(st.cm.conv, last));
  }
}
document.addEventListener('visibilitychange', markRead);

function rateBox() {
  let score = 0;
  const stars = [1, 2, 3, 4, 5].map((n) => h('button', { type: 'button', class: 'star', 'aria-label': String(n), onclick: () => { score = n; stars.forEach((s, i) => s.classList.toggle('on', i < n)); go.disabled = false; } }, '★'));
  const comment = h('textarea', { rows: 2, maxlength: 1000 });
  comment.placeholder = t('w.rate.comment');
  const err = h('div', { class: 'err' });
  const go = h('button', { class: 'primary', type: 'button', disabled: true }, t('w.rate.submit'));
  go.addEventListener('click', async () => {
    go.disabled = true;
    try {
      await conn.request(frames.rate(st.conv.id, score, comment.value.trim()));
      st.rating = 'done';
      render();
    } catch (e) {
      if (e.code === 'conflict') { st.rating = 'done'; render(); return; }
      err.textContent = t('err', { m: e.message });
      go.disabled = false;
    }
  });
  return h('div', { class: 'rate' }, h('strong', {}, t('w.rate.title')), h('div', { class: 'stars' }, stars), comment, err, go);
}

function ended() {
  return h('div', { class: 'ended' },
    h('div', {}, st.rating === 'done' ? t('w.rate.thanks') : t('w.ended')),
    h('button', { class: 'primary', type: 'button', onclick: newChat }, t('w.new')));
}

async function newChat() {
  try {
    const r = await conn.request(frames.consult({ team: cfg.team }));
    setConv(consulted(r.conv));
    st.cm.loaded = true;
    render();
  } catch (e) { st.notice = t('err', { m: e.message }); render(); }
}

// ---------------------------------------------------------------- header
$('#end').addEventListener('click', () => {
  if (st.conv) conn.request(frames.close(st.conv.id)).catch((e) => { st.notice = t('err', { m: e.message }); render(); });
});
$('#lang').addEventListener('click', () => {
  setLang(lang() === 'en' ? 'zh-CN' : 'en');
  $('#lang').textContent = t('lang.switch');
  if (ui) renderChat(); else if (view.querySelector('form.start')) renderStart();
});
if (cfg.embed) {
  $('#hide').hidden = false;
  $('#hide').addEventListener('click', () => parent.postMessage({ type: 'switchboard:hide' }, '*'));
}

applyStatic();
$('#lang').textContent = t('lang.switch');
if (cfg.identity) awaitIdentity();
else if (session.token) { renderChat(); conn.start(); } else renderStart();
setInterval(renderTyping, 1000);
