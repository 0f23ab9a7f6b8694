// Browser tests of the console's offers and transfers, a returning
// customer's earlier conversations in the console, the widget's image
// upload and emoji, the dashboard's in-place updates and batch assignment,
// and the staff pages' time zone and remembered language. Run by
// scripts/browser-test.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Server, setup, launch, newPage, problems, shot, customerStarts, staffLogin, sleep, ADMIN_PASSWORD } from './harness.mjs';

let browser;
const servers = [];
before(async () => { browser = await launch(); });
after(async () => {
  await browser?.close();
  for (const s of servers) await s.destroy();
});
async function server() { const s = await Server.create(); servers.push(s); return s; }

const theirs = (page, text) => page.locator('.msgs .msg.theirs .text', { hasText: text });

async function agentOnline(page, srv, agent) {
  await staffLogin(page, srv, '/console', agent.username, agent.password);
  await page.waitForFunction(() => document.querySelector('#presence').value === 'online' && document.querySelector('#net').textContent === '');
  await sleep(300); // the presence frame is on its way
}

const norm = (s) => s.replace(/\s+/g, ' ').trim();

test('console: an offer counts down and accepting it makes the conversation active', async () => {
  const srv = await server();
  const fx = await setup(srv, { strategyParams: { offer_timeout_s: 60 } });
  const agent = await newPage(browser);
  await agentOnline(agent, srv, fx.agents[0]);
  const cust = await newPage(browser, { mobile: true });
  await customerStarts(cust, srv, fx.quick, '赵先生', '我想改一下收货地址');
  // Offered, not yet active: an Accept button with a countdown to offer_expires_at.
  const item = agent.locator('#list .conv-item', { has: agent.locator('button.accept') });
  await item.waitFor();
  const conv = await item.getAttribute('data-conv');
  const info = await srv.api('GET', `/conversations/${conv}`, undefined, fx.admin);
  assert.equal(info.state, 'queued');
  assert.equal(info.offered_to, fx.agents[0].id);
  const left = async () => {
    const m = (await item.locator('.countdown').textContent()).match(/(\d+):(\d\d)/);
    return Number(m[1]) * 60 + Number(m[2]);
  };
  const first = await left();
  assert.ok(first > 50 && first <= 60, `countdown ${first}`);
  await sleep(2100);
  const second = await left();
  assert.ok(second < first && second >= first - 4, `countdown ${first} then ${second}`);
  assert.match(await item.locator('.countdown').textContent(), /后过期/);
  // Opening it shows the offer, not an empty chat.
  await item.locator('.nm').click();
  await agent.locator('.offer-pane .countdown').waitFor();
  await shot(agent, 'console-offer');
  await agent.locator('.offer-pane button.accept').click();
  // Accepted: active, with its history and a composer; the customer is told.
  await theirs(agent, '我想改一下收货地址').waitFor();
  await agent.locator(`#list .conv-item[data-conv="${conv}"]`).waitFor();
  assert.equal(await agent.locator('#list button.accept').count(), 0);
  await cust.locator('.msg.system', { hasText: '客服 小李 为您服务' }).waitFor();
  await agent.fill('.composer textarea', '好的，请告诉我新地址');
  await agent.press('.composer textarea', 'Enter');
  await theirs(cust, '好的，请告诉我新地址').waitFor();
  const now = await srv.api('GET', `/conversations/${conv}`, undefined, fx.admin);
  assert.equal(now.state, 'active');
  assert.equal(now.agent, fx.agents[0].id);
  const events = await srv.api('GET', `/conversations/${conv}/events`, undefined, fx.admin);
  assert.ok(events.items.some((e) => e.kind === 'accepted'), JSON.stringify(events.items));
  for (const p of [agent, cust]) assert.deepEqual(problems(p), []);
});

