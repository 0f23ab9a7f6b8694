// Browser test of the signed customer identity: a shop's page embeds the
// snippet with its logged-in customer signed by its backend; the customer
// chats without giving a name, and on a later visit (another browser, a new
// signature) lands in the same account with its history, without any form.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import { Server, setup, launch, newPage, problems, staffLogin, sleep } from './harness.mjs';

const SECRET = 'shop-widget-identity-secret-0123456789';
let browser;
let srv;
before(async () => { browser = await launch(); });
after(async () => {
  await browser?.close();
  shop.server?.close();
  await srv?.destroy();
});

/** What the shop's backend does. */
function signed(id, name) {
  const ts = Date.now();
  const sig = createHmac('sha256', SECRET).update(`${id}\n${name}\n${ts}`).digest('hex');
  return { id, name, ts, sig };
}

/** The shop's site: a real HTTP server on another loopback port (another
 * origin; loopback like the server, so Chromium's private-network rules let
 * it load the snippet) serving a page with the snippet and `shop.identity`. */
const shop = { identity: null, server: null };
function shopBody(server) {
  const attr = JSON.stringify(shop.identity).replace(/&/g, '&amp;').replace(/'/g, '&#39;');
  return `<!doctype html><html><head><meta charset="utf-8"><title>Shop</title></head><body><h1>小店</h1>
<script src="${server.url('/embed.js')}" data-greeting="欢迎回来" data-identity='${attr}'></script></body></html>`;
}

async function shopPage(server, identity) {
  shop.identity = identity;
  if (!shop.server) {
    shop.server = createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(shopBody(server));
    });
    await new Promise((r) => shop.server.listen(0, '127.0.0.1', r));
  }
  const page = await newPage(browser, { mobile: true });
  const widgetUrls = [];
  page.on('request', (r) => { if (r.url().includes('/widget')) widgetUrls.push(r.url()); });
  await page.goto(`http://127.0.0.1:${shop.server.address().port}/account`);
  await page.click('button[aria-label=chat]');
  const frame = page.frameLocator('iframe[title=chat]');
  return { page, frame, widgetUrls };
}

const theirs = (where, text) => where.locator('.msgs .msg.theirs .text', { hasText: text });

test('a shop passes its signed customer; the customer chats without the name form and keeps its history', async () => {
  srv = await Server.create({ env: { SWITCHBOARD_WIDGET_IDENTITY_SECRET: SECRET } });
  const fx = await setup(srv);
  const agent = await newPage(browser);
  await staffLogin(agent, srv, '/console', fx.agents[0].username, fx.agents[0].password);
  await agent.waitForFunction(() => document.querySelector('#presence').value === 'online' && document.querySelector('#net').textContent === '');
  await sleep(300);

  // First visit: the pre-chat form has no name field; the name is the shop's.
  const first = await shopPage(srv, signed('shop-cust-42', '陈小姐'));
  await first.frame.locator('form.start textarea[name=question]').waitFor();
  assert.equal(await first.frame.locator('form.start input[name=name]').count(), 0);
  await first.frame.locator('form.start textarea[name=question]').fill('我的订单什么时候发货？');
  await first.frame.locator('form.start button[type=submit]').click();
  await first.frame.locator('.composer textarea').waitFor();
  await theirs(agent, '我的订单什么时候发货？').waitFor();
  await agent.locator('body', { hasText: '陈小姐' }).first().waitFor();
  await agent.fill('.composer textarea', '您好陈小姐，今天发货');
  await agent.press('.composer textarea', 'Enter');
  await theirs(first.frame, '您好陈小姐，今天发货').waitFor();
  await first.frame.locator('.composer textarea').fill('好的，谢谢');
  await first.frame.locator('.composer textarea').press('Enter');
  await theirs(agent, '好的，谢谢').waitFor();
  // The signature never travelled in a URL.
  const sig1 = JSON.stringify(first.widgetUrls);
  assert.ok(first.widgetUrls.length > 0 && !/sig|shop-cust/.test(sig1), sig1);
  assert.deepEqual(problems(first.page), []);

  // A later visit in another browser: the same account, straight into the
  // conversation with its messages, no form at all.
  const second = await shopPage(srv, signed('shop-cust-42', '陈小姐'));
  await theirs(second.frame, '您好陈小姐，今天发货').waitFor();
  assert.equal(await second.frame.locator('form.start').count(), 0);
  await second.frame.locator('.composer textarea').fill('再问一下运费');
  await second.frame.locator('.composer textarea').press('Enter');
  await theirs(agent, '再问一下运费').waitFor();
  assert.deepEqual(problems(second.page), []);

  // A forged identity is refused and shows why.
  const forged = await shopPage(srv, { ...signed('shop-cust-42', '陈小姐'), name: '冒名者' });
  await forged.frame.locator('form.start .err', { hasText: '无法确认您的身份' }).waitFor();
  assert.equal(await forged.frame.locator('form.start button[type=submit]').isDisabled(), true);
  assert.deepEqual(problems(agent), []);
});
