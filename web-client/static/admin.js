// Administration (/admin): teams (create, strategy, members) and staff
// (create, skills, max concurrency).
import { api } from '/static/sb.js';
import { t, add } from '/static/i18n.js';
import { h, $ } from '/static/ui.js';
import { staffPage, toast } from '/static/staff.js';

add({
  'a.title': ['系统管理', 'Administration'],
  'a.teams': ['团队', 'Teams'],
  'a.staff': ['员工', 'Staff'],
  'a.name': ['名称', 'Name'],
  'a.strategy': ['分配策略', 'Strategy'],
  'a.maxc': ['最大并发', 'Max concurrency'],
  'a.members': ['成员', 'Members'],
  'a.add': ['添加', 'Add'],
  'a.create': ['创建', 'Create'],
  'a.username': ['用户名', 'Username'],
  'a.password': ['初始密码', 'Password'],
  'a.role': ['角色', 'Role'],
  'a.skills': ['技能（名称:等级，逗号分隔）', 'Skills (name:level, comma separated)'],
  'a.save': ['保存', 'Save'],
  'a.saved': ['已保存', 'Saved'],
  's.round_robin': ['轮询', 'Round robin'],
  's.least_load': ['最少负载', 'Least load'],
  's.skill': ['技能匹配', 'Skill'],
  's.weighted': ['加权', 'Weighted'],
  'r.agent': ['坐席', 'Agent'], 'r.supervisor': ['主管', 'Supervisor'], 'r.admin': ['管理员', 'Admin'],
});

const STRATEGIES = ['round_robin', 'least_load', 'skill', 'weighted'];
let session, teams = [], staff = [];
// What the admin has typed or picked and not saved yet, by field key
// ('u:<user>:skills', 'nu:username', ...). Every save reloads and redraws the
// page from the server; a field being edited meanwhile keeps its text (and
// its focus), so that the next Save sends what the admin typed, not the
// stale value the redraw would have put back.
const drafts = new Map();
let loads = 0; // the newest load(); an older one's answer is not drawn
session = staffPage('sb.admin', ['admin'], load, render);

const fail = (e) => toast(t('err', { m: e.message }), 'error');
const skillsText = (sk) => sk.map((s) => `${s.name}:${s.level}`).join(', ');
/** Binds `el` to field `key`: shows the draft if there is one, else `saved`. */
function field(key, el, saved) {
  el.dataset.key = key;
  el.value = drafts.has(key) ? drafts.get(key) : (saved ?? '');
  el.addEventListener('input', () => drafts.set(key, el.value));
  return el;
}
/** The values of some fields as they are now (key → value), to send. */
const current = (...els) => Object.fromEntries(els.map((el) => [el.dataset.key, el.value]));
/** After a save of `sent`: drops the drafts that are now saved (not those typed on since). */
const settle = (sent) => { for (const [k, v] of Object.entries(sent)) if (drafts.get(k) === v) drafts.delete(k); };
const parseSkills = (txt) => txt.split(/[,，]/).map((s) => s.trim()).filter(Boolean).map((s) => {
  const [name, level] = s.split(/[:：]/);
  return { name: name.trim(), level: Number(level) || 1 };
});

async function load(s) {
  if (s) session = s; // on a reload ready() runs inside staffPage(), before its return value is assigned
  const mine = ++loads;
  try {
    const tms = (await api(session, 'GET', '/teams')).items;
    const st = (await api(session, 'GET', '/users?limit=200')).items.filter((u) => u.role !== 'customer');
    if (mine !== loads) return; // a later save's load reads newer data
    teams = tms;
    staff = st;
  } catch (e) {
    if (mine !== loads) return;
    fail(e);
  }
  render();
}