test('console: an offer that expires leaves the list', async () => {
  const srv = await server();
  const fx = await setup(srv, { strategyParams: { offer_timeout_s: 3 } });
  const agent = await newPage(browser);
  await agentOnline(agent, srv, fx.agents[0]);
  const cust = await newPage(browser, { mobile: true });
  await customerStarts(cust, srv, fx.quick, '钱女士', '过期的邀请');
  await agent.locator('#list button.accept').waitFor();
  await agent.locator('#list button.accept').waitFor({ state: 'detached', timeout: 8000 });
  assert.equal(await agent.locator('#list .countdown').count(), 0);
  for (const p of [agent, cust]) assert.deepEqual(problems(p), []);
});

test('console: a transfer to another agent carries the history and the note', async () => {
  const srv = await server();
  const fx = await setup(srv, { agents: [['alice', '小李'], ['bob', '小王']] });
  const [alice, bob] = fx.agents;
  const a = await newPage(browser);
  await agentOnline(a, srv, alice);
  const cust = await newPage(browser, { mobile: true });
  await customerStarts(cust, srv, fx.quick, '孙先生', '发票开错了');
  await theirs(a, '发票开错了').waitFor();
  await a.fill('.composer textarea', '我帮您转给财务同事');
  await a.press('.composer textarea', 'Enter');
  await theirs(cust, '我帮您转给财务同事').waitFor();
  const b = await newPage(browser);
  await agentOnline(b, srv, bob);
  // Alice transfers to Bob with a note.
  await a.click('#transfer');
  await a.locator('dialog select[name=agent]').selectOption(bob.id);
  await a.fill('dialog textarea[name=note]', '客户要重开发票，抬头写公司名');
  await a.click('#do-transfer');
  // Bob has the conversation with its history and the note; the customer does not see the note.
  const toast = b.locator('.toast', { hasText: '转接备注：客户要重开发票' });
  await toast.waitFor();
  // Legible: not white on white (an info toast once took the side panel's `.info` style).
  assert.notEqual(await toast.evaluate((el) => getComputedStyle(el).backgroundColor), 'rgb(255, 255, 255)');
  await theirs(b, '发票开错了').waitFor();
  await theirs(b, '我帮您转给财务同事').waitFor();
  await b.locator('#info .transfer-note', { hasText: '客户要重开发票，抬头写公司名' }).waitFor();
  await cust.locator('.msg.system', { hasText: '会话已转接给客服 小王' }).waitFor();
  assert.equal(await cust.locator('text=客户要重开发票').count(), 0);
  // Alice's view is read only; Bob answers and the customer gets it.
  await a.locator('.composer.muted', { hasText: '会话已转出' }).waitFor();
  await b.fill('.composer textarea', '您好，我是财务小王');
  await b.press('.composer textarea', 'Enter');
  await theirs(cust, '您好，我是财务小王').waitFor();
  await shot(b, 'console-transfer');
  // The note survives a reload (it comes from the conversation's history).
  await b.reload();
  await b.locator('#info .transfer-note', { hasText: '客户要重开发票，抬头写公司名' }).waitFor();
  for (const p of [a, b, cust]) assert.deepEqual(problems(p), []);
});

