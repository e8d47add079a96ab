// The web app's load time with a large history (docs/benchmarks.md, "The
// web app's history at 100,000 messages"). Not a test: it prints figures.
//
// It serves the built app with bin/kezchat (make build), registers an
// identity in Debian's chromium (playwright-core), writes the history
// straight into the page's IndexedDB, then loads the app at one
// conversation again and again and reports, from navigation start and from
// the app's first render (its script running: "Opening kez-chat…"), when
// the first screen of the conversation list and of the conversation's last
// page is in the document and painted, and when the whole list and page are.
//
//   node scripts/bench-history.mjs [--messages 100000] [--conversations 200]
//     [--runs 5] [--page 50] [--layout records|legacy] [--trace FILE]
//
// --trace writes a Chrome trace of one more load (open it in
// chrome://tracing or Perfetto) and prints where its main thread's time
// went, by trace event.
//
// --layout legacy writes the history as the app stored it before issue 17:
// one idb-keyval document, history:<handle>. The app of that time reads it
// as it is; the app of now migrates it on the first load (reported apart).

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: opt } = parseArgs({
  options: {
    messages: { type: 'string', default: '100000' },
    conversations: { type: 'string', default: '200' },
    runs: { type: 'string', default: '5' },
    page: { type: 'string', default: '50' },
    layout: { type: 'string', default: 'records' },
    trace: { type: 'string' },
  },
});
const MESSAGES = Number(opt.messages);
const CONVERSATIONS = Number(opt.conversations);
const RUNS = Number(opt.runs);
const PAGE = Number(opt.page);
const LAYOUT = opt.layout;
if (!['records', 'legacy'].includes(LAYOUT)) throw new Error(`--layout: records or legacy, not ${LAYOUT}`);
const KEZCHAT = process.env.KEZCHAT_BIN ?? new URL('../../bin/kezchat', import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const ME = 'bench';
const peerName = (i) => `peer${String(i).padStart(3, '0')}`;
const TARGET = peerName(Math.floor(CONVERSATIONS / 2));

async function freePort() {
  const srv = createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

async function startServer() {
  const dir = mkdtempSync(join(tmpdir(), 'kezchat-bench-web-'));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const proc = spawn(KEZCHAT, ['server', '--bind', `127.0.0.1:${port}`, '--db', join(dir, 'kez-chat.db'), '--domain', 'bench.test', '--public-url', url,
    '--metrics-bind', '', '--register-rate', '0', '--send-rate', '0', '--handle-send-rate', '0', '--failed-auth-rate', '0',
    '--vapid-subject', 'mailto:bench@example.test', '--vapid-key-path', join(dir, 'vapid.pem')], { stdio: 'ignore' });
  const exited = new Promise((r) => proc.once('exit', r));
  for (let i = 0; ; i++) {
    if (proc.exitCode !== null) throw new Error(`kezchat server exited with ${proc.exitCode}`);
    if (await fetch(url + '/v1/readyz').then((r) => r.ok, () => false)) break;
    if (i > 200) throw new Error('kezchat server not ready after 20 s');
    await new Promise((r) => setTimeout(r, 100));
  }
  return { url, stop: async () => (proc.kill('SIGTERM'), await exited, rmSync(dir, { recursive: true, force: true })) };
}

/** Runs in the page: writes the history in the layout asked for. */
async function seed({ layout, me, messages, conversations, peers }) {
  const req = (r) => new Promise((ok, fail) => ((r.onsuccess = () => ok(r.result)), (r.onerror = () => fail(r.error))));
  const done = (tx) => new Promise((ok, fail) => ((tx.oncomplete = () => ok()), (tx.onerror = tx.onabort = () => fail(tx.error))));
  // Round robin over the conversations: the newest message of each is near the end.
  const message = (i) => {
    const peer = peers[i % conversations];
    const mine = i % 3 === 0;
    return { peer, mine, id: `m${i}`, body: `message ${i}: a line of about the length people write, with a few words more.`, ts: 1_700_000_000 + i, seq: mine ? undefined : i + 1, state: mine ? 'sent' : 'received' };
  };
  if (layout === 'legacy') {
    const convs = peers.map((peer) => ({ peer, messages: [], unread: 0 }));
    for (let i = 0; i < messages; i++) {
      const { peer, ...m } = message(i);
      if (m.seq === undefined) delete m.seq;
      convs[i % conversations].messages.push(m);
    }
    const db = await req(indexedDB.open('keyval-store'));
    const tx = db.transaction('keyval', 'readwrite');
    tx.objectStore('keyval').put({ cursor: 0, conversations: convs }, `history:${me}`);
    await done(tx);
    db.close();
    return;
  }
  const db = await req(indexedDB.open(`kez-history:${me}`));
  const tx = db.transaction(['messages', 'conversations', 'meta'], 'readwrite');
  const store = tx.objectStore('messages');
  const last = new Map();
  for (let i = 0; i < messages; i++) {
    const { peer, mine, ...m } = message(i);
    const rec = { conv: `p:${peer}`, order: i + 1, mid: m.id, from: mine ? me : peer, mine, kind: 'text', ...m };
    if (rec.seq === undefined) delete rec.seq;
    store.put(rec);
    last.set(peer, rec);
  }
  for (const peer of peers) {
    const m = last.get(peer);
    tx.objectStore('conversations').put({ conv: `p:${peer}`, group: false, title: peer, peer, unread: 0, last: m && { from: m.from, mine: m.mine, body: m.body, ts: m.ts, order: m.order, kind: 'text' } });
  }
  tx.objectStore('meta').put(messages, 'order');
  await done(tx);
  db.close();
}

/** Runs in the page: the time one more message takes to store, as each layout stores it. */
async function oneWrite({ layout, me }) {
  const req = (r) => new Promise((ok, fail) => ((r.onsuccess = () => ok(r.result)), (r.onerror = () => fail(r.error))));
  const done = (tx) => new Promise((ok, fail) => ((tx.oncomplete = () => ok()), (tx.onerror = tx.onabort = () => fail(tx.error))));
  if (layout === 'legacy') {
    // What the app did on each message: put the whole document again.
    const db = await req(indexedDB.open('keyval-store'));
    const doc = await req(db.transaction('keyval').objectStore('keyval').get(`history:${me}`));
    doc.conversations[0].messages.push({ id: 'extra', mine: false, body: 'one more', ts: 1_800_000_000, seq: 1e9, state: 'received' });
    const t0 = performance.now();
    const tx = db.transaction('keyval', 'readwrite');
    tx.objectStore('keyval').put(doc, `history:${me}`);
    await done(tx);
    const ms = performance.now() - t0;
    db.close();
    return ms;
  }
  const db = await req(indexedDB.open(`kez-history:${me}`));
  const t0 = performance.now();
  // What appendMessage does: read the order and the conversation, put three records.
  const tx = db.transaction(['messages', 'conversations', 'meta'], 'readwrite');
  const order = ((await req(tx.objectStore('meta').get('order'))) ?? 0) + 1;
  const conv = await req(tx.objectStore('conversations').get('p:peer000'));
  const m = { conv: 'p:peer000', order, id: 'extra', mid: 'extra', from: 'peer000', mine: false, body: 'one more', ts: 1_800_000_000, seq: 1e9, state: 'received', kind: 'text' };
  tx.objectStore('messages').put(m);
  tx.objectStore('conversations').put({ ...conv, last: { from: m.from, mine: false, body: m.body, ts: m.ts, order, kind: 'text' }, unread: conv.unread + 1 });
  tx.objectStore('meta').put(order, 'order');
  await done(tx);
  const ms = performance.now() - t0;
  db.close();
  return ms;
}

/**
 * Added to every document: notes when the first screen (the rows and
 * messages the app renders at once, src/lib/firstscreen.ts) is in the
 * document and when it is painted, and when the whole list and page are in
 * the document (the app adds them in the frame after).
 */
function observe({ conversations, page, firstRows, firstMessages }) {
  const marks = (window.__benchMarks = {});
  const rows = () => document.querySelectorAll('a[data-peer]').length;
  const bubbles = () => document.querySelectorAll('[role="log"] li[data-state]').length;
  const tell = () => {
    // Tells the bench through the console: waiting with waitForFunction
    // would compile Playwright's injected script in the page as it loads,
    // on the main thread the app needs (about 60-120 ms).
    if (marks.paint !== undefined && marks.list !== undefined && marks.page !== undefined && !marks.told) console.log('bench: shown', (marks.told = true));
  };
  new MutationObserver(() => {
    if (marks.shell === undefined && document.getElementById('app')?.firstElementChild) marks.shell = performance.now();
    if (marks.first === undefined && rows() >= Math.min(conversations, firstRows) && bubbles() >= Math.min(page, firstMessages)) {
      marks.first = performance.now();
      // Painted: requestAnimationFrame runs just before the frame's style,
      // layout and paint; a task queued from it runs once the frame is done,
      // and a user-blocking one before the app's own (the rest of the list).
      requestAnimationFrame(() => scheduler.postTask(() => ((marks.paint = performance.now()), tell()), { priority: 'user-blocking' }));
    }
    if (marks.list === undefined && rows() >= conversations) marks.list = performance.now();
    if (marks.page === undefined && bubbles() >= page) marks.page = performance.now();
    tell();
  }).observe(document, { subtree: true, childList: true });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const ms = (x) => `${x.toFixed(0)} ms`;

const server = await startServer();
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
try {
  const context = await browser.newContext({ baseURL: server.url, viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto('/');
  await page.getByLabel('Pick a handle').fill(ME);
  await page.getByRole('button', { name: 'Create identity' }).click();
  await page.getByText(`Signed in as @${ME}`).waitFor();
  const peers = Array.from({ length: CONVERSATIONS }, (_, i) => peerName(i));
  let t0 = performance.now();
  await page.evaluate(seed, { layout: LAYOUT, me: ME, messages: MESSAGES, conversations: CONVERSATIONS, peers });
  t0 = performance.now();
  console.log(`seeded ${MESSAGES} messages in ${CONVERSATIONS} conversations (${LAYOUT} layout)`);
  const firstScreen = readFileSync(new URL('../src/lib/firstscreen.ts', import.meta.url), 'utf8');
  const constant = (name) => Number(new RegExp(`${name} = (\\d+)`).exec(firstScreen)[1]);
  await context.addInitScript(observe, {
    conversations: CONVERSATIONS,
    page: Math.min(PAGE, Math.floor(MESSAGES / CONVERSATIONS)),
    firstRows: constant('FIRST_ROWS'),
    firstMessages: constant('FIRST_MESSAGES'),
  });

  const load = async () => {
    await page.goto('about:blank');
    const shown = page.waitForEvent('console', { predicate: (m) => m.text().startsWith('bench: shown'), timeout: 120_000 });
    await page.goto(`/#/chat/${TARGET}`);
    await shown;
    return page.evaluate(() => window.__benchMarks);
  };
  const first = await load();
  console.log(`first load (not counted; with --layout legacy on the new app, the migration): app script running ${ms(first.shell)}, first screen painted ${ms(first.paint)}, whole list ${ms(first.list)}, whole page ${ms(first.page)}`);
  if (LAYOUT === 'legacy') {
    // The new app moves the document in the background after showing the
    // latest messages; the old one never does. Wait (on the same page) for
    // the document to go, at most 10 minutes, before the measured loads.
    const hasDoc = () =>
      page.evaluate(
        () =>
          new Promise((ok) => {
            const r = indexedDB.open('keyval-store');
            r.onsuccess = () => (r.result.transaction('keyval').objectStore('keyval').getKey('history:bench').onsuccess = (e) => ok(e.target.result !== undefined));
          }),
      );
    let gone = false;
    for (const until = Date.now() + 600_000; !gone && Date.now() < until; ) {
      gone = !(await hasDoc());
      if (!gone) await new Promise((r) => setTimeout(r, 1000));
    }
    console.log(gone ? `the single document moved into the new stores and deleted ${ms(performance.now() - t0)} after the seeding` : 'the single document is still there (the app of before)');
  }
  const runs = [];
  for (let i = 0; i < RUNS; i++) {
    const r = await load();
    runs.push(r);
    console.log(`run ${i + 1}: app script running ${ms(r.shell)}, first screen ${ms(r.first)}, painted ${ms(r.paint)}; whole conversation list ${ms(r.list)}, last page of @${TARGET} ${ms(r.page)}`);
  }
  const med = (k) => ms(median(runs.map((r) => r[k])));
  const after = (k) => ms(median(runs.map((r) => r[k] - r.shell)));
  console.log(`median of ${RUNS} from navigation start: app script running ${med('shell')}, first screen in the document ${med('first')}, painted ${med('paint')}; whole list ${med('list')}, whole last page ${med('page')}`);
  console.log(`median of ${RUNS} from the app's first render: first screen ${after('first')}, painted ${after('paint')}; whole list ${after('list')}, whole last page ${after('page')}`);

  if (opt.trace) {
    const { writeFileSync } = await import('node:fs');
    await page.goto('about:blank');
    await browser.startTracing(page, { categories: ['devtools.timeline', 'disabled-by-default-devtools.timeline', 'v8.execute', 'blink', 'loading'] });
    const r = await load();
    const buf = await browser.stopTracing();
    writeFileSync(opt.trace, buf);
    const { traceEvents } = JSON.parse(buf.toString());
    const nav = traceEvents.find((e) => e.name === 'navigationStart' && e.args?.data?.documentLoaderURL?.includes('#/chat'));
    const start = nav ? nav.ts : Math.min(...traceEvents.filter((e) => e.ts > 0).map((e) => e.ts));
    const end = start + r.paint * 1000;
    const main = traceEvents.find((e) => e.name === 'thread_name' && e.args?.name === 'CrRendererMain');
    const totals = new Map();
    for (const e of traceEvents) {
      if (e.ph !== 'X' || !e.dur || e.ts < start || e.ts > end || (main && (e.pid !== main.pid || e.tid !== main.tid))) continue;
      totals.set(e.name, (totals.get(e.name) ?? 0) + e.dur / 1000);
    }
    console.log(`trace of one load (painted at ${ms(r.paint)}) in ${opt.trace}; main-thread events until the paint, inclusive ms:`);
    for (const [name, t] of [...totals].sort((a, b) => b[1] - a[1]).slice(0, 15)) console.log(`  ${name.padEnd(28)} ${t.toFixed(1)}`);
  }

  const writeLayout = LAYOUT === 'legacy' && (await page.evaluate(() => new Promise((ok) => {
    // The new app migrated the legacy document away: time the layout it left.
    const r = indexedDB.open('keyval-store');
    r.onsuccess = () => r.result.transaction('keyval').objectStore('keyval').get('history:bench').onsuccess = (e) => ok(e.target.result !== undefined);
  }))) ? 'legacy' : 'records';
  const writes = [];
  for (let i = 0; i < RUNS; i++) writes.push(await page.evaluate(oneWrite, { layout: writeLayout, me: ME }));
  console.log(`storing one more message (${writeLayout} layout): median ${median(writes).toFixed(1)} ms of ${RUNS}`);
} finally {
  await browser.close();
  await server.stop();
}
