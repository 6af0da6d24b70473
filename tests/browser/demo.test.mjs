// Drives the demo page (`ringcast serve --demo`) in Debian's headless Chromium with
// playwright-core (which never downloads a browser: it is told where /usr/bin/chromium is).
// Started by tests/browser.rs, which runs the daemons and passes their addresses:
//
//   RINGCAST_DEMO_URL        http://127.0.0.1:PORT/ of a --demo daemon without a token
//   RINGCAST_DEMO_TOKEN_URL  the same for a --demo daemon started with --api-token
//   RINGCAST_DEMO_TOKEN      that token
//   RINGCAST_DEMO_SCREENSHOT optional: write a screenshot of two clients chatting there
//   CHROMIUM                 optional: the browser (default /usr/bin/chromium)
//
// Prints one line per check and exits 0 only when every check passed.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join as joinPath } from 'node:path';
import { chromium } from 'playwright-core';

const DEADLINE_MS = 90_000;   // the whole run
const WAIT_MS = 10_000;       // any one thing the page should show

const baseUrl = need('RINGCAST_DEMO_URL');
const tokenUrl = need('RINGCAST_DEMO_TOKEN_URL');
const token = need('RINGCAST_DEMO_TOKEN');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set (this script is run by tests/browser.rs)`);
    process.exit(2);
  }
  return v;
}

const deadline = setTimeout(() => {
  console.error(`FAILED: the browser test did not finish within ${DEADLINE_MS / 1000} s`);
  process.exit(1);
}, DEADLINE_MS);

function step(what) {
  console.log(`ok - ${what}`);
}

/** Problems the page reported: uncaught errors, console errors (CSP violations are these). */
function watch(page, name, allowed = []) {
  const problems = [];
  page.on('pageerror', (e) => problems.push(`${name}: uncaught ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !allowed.some((re) => re.test(m.text()))) {
      problems.push(`${name}: console error: ${m.text()}`);
    }
  });
  page.on('dialog', (d) => {
    problems.push(`${name}: a dialog opened (${d.message()}): injected script ran`);
    d.dismiss().catch(() => {});
  });
  return problems;
}

async function text(page, selector) {
  return (await page.locator(selector).textContent({ timeout: WAIT_MS })) ?? '';
}

/** Wait until the element's text matches `re`. */
async function waitText(page, selector, re, what) {
  try {
    await page.waitForFunction(
      ([sel, source]) => {
        const e = document.querySelector(sel);
        return e !== null && new RegExp(source).test(e.textContent);
      },
      [selector, re.source],
      { timeout: WAIT_MS, polling: 50 },
    );
  } catch {
    const now = await page.locator(selector).first().textContent({ timeout: 1000 }).catch(() => '(absent)');
    assert.fail(`${what}: ${selector} never matched ${re} (it shows ${JSON.stringify(now)})`);
  }
}

/** Wait until the message log holds a received line whose text is exactly `message`. */
function waitMessage(page, message, what) {
  return waitMessageLine(page, 'in', message, what);
}

/** Wait until the log holds a line of `kind` whose text is exactly `line`. */
async function waitMessageLine(page, kind, line, what) {
  try {
    await page.waitForFunction(
      ([k, l]) => [...document.querySelectorAll(`#log li.${k} .text`)].some((e) => e.textContent === l),
      [kind, line],
      { timeout: WAIT_MS, polling: 50 },
    );
  } catch {
    const lines = await page.locator('#log li').allTextContents();
    assert.fail(`${what}: no ${kind} line ${JSON.stringify(line)}; the log: ${JSON.stringify(lines)}`);
  }
}

async function clientId(page) {
  await waitText(page, '#client-id', /^[0-9a-f]{28}$/, 'the welcome frame');
  return text(page, '#client-id');
}

async function join(page, group) {
  await page.fill('#group-input', group);
  await page.click('#join-form button');
  await page.locator(`#group-list li[data-group="${group}"]`).waitFor({ timeout: WAIT_MS });
}

async function say(page, message) {
  await page.fill('#chat-input', message);
  await page.click('#chat-form button');
}

async function push(page, target, message) {
  await page.selectOption('#push-target', target);
  await page.fill('#push-input', message);
  await page.click('#push-form button');
}