test('console: a returning customer\'s earlier conversation with another agent opens read only', async () => {
  const srv = await server();
  const fx = await setup(srv, { agents: [['alice', '小李'], ['bob', '小王']] });
  const [alice, bob] = fx.agents;
  // First visit: Alice serves the customer and closes.
  const a = await newPage(browser);
  await agentOnline(a, srv, alice);
  const cust = await newPage(browser, { mobile: true });
  await customerStarts(cust, srv, fx.quick, '郑女士', '我想退货');
  await theirs(a, '我想退货').waitFor();
  const first = await a.locator('.tab.sel').getAttribute('data-conv');
  await a.fill('.composer textarea', '您好，我是小李，请提供订单号');
  await a.press('.composer textarea', 'Enter');
  await theirs(cust, '您好，我是小李，请提供订单号').waitFor();
  await a.click('#close');
  await cust.locator('.rate').waitFor();
  await cust.click('.star[aria-label="4"]');
  await cust.click('.rate button.primary');
  // Second visit: Alice is away, Bob serves.
  await a.selectOption('#presence', 'away');
  const b = await newPage(browser);
  await agentOnline(b, srv, bob);
  await sleep(300); // Alice's presence frame is on its way too
  await cust.click('.ended button.primary');
  await cust.locator('.msg.system', { hasText: '客服 小王 为您服务' }).last().waitFor();
  await cust.fill('.composer textarea', '我又来了');
  await cust.press('.composer textarea', 'Enter');
  await theirs(b, '我又来了').waitFor();
  const second = await b.locator('.tab.sel').getAttribute('data-conv');
  assert.notEqual(second, first);
  // Bob's panel: the profile and Alice's conversation, which he never took part in.
  await b.locator('#info .cust-count', { hasText: '咨询次数: 2' }).waitFor();
  assert.match(await b.textContent('#info .cust-first'), /首次来访/);
  assert.equal(await b.textContent('#info .cust-name'), '郑女士');
  const past = b.locator(`#info .past[data-conv="${first}"]`);
  await past.waitFor();
  assert.match(await past.textContent(), /已结束/);
  assert.equal(await b.locator('#info .more-past').count(), 0);
  await past.click();
  // Opened read only: Alice's message and the customer's, no composer.
  await b.locator(`.tab.sel[data-conv="${first}"]`).waitFor();
  await theirs(b, '您好，我是小李，请提供订单号').waitFor();
  await theirs(b, '我想退货').waitFor();
  await b.locator('#pane .composer.muted', { hasText: '历史会话（只读）' }).waitFor();
  assert.equal(await b.locator('#pane .composer textarea').count(), 0);
  // Its own panel lists the newer one; back on it, Bob still writes there.
  await b.locator(`#info .past[data-conv="${second}"]`).waitFor();
  await b.click(`.tab[data-conv="${second}"]`);
  await b.fill('#pane .composer textarea', '您好，我是小王');
  await b.press('#pane .composer textarea', 'Enter');
  await theirs(cust, '您好，我是小王').waitFor();
  // In English too.
  await b.click('#lang');
  await b.locator('#info .cust-count', { hasText: 'Conversations: 2' }).waitFor();
  await b.locator('#info h4', { hasText: 'Past conversations' }).waitFor();
  await b.click('#lang');
  const stored = await srv.api('GET', `/conversations/${first}/messages?after=0&limit=50`, undefined, fx.admin);
  assert.ok(!stored.messages.some((m) => m.sender.id === bob.id), JSON.stringify(stored.messages));
  for (const p of [a, b, cust]) assert.deepEqual(problems(p), []);
});

test('widget: an image with a preview and an emoji reach the agent', async () => {
  const srv = await server();
  const fx = await setup(srv);
  const agent = await newPage(browser);
  await agentOnline(agent, srv, fx.agents[0]);
  const cust = await newPage(browser, { mobile: true });
  await customerStarts(cust, srv, fx.quick, '周女士', '看看这张图');
  await theirs(agent, '看看这张图').waitFor();
  // A small PNG (2×2 pixels, from a screenshot).
  const png = await agent.screenshot({ clip: { x: 0, y: 0, width: 2, height: 2 } });
  await cust.setInputFiles('input[type=file]', { name: 'red.png', mimeType: 'image/png', buffer: png });
  // The preview first: the image and its name, nothing sent yet.
  await cust.locator('.preview img').waitFor();
  assert.match(await cust.textContent('.preview .name'), /red\.png/);
  assert.equal(await agent.locator('.msgs img.att').count(), 0);
  await cust.click('.preview button.send');
  await cust.locator('.preview').waitFor({ state: 'hidden' });
  // The agent sees the picture (loaded through the authorised upload URL).
  const img = agent.locator('.msgs .msg.theirs img.att');
  await img.waitFor();
  await agent.waitForFunction(() => { const i = document.querySelector('.msgs .msg.theirs img.att'); return i && i.complete && i.naturalWidth === 2; });
  await cust.waitForFunction(() => { const i = document.querySelector('.msgs .msg.mine img.att'); return i && i.complete && i.naturalWidth === 2; });
  // Typing is not disturbed by what arrives meanwhile: the composer keeps its focus and text.
  await cust.focus('.composer textarea');
  await cust.keyboard.type('草稿');
  for (const text of ['收到图片了', '正在处理']) {
    await agent.fill('.composer textarea', text);
    await agent.press('.composer textarea', 'Enter');
    await theirs(cust, text).waitFor();
  }
  assert.ok(await cust.evaluate(() => document.activeElement === document.querySelector('.composer textarea')));
  assert.equal(await cust.inputValue('.composer textarea'), '草稿');
  await cust.fill('.composer textarea', '');
  // Emoji from the picker.
  await cust.click('button[title="表情"]');
  await cust.click('.emoji-panel .emo:has-text("👍")');
  await cust.press('.composer textarea', 'Enter');
  await theirs(agent, '👍').waitFor();
  const conv = await agent.locator('.tab.sel').getAttribute('data-conv');
  const stored = await srv.api('GET', `/conversations/${conv}/messages?after=0&limit=50`, undefined, fx.admin);
  assert.ok(stored.messages.some((m) => m.kind === 'image' && m.attachment), JSON.stringify(stored.messages));
  assert.ok(stored.messages.some((m) => m.kind === 'emoji' && m.body === '👍'), JSON.stringify(stored.messages));
  await shot(cust, 'widget-image');
  for (const p of [agent, cust]) assert.deepEqual(problems(p), []);
});