function render() {
  const agents = staff.filter((u) => u.role === 'agent' || u.role === 'supervisor');
  const teamRows = teams.map((tm) => {
    const strat = field(`t:${tm.id}:strategy`, h('select', { class: 'strategy', onchange: () => patchTeam(tm.id, { strategy: strat.value }, current(strat)) },
      STRATEGIES.map((s) => h('option', { value: s }, t(`s.${s}`)))), tm.strategy);
    const maxc = field(`t:${tm.id}:maxc`, h('input', { type: 'number', min: 1, max: 100, class: 'maxc', onchange: () => patchTeam(tm.id, { max_concurrency: Number(maxc.value) }, current(maxc)) }), tm.max_concurrency);
    const pick = h('select', {}, agents.filter((u) => !tm.members.some((m) => m.user === u.id)).map((u) => h('option', { value: u.id }, u.name)));
    return h('tr', { dataset: { team: tm.id } }, h('td', {}, tm.name), h('td', {}, strat), h('td', {}, maxc),
      h('td', {}, tm.members.map((m) => h('span', { class: 'inline' }, m.name,
        h('button', { class: 'ghost', type: 'button', title: 'remove', onclick: () => removeMember(tm.id, m.user) }, '×'))),
      h('span', { class: 'inline' }, pick, h('button', { class: 'ghost', type: 'button', onclick: () => pick.value && addMember(tm.id, pick.value) }, t('a.add')))));
  });
  const newTeam = h('form', { class: 'inline' }, field('nt:name', h('input', { name: 'name', required: true, placeholder: t('a.name') })),
    field('nt:strategy', h('select', { name: 'strategy' }, STRATEGIES.map((s) => h('option', { value: s }, t(`s.${s}`)))), STRATEGIES[0]),
    field('nt:maxc', h('input', { name: 'max_concurrency', type: 'number', min: 1, max: 100, placeholder: t('a.maxc') })),
    h('button', { class: 'primary', type: 'submit' }, t('a.create')));
  newTeam.addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = new FormData(newTeam);
    const sent = current(...newTeam.querySelectorAll('[data-key]'));
    const body = { name: f.get('name'), strategy: f.get('strategy') };
    if (f.get('max_concurrency')) body.max_concurrency = Number(f.get('max_concurrency'));
    try { await api(session, 'POST', '/teams', body); settle(sent); await load(); } catch (ex) { fail(ex); }
  });
  const staffRows = staff.map((u) => {
    const sk = field(`u:${u.id}:skills`, h('input', { class: 'skills' }), skillsText(u.skills));
    const mc = field(`u:${u.id}:maxc`, h('input', { type: 'number', min: 1, max: 100, class: 'maxc' }), u.max_concurrency);
    return h('tr', { dataset: { user: u.id } }, h('td', {}, u.username || ''), h('td', {}, u.name), h('td', {}, t(`r.${u.role}`)),
      h('td', {}, sk), h('td', {}, mc),
      h('td', {}, h('button', { class: 'ghost', type: 'button', onclick: () => patchUser(u.id, { skills: parseSkills(sk.value), max_concurrency: mc.value ? Number(mc.value) : null }, current(sk, mc)) }, t('a.save'))));
  });
  const newUser = h('form', { class: 'inline' },
    field('nu:username', h('input', { name: 'username', required: true, placeholder: t('a.username') })),
    field('nu:password', h('input', { name: 'password', type: 'password', required: true, minlength: 8, placeholder: t('a.password') })),
    field('nu:name', h('input', { name: 'name', placeholder: t('a.name') })),
    field('nu:role', h('select', { name: 'role' }, ['agent', 'supervisor', 'admin'].map((r) => h('option', { value: r }, t(`r.${r}`)))), 'agent'),
    field('nu:skills', h('input', { name: 'skills', placeholder: t('a.skills') })),
    field('nu:maxc', h('input', { name: 'max_concurrency', type: 'number', min: 1, max: 100, placeholder: t('a.maxc') })),
    h('button', { class: 'primary', type: 'submit' }, t('a.create')));
  newUser.addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = new FormData(newUser);
    const sent = current(...newUser.querySelectorAll('[data-key]'));
    const body = { username: f.get('username'), password: f.get('password'), name: f.get('name') || undefined, role: f.get('role'), skills: parseSkills(f.get('skills')) };
    if (f.get('max_concurrency')) body.max_concurrency = Number(f.get('max_concurrency'));
    try { await api(session, 'POST', '/users', body); settle(sent); await load(); } catch (ex) { fail(ex); }
  });
  // The redraw replaces every field: the one being edited gets its focus and caret back.
  const was = document.activeElement;
  const focused = was?.dataset?.key;
  const caret = focused && [was.selectionStart, was.selectionEnd];
  $('#grid').replaceChildren(
    h('div', { class: 'card wide', id: 'teams' }, h('h3', {}, t('a.teams')),
      h('table', {}, h('tr', {}, h('th', {}, t('a.name')), h('th', {}, t('a.strategy')), h('th', {}, t('a.maxc')), h('th', {}, t('a.members'))), teamRows), newTeam),
    h('div', { class: 'card wide', id: 'staff' }, h('h3', {}, t('a.staff')),
      h('table', {}, h('tr', {}, h('th', {}, t('a.username')), h('th', {}, t('a.name')), h('th', {}, t('a.role')), h('th', {}, t('a.skills')), h('th', {}, t('a.maxc')), h('th', {}, '')), staffRows), newUser));
  const again = focused && $(`#grid [data-key="${CSS.escape(focused)}"]`);
  if (again) {
    again.focus();
    try { if (caret[0] != null) again.setSelectionRange(...caret); } catch { /* no caret in a number input or a select */ }
  }
}

async function patchTeam(id, body, sent) {
  try { await api(session, 'PATCH', `/teams/${id}`, body); settle(sent); toast(t('a.saved')); await load(); } catch (e) { fail(e); }
}
async function patchUser(id, body, sent) {
  try { await api(session, 'PATCH', `/users/${id}`, body); settle(sent); toast(t('a.saved')); await load(); } catch (e) { fail(e); }
}
async function addMember(team, user) {
  try { await api(session, 'POST', `/teams/${team}/members`, { user }); await load(); } catch (e) { fail(e); }
}
async function removeMember(team, user) {
  try { await api(session, 'DELETE', `/teams/${team}/members/${user}`); await load(); } catch (e) { fail(e); }
}
