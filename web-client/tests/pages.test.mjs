// Browser tests of the web client: widget, console, dashboard, admin, against
// real servers. Run by scripts/browser-test.
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
const mine = (page, text) => page.locator('.msgs .msg.mine .text', { hasText: text });

async function agentOnline(page, srv, agent) {
  await staffLogin(page, srv, '/console', agent.username, agent.password);
  await page.waitForFunction(() => document.querySelector('#presence').value === 'online' && document.querySelector('#net').textContent === '');
  await sleep(300); // the presence frame is on its way
}

test('a customer in the widget and an agent in the console chat both ways', async () => {
  const srv = await server();
  const fx = await setup(srv);
  const agent = await newPage(browser);
  await agentOnline(agent, srv, fx.agents[0]);
  const cust = await newPage(browser, { mobile: true });
  await customerStarts(cust, srv, fx.quick, '王小明', '我想查询一下退款进度');
  // The quick-link token is gone from the address bar.
  assert.ok(!cust.url().includes('quick'), cust.url());
  // The agent is assigned, sees the first message, answers.
  await theirs(agent, '我想查询一下退款进度').waitFor();
  await cust.locator('.msg.system', { hasText: '客服 小李 为您服务' }).waitFor();
  await agent.fill('.composer textarea', '您好，正在为您查询');
  await agent.press('.composer textarea', 'Enter');
  await theirs(cust, '您好，正在为您查询').waitFor();
  // Rendered as text, never as HTML.
  await cust.fill('.composer textarea', '<b>谢谢</b> <img src=x onerror=alert(1)>');
  await cust.press('.composer textarea', 'Enter');
  await theirs(agent, '<b>谢谢</b>').waitFor();
  assert.equal(await agent.locator('.msgs b, .msgs img:not(.att)').count(), 0);
  // Read receipts: the agent has the conversation open, so the customer's message shows read.
  await cust.locator('.msg.mine .st.read').last().waitFor();
  // Quick reply with variables via the / shortcode.
  await agent.fill('.composer textarea', '/hi');
  await agent.press('.composer textarea', 'Enter');
  assert.match(await agent.inputValue('.composer textarea'), /您好 王小明，我是客服 小李/);
  await agent.press('.composer textarea', 'Enter');
  await theirs(cust, '您好 王小明，我是客服 小李').waitFor();
  // Typing indicator.
  await cust.type('.composer textarea', '还有');
  await agent.locator('.typing', { hasText: '正在输入' }).waitFor();
  await cust.fill('.composer textarea', '');
  await shot(cust, 'widget');
  await shot(agent, 'console');
  // English switch.
  await cust.click('#lang');
  await cust.locator('.bar .title', { hasText: 'Customer service' }).waitFor();
  await cust.locator('.msg.system', { hasText: 'Agent 小李 is now serving you' }).waitFor();
  await shot(cust, 'widget-en');
  assert.deepEqual(problems(cust), []);
  assert.deepEqual(problems(agent), []);
});

test('a second customer waits in the queue while the agent is full and is assigned when a conversation closes', async () => {
  const srv = await server();
  const fx = await setup(srv, { maxConcurrency: 1 });
  const agent = await newPage(browser);
  await agentOnline(agent, srv, fx.agents[0]);
  const a = await newPage(browser, { mobile: true });
  await customerStarts(a, srv, fx.quick, '顾客甲', '第一个问题');
  await theirs(agent, '第一个问题').waitFor();
  const b = await newPage(browser, { mobile: true });
  await customerStarts(b, srv, fx.quick, '顾客乙', '第二个问题');
  await b.locator('.queue[data-position="1"]').waitFor();
  assert.match(await b.textContent('.queue'), /马上轮到您了/);
  await shot(b, 'widget-queue');
  // The agent closes the first conversation: the second is assigned.
  await agent.click('#close');
  await b.locator('.msg.system', { hasText: '客服 小李 为您服务' }).waitFor();
  await b.locator('.queue').waitFor({ state: 'hidden' });
  await theirs(agent, '第二个问题').waitFor();
  // The first customer rates.
  await a.locator('.rate').waitFor();
  await a.click('.star[aria-label="5"]');
  await a.fill('.rate textarea', '很好');
  await a.click('.rate button.primary');
  await a.locator('.ended', { hasText: '感谢您的评价' }).waitFor();
  const assigned = await srv.api('GET', '/assignments?limit=50', undefined, fx.admin);
  const first = assigned.items.at(-1).conv;
  const events = await srv.api('GET', `/conversations/${first}/events`, undefined, fx.admin);
  assert.ok(events.items.some((e) => e.kind === 'rated' && e.note === '5'), JSON.stringify(events.items));
  for (const p of [agent, a, b]) assert.deepEqual(problems(p), []);
});

