// zh-CN by default, English on request (?lang=en, or the switch, remembered).
const dicts = { 'zh-CN': {}, en: {} };
let current = (() => {
  // globalThis: importable outside a page too (tests/fixtures.test.mjs runs in Node).
  const q = new URLSearchParams(globalThis.location?.search).get('lang');
  let saved = null;
  try { saved = localStorage.getItem('sb.lang'); } catch { /* storage blocked */ }
  const l = q || saved || 'zh-CN';
  return l.startsWith('en') ? 'en' : 'zh-CN';
})();

/** Adds strings: add({key: ['中文', 'English']}). */
export function add(table) {
  for (const [k, [zh, en]] of Object.entries(table)) { dicts['zh-CN'][k] = zh; dicts.en[k] = en; }
}

export const lang = () => current;

/** t('key', {n: 3}) fills {n}. Unknown keys show as themselves. */
export function t(key, vars) {
  let s = dicts[current][key] ?? dicts['zh-CN'][key] ?? key;
  if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? vars[k] : m));
  return s;
}

export function setLang(l) {
  current = l;
  try { localStorage.setItem('sb.lang', l); } catch { /* ignore */ }
  applyStatic();
}

/** Fills elements marked data-i18n (text), data-i18n-ph (placeholder), data-i18n-title. */
export function applyStatic(root = document) {
  document.documentElement.lang = current;
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-ph]')) el.placeholder = t(el.dataset.i18nPh);
  for (const el of root.querySelectorAll('[data-i18n-title]')) el.title = t(el.dataset.i18nTitle);
}

// The server writes its system messages in Chinese (protocol/README.md,
// "System messages"); English viewers get them translated.
const SYSTEM = [
  [/^客服 (.+) 为您服务$/, 'Agent $1 is now serving you'],
  [/^主管已将会话分配给客服 (.+)$/, 'A supervisor assigned the conversation to agent $1'],
  [/^会话已转接给客服 (.+)$/, 'The conversation was transferred to agent $1'],
  [/^会话已转接至「(.+)」，请稍候$/, 'The conversation was transferred to "$1", please wait'],
  [/^客户已结束会话$/, 'The customer ended the conversation'],
  [/^会话已结束$/, 'The conversation has ended'],
  [/^会话因长时间无消息已自动结束$/, 'The conversation was closed after a long silence'],
];
export function systemText(body) {
  if (current !== 'en') return body;
  for (const [re, en] of SYSTEM) if (re.test(body)) return body.replace(re, en);
  return body;
}

add({
  'net.connecting': ['正在连接…', 'Connecting…'],
  'net.offline': ['网络已断开，正在重连；消息将在恢复后发出', 'Offline, reconnecting; messages will be sent when back'],
  'net.online': ['已连接', 'Connected'],
  'msg.sending': ['发送中', 'Sending'],
  'msg.failed': ['发送失败', 'Not sent'],
  'msg.read': ['已读', 'Read'],
  'msg.unread': ['未读', 'Unread'],
  'msg.recalled': ['消息已撤回', 'Message recalled'],
  'msg.image': ['[图片]', '[Image]'],
  'msg.file': ['[文件]', '[File]'],
  'msg.download': ['下载', 'Download'],
  'typing': ['对方正在输入…', 'Typing…'],
  'send': ['发送', 'Send'],
  'cancel': ['取消', 'Cancel'],
  'emoji': ['表情', 'Emoji'],
  'attach': ['图片/文件', 'Image/file'],
  'older': ['查看更早的消息', 'Earlier messages'],
  'lang.switch': ['English', '中文'],
  'err': ['出错了：{m}', 'Something went wrong: {m}'],
  'upload.failed': ['上传失败：{m}', 'Upload failed: {m}'],
});