async function main() {
  const profile = mkdtempSync(joinPath(tmpdir(), 'ringcast-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 1200, height: 980 },
    timeout: 30_000,
  });
  try {
    await twoClients(context);
    await withToken(context);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

async function twoClients(context) {
  const a = await context.newPage();
  const b = await context.newPage();
  const problems = [watch(a, 'A'), watch(b, 'B')];
  const check = () => assert.deepEqual(problems.flat(), [], 'the pages reported problems');

  const page = await a.goto(baseUrl);
  assert.equal(page.status(), 200);
  assert.match(page.headers()['content-type'], /^text\/html/);
  assert.match(page.headers()['content-security-policy'], /script-src 'self'/);
  await b.goto(baseUrl);
  const [idA, idB] = [await clientId(a), await clientId(b)];
  assert.notEqual(idA, idB);
  assert.match(await text(a, '#ws-url'), /^ws:\/\/127\.0\.0\.1:\d+\/$/);
  step(`two pages connected over the WebSocket: A=${idA} B=${idB}`);

  // Live counts: the node has exactly these two connections.
  await waitText(a, '#stat-connections', /^2$/, 'A: node connections');
  await waitText(b, '#stat-connections', /^2$/, 'B: node connections');
  await waitText(a, '#shard-rows', /\d/, 'A: per-shard rows');
  step('both pages show 2 connections (GET /api/stats)');

  await join(a, 'lobby');
  await join(b, 'lobby');
  await waitText(a, '#group-list li[data-group="lobby"] .count', /^2$/, 'A: lobby members');
  await waitText(b, '#group-list li[data-group="lobby"] .count', /^2$/, 'B: lobby members');
  await waitText(a, '#stat-groups', /^1$/, 'A: node groups');
  assert.equal(await a.inputValue('#chat-target'), 'group:lobby');
  step('both joined "lobby" (add_group) and both see 2 members (GET /api/groups/lobby)');

  await say(a, 'hello from A');
  await waitMessage(b, 'hello from A', 'B receives A\'s message');
  await waitMessage(a, 'hello from A', 'A receives its own copy from the server');
  await waitText(a, '#log li.out .detail', /^send_to_group: accepted/, 'A: the send_to_group answer');
  await say(b, 'hi A, B here: ça marche');
  await waitMessage(a, 'hi A, B here: ça marche', 'A receives B\'s message');
  await waitMessage(b, 'hi A, B here: ça marche', 'B receives its own copy');
  step('A and B chat through the group (send_to_group)');

  if (process.env.RINGCAST_DEMO_SCREENSHOT) {
    await push(a, 'group:lobby', 'a push through POST /api/publish');
    await waitMessage(a, 'a push through POST /api/publish', 'the screenshot push');
    await waitText(a, '#push-result', /queued to 2/, 'the screenshot push answer');
    await waitText(a, '#stat-published', /^1$/, 'the published counter');
    await a.screenshot({ path: process.env.RINGCAST_DEMO_SCREENSHOT, fullPage: true });
    step(`screenshot written to ${process.env.RINGCAST_DEMO_SCREENSHOT}`);
  }

  // Hostile text from another client must arrive as text, never as markup; and text outside
  // the BMP survives the trip.
  const hostile = 'B <img src=x onerror="alert(1)"><script>alert(2)</script> & "quotes" 👋';
  await say(b, hostile);
  await waitMessage(a, hostile, 'A receives B\'s hostile message');
  for (const p of [a, b]) {
    assert.equal(await p.locator('#log img, #log script').count(), 0, 'message text became markup');
  }
  step('hostile text from another client stays text');

  // Push through the HTTP API from the page: to the group, then to B alone.
  await push(a, 'group:lobby', 'pushed to the lobby');
  await waitText(a, '#push-result', /^200: queued to 2 connection/, 'A: the publish answer');
  await waitMessage(a, 'pushed to the lobby', 'A receives the group push');
  await waitMessage(b, 'pushed to the lobby', 'B receives the group push');
  assert.match(await text(a, '#push-curl'), /curl -X POST http:\/\/127\.0\.0\.1:\d+\/api\/publish/);
  await push(b, 'me', 'pushed to B only');
  await waitText(b, '#push-result', /^200: queued to 1 connection/, 'B: the publish answer');
  await waitMessage(b, 'pushed to B only', 'B receives its own push');
  step('pushes from the page through POST /api/publish reach the group and one client');

  // A push from outside the page (what an application does) appears on it.
  const r = await fetch(new URL('/api/publish', baseUrl), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ data: 'from the application', to: { clients: [idA] } }),
  });
  assert.equal(r.status, 200);
  assert.equal((await r.json()).queued, 1);
  await waitMessage(a, 'from the application', 'A receives the application\'s push');
  step('a push from outside through the HTTP API appears on the page');

  // Send to everyone, then counts follow a page leaving.
  await a.selectOption('#chat-target', '*');
  await say(a, 'to everyone');
  await waitMessage(b, 'to everyone', 'B receives send_to_all');
  await b.locator('#group-list li[data-group="lobby"] button').click();
  await b.locator('#group-list li[data-group="lobby"]').waitFor({ state: 'detached', timeout: WAIT_MS });
  await waitText(a, '#group-list li[data-group="lobby"] .count', /^1$/, 'A: lobby after B left');
  await b.close();
  await waitText(a, '#stat-connections', /^1$/, 'A: node connections after B closed');
  step('send_to_all reaches B; counts drop when B leaves the group and closes');

  // The application closes A's connection: the page says why, reconnects with a new id and
  // joins its groups again.
  const kick = await fetch(new URL(`/api/clients/${idA}?code=4001&reason=kicked`, baseUrl), {
    method: 'DELETE',
  });
  assert.equal(kick.status, 200);
  await waitMessageLine(a, 'sys', 'WebSocket closed 4001 kicked', 'A: the close is shown');
  await waitText(a, '#client-id', /^[0-9a-f]{28}$/, 'A: a new welcome');
  assert.notEqual(await text(a, '#client-id'), idA, 'a new connection has a new id');
  await waitText(a, '#stat-connections', /^1$/, 'A: node connections after reconnecting');
  await waitText(a, '#group-list li[data-group="lobby"] .count', /^1$/, 'A: lobby rejoined');
  const rejoined = await (await fetch(new URL('/api/groups/lobby', baseUrl))).json();
  assert.deepEqual(rejoined.clients, [await text(a, '#client-id')]);
  step('closed by the API (4001), the page reconnects with a new id and rejoins its group');

  check();
  await a.close();
}

