// Test harness: real `switchboard` servers (temp SQLite data dirs, loopback
// ports) and Debian's chromium driven by playwright-core.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const BIN = process.env.SWITCHBOARD_BIN || fileURLToPath(new URL('../../target/debug/switchboard', import.meta.url));
export const SHOTS = fileURLToPath(new URL('../../docs/screenshots/', import.meta.url));
export const ADMIN_PASSWORD = 'admin-password-1';
export const AGENT_PASSWORD = 'agent-password-1';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

export class Server {
  /** `env`: extra environment of the server (for example a secret). */
  static async create({ env = {} } = {}) {
    const s = new Server();
    s.extraEnv = env;
    s.dir = mkdtempSync(join(tmpdir(), 'sb-browser-'));
    s.port = await freePort();
    s.log = [];
    execFileSync(BIN, ['user', 'create', '--username', 'admin', '--password', ADMIN_PASSWORD, '--role', 'admin', '--name', '管理员'], { env: s.env(), stdio: 'pipe' });
    await s.start();
    return s;
  }
  env() {
    return { ...process.env, SWITCHBOARD_ADDR: `127.0.0.1:${this.port}`, SWITCHBOARD_DATA_DIR: this.dir, RUST_LOG: 'warn', SWITCHBOARD_SHUTDOWN_DRAIN_S: '3', ...this.extraEnv };
  }
  async start() {
    this.proc = spawn(BIN, [], { env: this.env(), stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (d) => { this.log.push(String(d)); if (this.log.length > 200) this.log.shift(); };
    this.proc.stdout.on('data', keep);
    this.proc.stderr.on('data', keep);
    this.exited = new Promise((r) => this.proc.once('exit', r));
    for (let i = 0; i < 200; i++) {
      try { if ((await fetch(this.url('/healthz'))).ok) return; } catch { /* not yet */ }
      if (this.proc.exitCode != null) break;
      await sleep(100);
    }
    throw new Error(`server did not start:\n${this.log.join('')}`);
  }
  async stop() {
    if (!this.proc || this.proc.exitCode != null) return;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 15000);
    await this.exited;
    clearTimeout(t);
  }
  async destroy() { await this.stop(); rmSync(this.dir, { recursive: true, force: true }); }
  url(p) { return `http://127.0.0.1:${this.port}${p}`; }
  async api(method, path, body, token) {
    const headers = { 'content-type': 'application/json' };
    if (token) headers.authorization = `Bearer ${token}`;
    const r = await fetch(this.url(`/api/v1${path}`), { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const data = r.status === 204 ? null : await r.json();
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(data)}`);
    return data;
  }
  async login(username, password) { return (await this.api('POST', '/auth/login', { username, password })).access_token; }
}

/** An admin, agents, one default team with its agents, and a quick link. */
export async function setup(server, { agents = [['alice', '小李']], maxConcurrency = 5, strategyParams } = {}) {
  const admin = await server.login('admin', ADMIN_PASSWORD);
  const made = [];
  for (const [username, name] of agents) {
    const u = await server.api('POST', '/users', { username, password: AGENT_PASSWORD, name, role: 'agent' }, admin);
    made.push({ ...u, username, password: AGENT_PASSWORD });
  }
  const team = await server.api('POST', '/teams', { name: '售后服务', strategy: 'least_load', max_concurrency: maxConcurrency, default: true, strategy_params: strategyParams }, admin);
  for (const a of made) await server.api('POST', `/teams/${team.id}/members`, { user: a.id }, admin);
  const link = await server.api('POST', '/quick-links', { max_uses: 100 }, admin);
  return { admin, agents: made, team, quick: link.token };
}

export async function launch() {
  return chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox', '--disable-dev-shm-usage'] });
}

/**
 * A page in its own browser context (own sessionStorage), phone-sized or
 * desktop. page.problems collects console errors and page errors; CSP
 * violations are among them.
 */
export async function newPage(browser, { mobile = false, locale = 'zh-CN', timezoneId = 'Asia/Shanghai' } = {}) {
  const ctx = await browser.newContext(mobile
    ? { viewport: { width: 390, height: 720 }, isMobile: true, hasTouch: true, locale, timezoneId }
    : { viewport: { width: 1280, height: 760 }, locale, timezoneId });
  if (process.env.SB_WEB_FROM_DISK) {
    // Development only: the modules and styles from web-client/static/ on disk
    // instead of those embedded in the binary (no rebuild per edit).
    await ctx.route(/\/static\/[a-z]+\.(js|css)$/, (route) => {
      const name = new URL(route.request().url()).pathname.split('/').pop();
      route.fulfill({
        body: readFileSync(fileURLToPath(new URL(`../static/${name}`, import.meta.url))),
        contentType: name.endsWith('.js') ? 'text/javascript; charset=utf-8' : 'text/css; charset=utf-8',
      });
    });
  }
  const page = await ctx.newPage();
  page.setDefaultTimeout(20000);
  page.problems = [];
  page.on('console', (m) => { if (m.type() === 'error') page.problems.push(m.text()); });
  page.on('pageerror', (e) => page.problems.push(`pageerror: ${e.message}`));
  return page;
}

/** Console errors other than the connection failures a server restart causes. */
export function problems(page, { restart = false } = {}) {
  return page.problems.filter((p) => !(restart && /WebSocket|ERR_CONNECTION_REFUSED|Failed to load resource|Failed to fetch/.test(p)));
}

export async function shot(page, name) {
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
}

/** A customer fills the widget's pre-chat form. */
export async function customerStarts(page, server, quick, name, question) {
  await page.goto(server.url(`/widget#quick=${quick}`));
  await page.fill('input[name=name]', name);
  await page.fill('textarea[name=question]', question);
  await page.click('form.start button[type=submit]');
  await page.waitForSelector('.composer textarea');
}

/** Staff signs in on one of the staff pages. */
export async function staffLogin(page, server, path, username, password) {
  await page.goto(server.url(path));
  await page.fill('input[name=username]', username);
  await page.fill('input[name=password]', password);
  await page.click('.login-box button[type=submit]');
  await page.waitForSelector('body.in');
}

export { sleep };