test('the dashboard shows the queue and a reassignment works', async () => {
  const srv = await server();
  const fx = await setup(srv, { maxConcurrency: 1, agents: [['alice', '小李'], ['bob', '小王']] });
  const [alice, bob] = fx.agents;
  const agent = await newPage(browser);
  await agentOnline(agent, srv, alice);
  const a = await newPage(browser, { mobile: true });
  await customerStarts(a, srv, fx.quick, '顾客甲', '问题甲');
  await theirs(agent, '问题甲').waitFor();
  const b = await newPage(browser, { mobile: true });
  await customerStarts(b, srv, fx.quick, '顾客乙', '问题乙');
  await b.locator('.queue[data-position="1"]').waitFor();
  const sup = await newPage(browser);
  await staffLogin(sup, srv, '/dashboard', 'admin', ADMIN_PASSWORD);
  // The queue, the agent board and the active conversation.
  const row = sup.locator('.queue tr[data-conv]');
  await row.waitFor();
  assert.equal(await row.count(), 1);
  await sup.locator(`#agents tr[data-user="${alice.id}"] .load`, { hasText: '1/1' }).waitFor();
  const act = sup.locator(`#active tr[data-agent="${alice.id}"]`);
  await act.waitFor();
  await sup.locator('.chart canvas').first().waitFor();
  await shot(sup, 'dashboard');
  // Reassign the active conversation from alice to bob.
  await act.locator('select').selectOption(bob.id);
  await act.locator('button.reassign').click();
  await sup.locator(`#active tr[data-agent="${bob.id}"]`).first().waitFor();
  const conv = await sup.locator(`#active tr[data-agent="${bob.id}"]`).first().getAttribute('data-conv');
  const hist = await srv.api('GET', `/assignments?conv=${conv}`, undefined, fx.admin);
  assert.ok(hist.items.some((e) => e.kind === 'reassigned' && e.agent === bob.id), JSON.stringify(hist.items));
  await a.locator('.msg.system', { hasText: '主管已将会话分配给客服 小王' }).waitFor();
  // Alice is free again: the waiting customer reaches her, and the queue empties.
  await theirs(agent, '问题乙').waitFor();
  await sup.locator('.queue', { hasText: '无人排队' }).waitFor();
  for (const p of [agent, a, b, sup]) assert.deepEqual(problems(p), []);
});