/** The API's request counter, read with the token. */
async function apiRequests(url) {
  const r = await fetch(new URL('/api/stats', url), { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(r.status, 200);
  return (await r.json()).api.requests;
}

async function withToken(context) {
  const page = await context.newPage();
  // The API answers 401 until the token is given: the browser logs those loads.
  const problems = watch(page, 'T', [/status of 401/]);
  const resp = await page.goto(tokenUrl);
  assert.equal(resp.status(), 200, 'the page itself needs no token');
  await clientId(page);
  assert.equal(await page.locator('#token-form').isVisible(), true, 'token field shown');
  await waitText(page, '#stats-status', /missing bearer token/, 'stats without a token');
  await push(page, 'me', 'refused');
  await waitText(page, '#push-result', /^401: missing bearer token/, 'push without a token');
  step('with --api-token: the page loads, the API answers 401, the page asks for the token');

  // After a 401 the page stops polling until it gets a token: no request (and no daemon log
  // line) every second.
  const before = await apiRequests(tokenUrl);
  await page.waitForTimeout(2500);
  assert.ok(await apiRequests(tokenUrl) - before <= 2, 'the page kept polling after a 401');
  await page.fill('#token-input', 'wrong-token');
  await page.click('#token-form button');
  await waitText(page, '#stats-status', /invalid bearer token/, 'stats with a wrong token');
  await page.fill('#token-input', token);
  await page.click('#token-form button');
  await waitText(page, '#stat-connections', /^1$/, 'stats with the token');
  await push(page, 'me', 'pushed with a token');
  await waitText(page, '#push-result', /^200: queued to 1 connection/, 'push with the token');
  await waitMessage(page, 'pushed with a token', 'the push with a token');
  assert.match(await text(page, '#push-curl'), /Authorization: Bearer \$TOKEN/);
  assert.doesNotMatch(await page.content(), new RegExp(token), 'the token is not shown');
  step('with the pasted token: live counts and pushes work');

  assert.deepEqual(problems, [], 'the page reported problems');
  await page.close();
}

try {
  await main();
  clearTimeout(deadline);
  console.log('demo page: all checks passed');
} catch (e) {
  console.error(`FAILED: ${e.stack || e}`);
  process.exit(1);
}
