// The supervisor dashboard (/dashboard): `watch` "all" → live queues with
// waiting times, the agent board, manual / batch / re-assignment, and charts
// of today's volume, waits and first responses (uPlot, vendored).
import { Conn, api, frames } from '/static/sb.js';
import { t, add } from '/static/i18n.js';
import { h, $, fmtDur } from '/static/ui.js';
import { staffPage, toast, staffNames, applyWatch, boardEvent, loadText } from '/static/staff.js';

add({
  'd.title': ['主管看板', 'Supervisor dashboard'],
  'd.queues': ['实时队列', 'Live queues'],
  'd.empty': ['无人排队', 'Nobody waiting'],
  'd.customer': ['客户', 'Customer'],
  'd.waited': ['已等待', 'Waiting'],
  'd.pos': ['位置', 'Pos.'],
  'd.assign': ['分配', 'Assign'],
  'd.batch': ['批量分配所选', 'Assign selected'],
  'd.agents': ['坐席状态', 'Agents'],
  'd.agent': ['坐席', 'Agent'],
  'd.status': ['状态', 'Status'],
  'd.load': ['负载/上限', 'Load/capacity'],
  'd.since': ['状态持续', 'In status'],
  'd.active': ['进行中的会话', 'Active conversations'],
  'd.conv': ['会话', 'Conversation'],
  'd.team': ['团队', 'Team'],
  'd.reassign': ['改派', 'Reassign'],
  'd.charts': ['今日统计', 'Today'],
  'd.volume': ['咨询量（每小时）', 'Conversations per hour'],
  'd.waits': ['平均等待（秒）', 'Average wait (s)'],
  'd.frt': ['平均首次响应（秒）', 'Average first response (s)'],
  'd.refresh': ['刷新', 'Refresh'],
  'd.done': ['已分配 {n} 个', '{n} assigned'],
});

let session, conn, names = new Map(), teams = new Map();
const queues = new Map(); // team -> waiting[]
const agents = new Map(); // user -> AgentState
const active = new Map(); // conv -> {conv, team, agent, since}
const board = { queues, agents, active }; // what the watch snapshot and deltas update (staff.js boardEvent)
const picked = new Set();
let chartsLoaded = false;

session = staffPage('sb.dashboard', ['supervisor', 'admin'], start, () => rerender());

async function start(s) {
  session = s; // on a reload ready() runs inside staffPage(), before its return value is assigned
  try {
    names = await staffNames(session);
    const tl = await api(session, 'GET', '/teams');
    for (const x of tl.items) teams.set(x.id, x);
  } catch (e) { toast(t('err', { m: e.message }), 'error'); }
  conn = new Conn(session, {
    onStatus: (s) => { $('#net').textContent = s === 'online' || s === 'expired' ? '' : t(`net.${s}`); if (s === 'expired') { session.clear(); location.reload(); } },
    onAuth: async () => {
      applyWatch(board, await conn.request(frames.watch('all')));
      await loadActive();
      render();
      if (!chartsLoaded) { chartsLoaded = true; loadCharts(); }
    },
    onEvent,
  });
  conn.start();
  setInterval(renderTimes, 1000);
}

function onEvent(f) {
  if (boardEvent(board, f)) render();
}

/** Active conversations: today's assignment history, checked one by one. */
async function loadActive() {
  const events = await todaysEvents();
  const latest = new Map();
  for (const ev of events) if (!latest.has(ev.conv) && ev.agent) latest.set(ev.conv, ev);
  const infos = await Promise.all([...latest.keys()].slice(0, 100).map((id) => api(session, 'GET', `/conversations/${id}`).catch(() => null)));
  active.clear();
  for (const c of infos) {
    if (c && c.state === 'active' && c.agent) active.set(c.id, { conv: c.id, team: c.team, agent: c.agent, since: latest.get(c.id).at });
  }
}

