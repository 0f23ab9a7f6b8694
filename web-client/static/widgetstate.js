// What the widget keeps from the server's events (protocol/README.md, "Server
// events") and the queue line it shows from them. No DOM here, so that
// tests/fixtures.test.mjs runs this very code on protocol/fixtures/server/ in
// Node (the console's and dashboard's counterparts are in staff.js).
import { t, add } from '/static/i18n.js';
import { ConvMessages } from '/static/chat.js';

add({
  'w.queue': ['正在为您排队：前面还有 {n} 位，预计等待 {eta}', 'You are in the queue: {n} ahead of you, about {eta} to wait'],
  'w.queue.next': ['马上轮到您了，预计等待 {eta}', 'You are next, about {eta} to wait'],
  'w.min': ['{n} 分钟', '{n} min'],
  'w.lessmin': ['不到 1 分钟', 'under a minute'],
  'w.waiting': ['正在为您接通客服…', 'Finding an agent for you…'],
  'w.left': ['暂时没有客服在线，您可以留言，客服上线后会尽快回复。', 'No agent is available right now; leave a message and we will reply as soon as we are back.'],
});

/** Waiting in the live queue: the only state in which `queue` events count. */
export const inLiveQueue = (c) => c.state === 'queued' && !c.offered_to && !c.pending;

export function widgetState() {
  return {
    conv: null, // ConversationInfo of the current conversation
    cm: null, // its ConvMessages
    queue: null, // {position, eta_s}
    otherRead: 0,
    myRead: 0,
    typingUntil: 0,
    rating: null, // null | 'ask' | 'done'
    notice: '',
    net: 'connecting',
  };
}

/** The conversation the widget resumes after `auth`: the open service one. */
export const openServiceConv = (ok) => ok.conversations.find((c) => c.kind === 'service' && c.state !== 'closed');

/** The conversation a `consult` reply names, until its `conversation` event tells more. */
export const consulted = (id) => ({ id, kind: 'service', state: 'queued', last_seq: 0, last_read_seq: 0 });

/** Makes `info` the widget's conversation: a new one starts afresh, the same one keeps its read mark. */
export function setWidgetConv(st, info) {
  if (!st.conv || st.conv.id !== info.id) {
    st.cm = new ConvMessages(info.id);
    st.queue = null;
    st.otherRead = 0;
    st.myRead = info.last_read_seq || 0;
    st.rating = null;
    st.notice = '';
    st.conv = info;
  } else {
    st.conv = { ...info, last_read_seq: st.conv.last_read_seq };
  }
  if (!inLiveQueue(st.conv)) st.queue = null;
  if (st.conv.pending) st.notice = t('w.left');
}

/**
 * A server event on the widget's state (`me`: the customer's user id).
 * Unknown events (`ticket`, `sla`, …) change nothing. Returns 'render', 'message' (render and watch for a gap), 'conversation'
 * (the same one changed), 'new-conversation' (load its messages), 'typing'
 * (the indicator only) or null.
 */
export function widgetEvent(st, f, me, now = Date.now()) {
  const ours = st.conv && f.conv === st.conv.id;
  switch (f.type) {
    case 'message':
      if (!st.cm || f.msg.conv !== st.cm.conv) return null;
      st.cm.add(f.msg);
      if (f.msg.sender.id !== me) st.typingUntil = 0;
      return 'message';
    case 'conversation': {
      if (f.conv.kind !== 'service') return null;
      // Another conversation replaces the current one only once that one is closed.
      if (st.conv && f.conv.id !== st.conv.id && st.conv.state !== 'closed') return null;
      const fresh = !st.conv || st.conv.id !== f.conv.id;
      setWidgetConv(st, f.conv);
      return fresh ? 'new-conversation' : 'conversation';
    }
    case 'queue':
      // It may arrive after the conversation was offered, served or closed.
      if (!ours || !inLiveQueue(st.conv)) return null;
      st.queue = { position: f.position, eta_s: f.eta_s };
      return 'render';
    case 'receipt':
      if (!ours) return null;
      if (f.user === me) st.myRead = Math.max(st.myRead, f.seq);
      else st.otherRead = Math.max(st.otherRead, f.seq);
      return 'render';
    case 'typing':
      if (!ours || f.user === me) return null;
      st.typingUntil = now + 5000;
      return 'typing';
    case 'recalled':
      return st.cm && f.conv === st.cm.conv && st.cm.recall(f.seq) ? 'render' : null;
    case 'rate_request':
      if (!ours || st.rating === 'done') return null;
      st.rating = 'ask';
      return 'render';
    case 'notice':
      st.notice = f.code === 'left_message' ? t('w.left') : f.text;
      return 'render';
    default: return null;
  }
}

const fmtEta = (s) => (s < 60 ? t('w.lessmin') : t('w.min', { n: Math.ceil(s / 60) }));

/** The widget's queue line: how many are ahead (position 1 is next) and the estimated wait. */
export function queueText(queue) {
  if (!queue) return t('w.waiting');
  const ahead = queue.position - 1;
  return ahead > 0 ? t('w.queue', { n: ahead, eta: fmtEta(queue.eta_s) }) : t('w.queue.next', { eta: fmtEta(queue.eta_s) });
}