test('after the server restarts both sides resume without a lost or doubled message', async () => {
  const srv = await server();
  const fx = await setup(srv);
  const agent = await newPage(browser);
  await agentOnline(agent, srv, fx.agents[0]);
  const cust = await newPage(browser, { mobile: true });
  await customerStarts(cust, srv, fx.quick, '王小明', '重启前的问题');
  await theirs(agent, '重启前的问题').waitFor();
  await agent.fill('.composer textarea', '重启前的回答');
  await agent.press('.composer textarea', 'Enter');
  await theirs(cust, '重启前的回答').waitFor();

  await srv.stop();
  await cust.locator('#net[data-state="offline"], #net[data-state="connecting"]').waitFor();
  // Typed while offline: kept in the outbox.
  for (const [page, text] of [[cust, '离线时客户发的'], [agent, '离线时客服发的']]) {
    await page.fill('.composer textarea', text);
    await page.press('.composer textarea', 'Enter');
    await page.locator('.msg.pending .text', { hasText: text }).waitFor();
  }
  await srv.start();
  await theirs(agent, '离线时客户发的').waitFor({ timeout: 40000 });
  await theirs(cust, '离线时客服发的').waitFor({ timeout: 40000 });
  await cust.fill('.composer textarea', '重启后的消息');
  await cust.press('.composer textarea', 'Enter');
  await theirs(agent, '重启后的消息').waitFor();
  await sleep(500);
  // Each side: every seq once, gapless, nothing pending, each text once.
  for (const page of [cust, agent]) {
    const seqs = (await page.locator('.msgs .msg[data-seq]').evaluateAll((els) => els.map((e) => Number(e.dataset.seq))));
    assert.deepEqual(seqs, seqs.map((_, i) => i + 1), `seqs ${seqs}`);
    assert.equal(await page.locator('.msg.pending').count(), 0);
    for (const text of ['重启前的问题', '重启前的回答', '离线时客户发的', '离线时客服发的', '重启后的消息']) {
      assert.equal(await page.locator('.msgs .text', { hasText: text }).count(), 1, text);
    }
  }
  // And the server stored each text once.
  const conv = await agent.locator('.tab.sel').getAttribute('data-conv');
  const stored = await srv.api('GET', `/conversations/${conv}/messages?after=0&limit=200`, undefined, fx.admin);
  for (const text of ['重启前的问题', '重启前的回答', '离线时客户发的', '离线时客服发的', '重启后的消息']) {
    assert.equal(stored.messages.filter((m) => m.body === text).length, 1, text);
  }
  for (const p of [agent, cust]) assert.deepEqual(problems(p, { restart: true }), []);
});

test('the admin page switches a team strategy and edits an agent', async () => {
  const srv = await server();
  const fx = await setup(srv);
  const page = await newPage(browser);
  await staffLogin(page, srv, '/admin', 'admin', ADMIN_PASSWORD);
  const row = page.locator(`#teams tr[data-team="${fx.team.id}"]`);
  await row.locator('select.strategy').selectOption('skill');
  await page.locator('.toast', { hasText: '已保存' }).waitFor();
  const team = await srv.api('GET', `/teams/${fx.team.id}`, undefined, fx.admin);
  assert.equal(team.strategy, 'skill');
  const urow = page.locator(`#staff tr[data-user="${fx.agents[0].id}"]`);
  // (The page may still be reloading after the team change while this is typed.)
  await urow.locator('input.skills').fill('退款:3, 发票');
  await urow.locator('input.maxc').fill('3');
  const saved = page.waitForResponse((r) => r.request().method() === 'PATCH' && r.url().includes(`/users/${fx.agents[0].id}`));
  await urow.locator('button').click();
  assert.equal((await saved).status(), 200);
  const u = (await srv.api('GET', '/users?role=agent', undefined, fx.admin)).items.find((x) => x.id === fx.agents[0].id);
  assert.equal(u.max_concurrency, 3);
  assert.deepEqual(u.skills, [{ name: '退款', level: 3 }, { name: '发票', level: 1 }]);
  await shot(page, 'admin');
  assert.deepEqual(problems(page), []);
});

