// What the staff pages share: the login screen, the header (language switch,
// user, log out) and the session.
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