test('dashboard: live updates keep the supervisor\'s choices, and a batch assignment works', async () => {
  const srv = await server();
  const fx = await setup(srv, { maxConcurrency: 1, agents: [['alice', '小李'], ['bob', '小王']] });
  const [alice, bob] = fx.agents;
  // Bob stays offline but may take three (assignment need not wait for him).
  await srv.api('PATCH', `/users/${bob.id}`, { max_concurrency: 3 }, fx.admin);
  const agent = await newPage(browser);
  await agentOnline(agent, srv, alice);
  const custs = [];
  for (const [name, q] of [['顾客甲', '问题甲'], ['顾客乙', '问题乙'], ['顾客丙', '问题丙']]) {
    const p = await newPage(browser, { mobile: true });
    await customerStarts(p, srv, fx.quick, name, q);
    custs.push(p);
    if (q === '问题甲') await theirs(agent, q).waitFor();
  }
  const sup = await newPage(browser);
  await staffLogin(sup, srv, '/dashboard', 'admin', ADMIN_PASSWORD);
  const rows = sup.locator('.queue tr[data-conv]');
  await sup.waitForFunction(() => document.querySelectorAll('.queue tr[data-conv]').length === 2);
  const [c1, c2] = await rows.evaluateAll((els) => els.map((e) => e.dataset.conv));
  // The supervisor starts choosing: a checkbox, an agent in a row's dropdown (focused).
  const row1 = sup.locator(`.queue tr[data-conv="${c1}"]`);
  await row1.locator('input[type=checkbox]').check();
  await row1.locator('select').selectOption(bob.id);
  await row1.locator('select').focus();
  await sup.evaluate(() => { window.__row = document.querySelector('.queue tr[data-conv]'); window.__sel = window.__row.querySelector('select'); });
  // Live updates arrive: Alice goes busy, then online again.
  await agent.selectOption('#presence', 'busy');
  await sup.locator(`#agents tr[data-user="${alice.id}"]`, { hasText: '忙碌' }).waitFor();
  await agent.selectOption('#presence', 'online');
  await sup.locator(`#agents tr[data-user="${alice.id}"]`, { hasText: '在线' }).waitFor();
  // Nothing the supervisor chose was reset: same elements, same values, focus kept.
  assert.ok(await sup.evaluate(() => window.__row.isConnected && window.__sel.isConnected && document.activeElement === window.__sel));
  assert.equal(await row1.locator('select').inputValue(), bob.id);
  assert.ok(await row1.locator('input[type=checkbox]').isChecked());
  // Batch: both waiting conversations to Bob.
  await sup.locator(`.queue tr[data-conv="${c2}"] input[type=checkbox]`).check();
  await sup.selectOption('#batch-agent', bob.id);
  await sup.click('#batch');
  await sup.locator('.toast', { hasText: '已分配 2 个' }).waitFor();
  await sup.locator('.queue', { hasText: '无人排队' }).waitFor();
  for (const c of [c1, c2]) await sup.locator(`#active tr[data-conv="${c}"][data-agent="${bob.id}"]`).waitFor();
  await sup.locator(`#agents tr[data-user="${bob.id}"] .load`, { hasText: '2/3' }).waitFor();
  for (const c of [c1, c2]) {
    const info = await srv.api('GET', `/conversations/${c}`, undefined, fx.admin);
    assert.equal(info.state, 'active');
    assert.equal(info.agent, bob.id);
  }
  // A reload signs straight back in and rebuilds the board.
  await sup.reload();
  for (const c of [c1, c2]) await sup.locator(`#active tr[data-conv="${c}"][data-agent="${bob.id}"]`).waitFor();
  // The language switch rebuilds the board in English, rows included.
  await sup.click('#lang');
  await sup.locator('#active h3', { hasText: 'Active conversations' }).waitFor();
  for (const c of [c1, c2]) await sup.locator(`#active tr[data-conv="${c}"][data-agent="${bob.id}"]`).waitFor();
  await sup.locator('.queue', { hasText: 'Nobody waiting' }).waitFor();
  await custs[1].locator('.msg.system', { hasText: '主管已将会话分配给客服 小王' }).waitFor();
  await custs[2].locator('.msg.system', { hasText: '主管已将会话分配给客服 小王' }).waitFor();
  for (const p of [agent, sup, ...custs]) assert.deepEqual(problems(p), []);
});