async function todaysEvents() {
  const midnight = new Date(); midnight.setHours(0, 0, 0, 0);
  const out = [];
  let cursor = '';
  for (let i = 0; i < 10; i++) {
    const p = await api(session, 'GET', `/assignments?limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    for (const ev of p.items) { if (ev.at < midnight.getTime()) return out; out.push(ev); }
    if (!p.next_cursor) break;
    cursor = p.next_cursor;
  }
  return out;
}

const agentName = (id) => names.get(id)?.name || id;
const teamName = (id) => teams.get(id)?.name || id || '—';

// Rendering updates the page in place: rows and their controls are kept by
// key, so a live update never resets (or closes) a dropdown, a checkbox or a
// selection the supervisor is using.
let cache = new Map(); // key -> element
let used = new Set();
function keep(key, make) {
  let el = cache.get(key);
  if (!el) { el = make(); cache.set(key, el); }
  used.add(key);
  return el;
}
/** Makes parent's element children exactly `nodes`, moving only what must move. */
function reconcile(parent, nodes) {
  const want = new Set(nodes);
  for (const el of [...parent.children]) if (!want.has(el)) el.remove();
  nodes.forEach((n, i) => { const cur = parent.children[i]; if (cur !== n) parent.insertBefore(n, cur || null); });
}
const setText = (el, text) => { if (el.textContent !== String(text)) el.textContent = text; };

/** A select of agents; syncAgents() refreshes its options in place, keeping the chosen value. */
function agentSelect(exclude) {
  const s = h('select', { class: 'agent-pick' });
  s.dataset.exclude = exclude || '';
  syncAgents(s);
  return s;
}
function syncAgents(s) {
  const want = [['', '—'], ...[...agents.values()].filter((a) => a.user !== s.dataset.exclude)
    .map((a) => [a.user, `${agentName(a.user)} (${loadText(a)})`])];
  const value = s.value;
  want.forEach(([v, text], i) => {
    let o = s.options[i];
    if (!o) { o = h('option', { value: v }); s.append(o); }
    if (o.value !== v) o.value = v;
    setText(o, text);
  });
  while (s.options.length > want.length) s.options[s.options.length - 1].remove();
  if (s.value !== value && want.some(([v]) => v === value)) s.value = value;
}

async function assign(conv, agent) {
  if (!agent) return;
  try { await conn.request(frames.assign(conv, agent)); } catch (e) { toast(t('err', { m: e.message }), 'error'); }
}

async function batch(agent) {
  if (!agent || !picked.size) return;
  try {
    const r = await api(session, 'POST', '/assignments', { items: [...picked].map((conv) => ({ conv, agent })) });
    picked.clear();
    const ok = r.results.filter((x) => x.ok).length;
    toast(t('d.done', { n: ok }));
    for (const x of r.results) if (!x.ok) toast(`${x.conv}: ${x.message}`, 'error');
  } catch (e) { toast(t('err', { m: e.message }), 'error'); }
  render();
}

const chartBox = h('div', { class: 'charts' });
function rerender() { cache = new Map(); $('#grid').replaceChildren(); render(); }

function queueRow(w) {
  const row = keep(`q:${w.conv}`, () => {
    const s = agentSelect();
    const cb = h('input', { type: 'checkbox', onchange: (e) => { if (e.target.checked) picked.add(w.conv); else picked.delete(w.conv); } });
    return h('tr', { dataset: { conv: w.conv } }, h('td', {}, cb), h('td', { class: 'pos' }), h('td', {}, w.customer.slice(-8)),
      h('td', { class: 'since', dataset: { since: w.since } }, fmtDur((Date.now() - w.since) / 1000)),
      h('td', { class: 'inline' }, s, h('button', { class: 'ghost assign', type: 'button', onclick: () => assign(w.conv, s.value) }, t('d.assign'))));
  });
  setText(row.querySelector('.pos'), w.position);
  row.querySelector('input[type=checkbox]').checked = picked.has(w.conv);
  syncAgents(row.querySelector('select'));
  return row;
}

function queueCard(team, waiting) {
  const card = keep(`qc:${team}`, () => h('div', { class: 'card queue', dataset: { team } }, h('h3'),
    h('table', {}, h('tr', {}, h('th', {}, ''), h('th', {}, t('d.pos')), h('th', {}, t('d.customer')), h('th', {}, t('d.waited')), h('th', {}, t('d.assign')))),
    h('div', { class: 'muted' }, t('d.empty'))));
  setText(card.querySelector('h3'), `${teamName(team)} · ${waiting.length}`);
  const [head, table, empty] = card._parts || (card._parts = [...card.children]);
  reconcile(table, [table.firstElementChild, ...waiting.map(queueRow)]);
  reconcile(card, [head, waiting.length ? table : empty]);
  return card;
}

function render() {
  const grid = $('#grid');
  used = new Set();
  const top = keep('batch', () => {
    const batchSel = agentSelect();
    batchSel.id = 'batch-agent';
    return h('div', { class: 'card wide' }, h('h3', {}, t('d.queues')),
      h('div', { class: 'inline' }, batchSel, h('button', { class: 'primary', type: 'button', id: 'batch', onclick: () => batch(batchSel.value) }, t('d.batch'))));
  });
  syncAgents(top.querySelector('select'));
  const queueCards = [...queues.entries()].map(([team, waiting]) => queueCard(team, waiting));

  const agentsCard = keep('agents', () => h('div', { class: 'card', id: 'agents' }, h('h3', {}, t('d.agents')),
    h('table', {}, h('tr', {}, h('th', {}, t('d.agent')), h('th', {}, t('d.status')), h('th', {}, t('d.load')), h('th', {}, t('d.since'))))));
  const at = agentsCard.querySelector('table');
  reconcile(at, [at.firstElementChild, ...[...agents.values()].sort((a, b) => agentName(a.user).localeCompare(agentName(b.user))).map((a) => {
    const row = keep(`a:${a.user}`, () => h('tr', { dataset: { user: a.user } }, h('td', {}, agentName(a.user)),
      h('td', { class: 'status' }), h('td', { class: 'load' }), h('td', { class: 'since' })));
    const st = row.querySelector('.status');
    if (st.dataset.status !== a.status) { st.dataset.status = a.status; st.replaceChildren(h('span', { class: `dot ${a.status}` }), t(`st.${a.status}`)); }
    setText(row.querySelector('.load'), loadText(a));
    const since = row.querySelector('.since');
    since.dataset.since = a.since || 0;
    setText(since, a.since ? fmtDur((Date.now() - a.since) / 1000) : '—');
    return row;
  })]);

  const activeCard = keep('active', () => h('div', { class: 'card', id: 'active' }, h('h3', {}, t('d.active')),
    h('table', {}, h('tr', {}, h('th', {}, t('d.conv')), h('th', {}, t('d.team')), h('th', {}, t('d.agent')), h('th', {}, t('d.since')), h('th', {}, t('d.reassign'))))));
  const act = activeCard.querySelector('table');
  reconcile(act, [act.firstElementChild, ...[...active.values()].sort((a, b) => a.since - b.since).map((c) => {
    // A new agent makes a new row (its select excludes the agent).
    const row = keep(`c:${c.conv}:${c.agent}`, () => {
      const s = agentSelect(c.agent);
      return h('tr', { dataset: { conv: c.conv, agent: c.agent } }, h('td', {}, c.conv.slice(-8)), h('td', {}, teamName(c.team)),
        h('td', { class: 'agent' }, agentName(c.agent)), h('td', { class: 'since', dataset: { since: c.since } }, fmtDur((Date.now() - c.since) / 1000)),
        h('td', { class: 'inline' }, s, h('button', { class: 'ghost reassign', type: 'button', onclick: () => assign(c.conv, s.value) }, t('d.reassign'))));
    });
    syncAgents(row.querySelector('select'));
    return row;
  })]);

  const charts = keep('charts', () => h('div', { class: 'card wide' }, h('h3', { class: 'inline' }, t('d.charts'), h('button', { class: 'ghost', type: 'button', onclick: loadCharts }, t('d.refresh'))), chartBox));
  reconcile(grid, [top, ...queueCards, agentsCard, activeCard, charts]);
  for (const k of [...cache.keys()]) if (!used.has(k)) cache.delete(k);
}

function renderTimes() {
  for (const el of document.querySelectorAll('td.since')) {
    const s = Number(el.dataset.since);
    if (s) {
      const secs = (Date.now() - s) / 1000;
      el.textContent = fmtDur(secs);
      el.classList.toggle('wait-long', el.closest('.queue') != null && secs > 120);
    }
  }
}

/** Today's figures per hour, from the conversations' histories and first messages. */
async function loadCharts() {
  let convIds;
  try { convIds = [...new Set((await todaysEvents()).map((ev) => ev.conv))].slice(0, 40); } catch { return; }
  const hours = Array.from({ length: 24 }, (_, i) => i);
  const midnight = new Date(); midnight.setHours(0, 0, 0, 0);
  const xs = hours.map((i) => midnight.getTime() / 1000 + i * 3600);
  const zeros = () => hours.map(() => 0);
  const volume = zeros(), waitSum = zeros(), waitN = zeros(), frtSum = zeros(), frtN = zeros();
  await Promise.all(convIds.map(async (conv) => {
    try {
      const evs = (await api(session, 'GET', `/conversations/${conv}/events`)).items;
      const q = evs.find((e) => e.kind === 'queued' || e.kind === 'left_message');
      const served = evs.find((e) => e.kind === 'assigned' || e.kind === 'accepted');
      if (!q || q.at < midnight.getTime()) return;
      const hr = new Date(q.at).getHours();
      volume[hr]++;
      if (!served) return;
      waitSum[hr] += (served.at - q.at) / 1000; waitN[hr]++;
      if (!conn?.online) return;
      const r = await conn.request(frames.syncAfter(conv, 0, 100));
      const first = r.messages.find((m) => m.ts >= served.at && m.sender.role !== 'customer' && m.kind !== 'system');
      if (first) { frtSum[hr] += (first.ts - served.at) / 1000; frtN[hr]++; }
    } catch { /* skip this one */ }
  }));
  const avg = (s, n) => s.map((v, i) => (n[i] ? Math.round(v / n[i]) : null));
  const width = Math.max(300, Math.min(520, (chartBox.clientWidth || 900) / 3 - 16));
  const mk = (title, data, color) => {
    const el = h('div', { class: 'chart' });
    // eslint-disable-next-line no-undef
    new uPlot({ title, width, height: 180, series: [{}, { label: title, stroke: color, fill: `${color}22`, spanGaps: true }], axes: [{}, {}] }, [xs, data], el);
    return el;
  };
  chartBox.replaceChildren(mk(t('d.volume'), volume, '#1a73e8'), mk(t('d.waits'), avg(waitSum, waitN), '#ef6c00'), mk(t('d.frt'), avg(frtSum, frtN), '#2e7d32'));
}
