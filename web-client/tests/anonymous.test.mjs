// Browser tests of anonymous starts: a visitor opens a plain /widget (no
// quick link, no signed identity), fills the pre-chat form and chats with an
// agent in the console; a server with anonymous chats turned off, or a
// network over the per-address bound, gets a clear message in zh-CN and
// English and no customer is created. Run by scripts/browser-test.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Server, setup, launch, newPage, problems, customerStarts, staffLogin, sleep } from './harness.mjs';

let browser;
const servers = [];
before(async () => { browser = await launch(); });
after(async () => {
  await browser?.close();
  for (const s of servers) await s.destroy();
});
async function server(env) { const s = await Server.create({ env }); servers.push(s); return s; }

const theirs = (page, text) => page.locator('.msgs .msg.theirs .text', { hasText: text });

async function agentOnline(page, srv, agent) {
  await staffLogin(page, srv, '/console', agent.username, agent.password);
  await page.waitForFunction(() => document.querySelector('#presence').value === 'online' && document.querySelector('#net').textContent === '');
  await sleep(300); // the presence frame is on its way
}

/** Fills the plain widget's form and submits it; returns the reply status of the start. */
async function submitStart(page, name, question) {
  await page.fill('input[name=name]', name);
  await page.fill('textarea[name=question]', question);
  const reply = page.waitForResponse((r) => r.url().includes('/api/v1/auth/'));
  await page.click('form.start button[type=submit]');
  const r = await reply;
  assert.ok(r.url().endsWith('/api/v1/auth/anonymous'), r.url());
  return r.status();
}

async function customers(srv, admin) {
  return (await srv.api('GET', '/users?role=customer&limit=200', undefined, admin)).items;
}

/** Console errors except Chromium's note on the refused start (a 403 or 429 the page handles). */
const unexpected = (page, status) => problems(page).filter((p) => !p.includes(`status of ${status}`));

test('a visitor opens /widget without a link, fills the form and chats with an agent in the console', async () => {
  const srv = await server();
  const fx = await setup(srv);
  const agent = await newPage(browser);
  await agentOnline(agent, srv, fx.agents[0]);
  const cust = await newPage(browser, { mobile: true });
  await cust.goto(srv.url('/widget'));
  // Nothing says a link is missing, and the form can be sent.
  await cust.waitForSelector('form.start');
  assert.equal(await cust.textContent('form.start .err'), '');
  assert.equal(await cust.isEnabled('form.start button[type=submit]'), true);
  assert.equal(await submitStart(cust, '  王小明 ', '我的订单还没有发货'), 200);
  await cust.waitForSelector('.composer textarea');
  // The agent is assigned and sees the question; they chat both ways.
  await theirs(agent, '我的订单还没有发货').waitFor();
  await cust.locator('.msg.system', { hasText: '客服 小李 为您服务' }).waitFor();
  await agent.fill('.composer textarea', '您好，正在为您查询');
  await agent.press('.composer textarea', 'Enter');
  await theirs(cust, '您好，正在为您查询').waitFor();
  await cust.fill('.composer textarea', '好的，谢谢');
  await cust.press('.composer textarea', 'Enter');
  await theirs(agent, '好的，谢谢').waitFor();
  // The console shows the visitor's name; the server has one temporary customer.
  await agent.locator('.tab', { hasText: '王小明' }).first().waitFor();
  const list = await customers(srv, fx.admin);
  assert.deepEqual(list.map((u) => [u.name, u.temporary]), [['王小明', true]]);
  assert.deepEqual(problems(cust), []);
  assert.deepEqual(problems(agent), []);
});

test('with anonymous chats turned off the plain widget says a link is needed; a quick link still works', async () => {
  const srv = await server({ SWITCHBOARD_ANONYMOUS_CUSTOMERS: 'false' });
  const fx = await setup(srv);
  const page = await newPage(browser, { mobile: true });
  await page.goto(srv.url('/widget'));
  assert.equal(await submitStart(page, '王小明', '你好'), 403);
  await page.locator('form.start .err', { hasText: '此链接无效或已过期' }).waitFor();
  assert.equal(await page.isDisabled('form.start button[type=submit]'), true);
  // Still so after switching the language, in English.
  await page.click('#lang');
  await page.locator('form.start .err', { hasText: 'This link is invalid or expired' }).waitFor();
  assert.equal(await page.isDisabled('form.start button[type=submit]'), true);
  assert.deepEqual(await customers(srv, fx.admin), []);
  assert.deepEqual(unexpected(page, 403), []);
  // The quick-link path is unchanged.
  const cust = await newPage(browser, { mobile: true });
  await customerStarts(cust, srv, fx.quick, '张三', '用链接咨询');
  assert.equal((await customers(srv, fx.admin)).length, 1);
  assert.deepEqual(problems(cust), []);
});

test('a network over the anonymous limit is told to try again in a minute, in Chinese and English', async () => {
  const srv = await server({ SWITCHBOARD_ANONYMOUS_PER_IP_PER_MIN: '1' });
  const fx = await setup(srv);
  const first = await newPage(browser, { mobile: true });
  await first.goto(srv.url('/widget'));
  assert.equal(await submitStart(first, '顾客甲', '第一个问题'), 200);
  await first.waitForSelector('.composer textarea');
  const zh = await newPage(browser, { mobile: true });
  await zh.goto(srv.url('/widget'));
  assert.equal(await submitStart(zh, '顾客乙', '第二个问题'), 429);
  await zh.locator('form.start .err', { hasText: '此网络发起的新咨询过多，请一分钟后再试' }).waitFor();
  // Not a dead end: the visitor may try again later.
  assert.equal(await zh.isEnabled('form.start button[type=submit]'), true);
  const en = await newPage(browser, { mobile: true, locale: 'en-US' });
  await en.goto(srv.url('/widget?lang=en'));
  assert.equal(await submitStart(en, 'Visitor', 'A question'), 429);
  await en.locator('form.start .err', { hasText: 'Too many new chats from this network; try again in a minute' }).waitFor();
  assert.equal((await customers(srv, fx.admin)).length, 1);
  assert.deepEqual(problems(first), []);
  assert.deepEqual(unexpected(zh, 429), []);
  assert.deepEqual(unexpected(en, 429), []);
});