test('console: times in the viewer\'s time zone, and the language choice survives a reload', async () => {
  const srv = await server();
  const fx = await setup(srv);
  const tz = 'America/New_York';
  const agent = await newPage(browser, { timezoneId: tz, locale: 'en-US' });
  await agentOnline(agent, srv, fx.agents[0]);
  const cust = await newPage(browser, { mobile: true });
  await customerStarts(cust, srv, fx.quick, '吴先生', '几点了');
  await theirs(agent, '几点了').waitFor();
  const conv = await agent.locator('.tab.sel').getAttribute('data-conv');
  const stored = await srv.api('GET', `/conversations/${conv}/messages?after=0&limit=50`, undefined, fx.admin);
  const ts = stored.messages.find((m) => m.body === '几点了').ts;
  const fmt = (lang, timeZone) => new Intl.DateTimeFormat(lang, { hour: '2-digit', minute: '2-digit', timeZone }).format(new Date(ts));
  const meta = agent.locator('.msgs .msg.theirs', { hasText: '几点了' }).locator('.meta');
  assert.equal(norm(await meta.textContent()), norm(fmt('zh-CN', tz)));
  // The customer in Shanghai sees the same message at Shanghai's time.
  const cmeta = cust.locator('.msgs .msg.mine', { hasText: '几点了' }).locator('.meta');
  assert.ok(norm(await cmeta.textContent()).startsWith(norm(fmt('zh-CN', 'Asia/Shanghai'))), await cmeta.textContent());
  assert.notEqual(fmt('zh-CN', tz), fmt('zh-CN', 'Asia/Shanghai'));
  // English, remembered in localStorage across a reload (and used by the other staff pages).
  await agent.click('#lang');
  await agent.locator('#list h4', { hasText: 'Active' }).waitFor();
  assert.equal(await agent.evaluate(() => localStorage.getItem('sb.lang')), 'en');
  await agent.reload();
  await agent.waitForSelector('body.in');
  await agent.locator('#list h4', { hasText: 'Active' }).waitFor();
  assert.equal(await agent.textContent('#lang'), '中文');
  assert.equal(await agent.getAttribute('html', 'lang'), 'en');
  await theirs(agent, '几点了').waitFor();
  assert.equal(norm(await meta.textContent()), norm(fmt('en', tz)));
  await agent.goto(srv.url('/dashboard'));
  await agent.locator('.brand', { hasText: 'Supervisor dashboard' }).waitFor();
  // And back to Chinese.
  await agent.click('#lang');
  assert.equal(await agent.evaluate(() => localStorage.getItem('sb.lang')), 'zh-CN');
  for (const p of [agent, cust]) assert.deepEqual(problems(p), []);
});