test('the admin page keeps what is typed while a save reloads it', async () => {
  // Every save reloads and redraws the page; what is typed meanwhile (and
  // then saved) must survive the redraw. Here the reload after a team change
  // is held until an agent's skills and max concurrency have been typed.
  const srv = await server();
  const fx = await setup(srv);
  const page = await newPage(browser);
  await staffLogin(page, srv, '/admin', 'admin', ADMIN_PASSWORD);
  const sel = `#staff tr[data-user="${fx.agents[0].id}"]`;
  const urow = page.locator(sel);
  await urow.waitFor();
  let release;
  const held = new Promise((r) => { release = r; });
  let hold = true;
  await page.route(/\/api\/v1\/users\?limit=200$/, async (route) => {
    if (hold) { hold = false; await held; }
    await route.continue();
  });
  await page.locator(`#teams tr[data-team="${fx.team.id}"] select.strategy`).selectOption('skill');
  await page.locator('.toast', { hasText: '已保存' }).waitFor();
  await urow.evaluate((el) => { el.dataset.old = '1'; });
  await urow.locator('input.skills').fill('退款:3, 发票');
  await urow.locator('input.maxc').fill('3');
  release();
  await page.locator(`${sel}:not([data-old])`).waitFor(); // redrawn from the server
  assert.equal(await urow.locator('input.skills').inputValue(), '退款:3, 发票');
  assert.equal(await urow.locator('input.maxc').inputValue(), '3');
  assert.ok(await urow.locator('input.maxc').evaluate((el) => el === document.activeElement), 'the field being typed in keeps the focus');
  const saved = page.waitForResponse((r) => r.request().method() === 'PATCH' && r.url().includes(`/users/${fx.agents[0].id}`));
  await urow.locator('button').click();
  assert.deepEqual(JSON.parse((await saved).request().postData()), { skills: [{ name: '退款', level: 3 }, { name: '发票', level: 1 }], max_concurrency: 3 });
  const u = (await srv.api('GET', '/users?role=agent', undefined, fx.admin)).items.find((x) => x.id === fx.agents[0].id);
  assert.equal(u.max_concurrency, 3);
  assert.deepEqual(u.skills, [{ name: '退款', level: 3 }, { name: '发票', level: 1 }]);
  // Saved, so no longer a draft: the reload after the save shows the server's values.
  await page.waitForFunction((q) => document.querySelector(q)?.value === '退款:3, 发票:1', `${sel} input.skills`);
  assert.equal((await srv.api('GET', `/teams/${fx.team.id}`, undefined, fx.admin)).strategy, 'skill');
  assert.deepEqual(problems(page), []);
});

test('the embed snippet plus the widget first paint stay under 30 KB gzipped', async () => {
  const { gzipSync } = await import('node:zlib');
  const srv = await server();
  const page = await newPage(browser, { mobile: true });
  const urls = new Set();
  page.on('response', (r) => { const u = new URL(r.url()); if (u.port === String(srv.port) && !u.pathname.startsWith('/api/')) urls.add(u.pathname); });
  await page.goto(srv.url('/widget'));
  await page.waitForSelector('form.start');
  urls.add('/embed.js');
  let raw = 0, gz = 0;
  for (const p of urls) {
    const body = Buffer.from(await (await fetch(srv.url(p))).arrayBuffer());
    raw += body.length;
    gz += gzipSync(body, { level: 9 }).length;
  }
  console.log(`widget first paint: ${urls.size} files, ${raw} bytes, ${gz} bytes gzipped (${[...urls].join(' ')})`);
  assert.ok(gz < 30 * 1024, `${gz} bytes gzipped`);
  // Headers: a strict CSP, framable widget, ETag revalidation.
  const r = await fetch(srv.url('/widget'));
  assert.match(r.headers.get('content-security-policy'), /script-src 'self'; style-src 'self'/);
  assert.match(r.headers.get('content-security-policy'), /frame-ancestors \*/);
  const c = await fetch(srv.url('/console'));
  assert.match(c.headers.get('content-security-policy'), /frame-ancestors 'none'/);
  const js = await fetch(srv.url('/static/widget.js'));
  assert.equal(js.headers.get('content-type'), 'text/javascript; charset=utf-8');
  const again = await fetch(srv.url('/static/widget.js'), { headers: { 'if-none-match': js.headers.get('etag') } });
  assert.equal(again.status, 304);
  assert.equal((await fetch(srv.url('/static/nope.js'))).status, 404);
  assert.match((await fetch(srv.url('/static/vendor/uplot-1.6.32/uPlot.iife.min.js'))).headers.get('cache-control'), /immutable/);
  assert.deepEqual(problems(page), []);
});
