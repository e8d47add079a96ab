// What the end-to-end tests run against: the real kezchat binary (with the
// web app embedded) on a free loopback port with a fresh database, and
// Debian's chromium driven by playwright-core (never a downloaded browser).

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { vi } from 'vitest';

export const KEZCHAT = process.env.KEZCHAT_BIN ?? new URL('../../bin/kezchat', import.meta.url).pathname;
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const ARTIFACTS = new URL('./artifacts/', import.meta.url).pathname;

const run = promisify(execFile);

export async function freePort(): Promise<number> {
  const srv = createNetServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

export interface ChatServer {
  url: string;
  /** The server's --domain: e2e.test, or with federated its own loopback address (127.0.0.1:<port> of url). */
  domain: string;
  dir: string;
  stop(): Promise<void>;
  /** Runs a kezchat client command as the identity in file `who` (in dir). */
  cli(who: string, ...args: string[]): Promise<{ stdout: string; stderr: string }>;
}

/**
 * A chat server; with sigServer, a `kezchat sig-server` process beside it
 * and, as the production ingress does, one origin in front of both that
 * routes /v1/keys to the sig-server (url is then that origin's). With
 * federated, it federates (--federation, over plain HTTP on loopback) under
 * the domain 127.0.0.1:<port> of url, so that other servers and other
 * servers' web apps reach it at its domain.
 */
export async function startServer(opts: { pushEndpointOrigin?: string; sigServer?: boolean; federated?: boolean } = {}): Promise<ChatServer> {
  const dir = mkdtempSync(join(tmpdir(), 'kezchat-e2e-'));
  const port = await freePort();
  let url = `http://127.0.0.1:${port}`;
  const extra: { stop(): Promise<void> }[] = [];
  const sigArgs: string[] = [];
  if (opts.sigServer) {
    const sigPort = await freePort();
    const sig = spawn(KEZCHAT, ['sig-server', '--bind', `127.0.0.1:${sigPort}`, '--db', join(dir, 'sig.db'), '--metrics-bind', '', '--publish-rate', '0'], {
      stdio: ['ignore', 'ignore', process.env.E2E_VERBOSE ? 'inherit' : 'ignore'],
    });
    const sigExited = new Promise<void>((r) => sig.once('exit', () => r()));
    extra.push({ stop: async () => void (sig.kill('SIGTERM'), await sigExited) });
    const front = await startFront({ '/v1/keys': `http://127.0.0.1:${sigPort}` }, url);
    extra.push(front);
    sigArgs.push('--sig-server-url', `http://127.0.0.1:${sigPort}`, '--sig-server-public-url', front.url, '--key-cache-ttl', '1s');
    url = front.url;
  }
  const domain = opts.federated ? new URL(url).host : 'e2e.test';
  const fedArgs = opts.federated ? ['--federation', '--federation-insecure-loopback'] : [];
  const args = ['server', '--bind', `127.0.0.1:${port}`, '--db', join(dir, 'kez-chat.db'), '--domain', domain, '--public-url', url, ...sigArgs, ...fedArgs,
    '--metrics-bind', '', '--register-rate', '0', '--send-rate', '0', '--handle-send-rate', '0', '--failed-auth-rate', '0',
    '--vapid-subject', 'mailto:e2e@example.test', '--vapid-key-path', join(dir, 'vapid.pem')];
  if (opts.pushEndpointOrigin) args.push('--push-allow-endpoint', opts.pushEndpointOrigin);
  const proc: ChildProcess = spawn(KEZCHAT, args, { stdio: ['ignore', 'ignore', process.env.E2E_VERBOSE ? 'inherit' : 'ignore'] });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  await vi.waitFor(
    async () => {
      if (proc.exitCode !== null) throw new Error(`kezchat server exited with ${proc.exitCode}`);
      const res = await fetch(url + '/v1/readyz');
      if (res.status !== 200) throw new Error(`readyz: ${res.status}`);
    },
    { timeout: 20_000, interval: 100 },
  );
  return {
    url,
    domain,
    dir,
    async stop() {
      proc.kill('SIGTERM');
      await exited;
      for (const e of extra) await e.stop();
      rmSync(dir, { recursive: true, force: true });
    },
    cli: (who, ...cmd) => run(KEZCHAT, cmd, { env: { ...process.env, KEZ_URL: url, KEZ_IDENTITY: join(dir, who + '.json') } }),
  };
}

/** Passes req on to upstream at path and its answer back (streams included). */
function forward(upstream: URL, path: string, req: IncomingMessage, res: ServerResponse): void {
  const out = request({ host: upstream.hostname, port: upstream.port, method: req.method, path, headers: { ...req.headers, host: upstream.host } }, (up) => {
    res.writeHead(up.statusCode ?? 502, up.headers);
    up.pipe(res);
  });
  out.on('error', () => res.destroy());
  res.on('close', () => out.destroy());
  req.pipe(out);
}

/** Listens on a free loopback port and returns the server's URL. */
async function listenLocal(srv: Server): Promise<string> {
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
}

function stopServer(srv: Server): Promise<void> {
  return new Promise((r) => {
    srv.closeAllConnections();
    srv.close(() => r());
  });
}

/** One origin in front of several servers: a path prefix to its upstream, else fallback (streams pass through). */
async function startFront(routes: Record<string, string>, fallback: string): Promise<{ url: string; stop(): Promise<void> }> {
  const srv = createServer((req, res) => {
    const path = req.url ?? '/';
    const prefix = Object.keys(routes).find((p) => path === p || path.startsWith(p + '/') || path.startsWith(p + '?'));
    const upstream = new URL(prefix ? routes[prefix]! : fallback);
    forward(upstream, path, req, res);
  });
  const url = await listenLocal(srv);
  return {
    url,
    stop: () => stopServer(srv),
  };
}

export function launchBrowser(): Promise<Browser> {
  // Root in a container has no user namespaces for chromium's sandbox.
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
}

export async function newUser(browser: Browser, server: ChatServer, viewport = { width: 1280, height: 800 }): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.newContext({ viewport, baseURL: server.url });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto('/');
  return { context, page };
}

/** Creates an identity through the first-run screen. */
export async function register(page: Page, handle: string): Promise<void> {
  await page.getByLabel('Pick a handle').fill(handle);
  await page.getByRole('button', { name: 'Create identity' }).click();
  await page.getByText(`Signed in as @${handle}`).waitFor();
}

export async function openChat(page: Page, peer: string): Promise<void> {
  await page.getByLabel('Handle to chat with').fill(peer);
  await page.getByRole('button', { name: 'Chat', exact: true }).click();
  await page.getByRole('heading', { name: `@${peer}` }).waitFor();
}

export async function send(page: Page, body: string): Promise<void> {
  await page.getByLabel(/^Message to @/).fill(body);
  await page.getByLabel(/^Message to @/).press('Enter');
}

export function bubble(page: Page, body: string) {
  return page.getByRole('log').locator('li', { hasText: body });
}

/** A stand-in push service: records what the chat server POSTs to it. */
export async function startPushReceiver(): Promise<{ origin: string; received: { path: string; headers: IncomingMessage['headers'] }[]; stop(): Promise<void> }> {
  const received: { path: string; headers: IncomingMessage['headers'] }[] = [];
  const srv = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      received.push({ path: req.url ?? '', headers: req.headers });
      res.writeHead(201).end();
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as AddressInfo;
  return { origin: `http://127.0.0.1:${port}`, received, stop: () => new Promise((r) => srv.close(() => r())) };
}

export function artifactsDir(): string {
  mkdirSync(ARTIFACTS, { recursive: true });
  return ARTIFACTS;
}

/**
 * A compromised server, as the browser sees it: a proxy in front of the
 * real one that passes everything through (streams too) but, once told
 * to, answers another record for a handle. It counts the messages posted
 * through it.
 */
export async function startSwappingProxy(target: string): Promise<{
  url: string;
  posted: () => number;
  swap: (handle: string, record: unknown) => void;
  stop(): Promise<void>;
}> {
  const swapped = new Map<string, unknown>();
  let posted = 0;
  const upstream = new URL(target);
  const srv = createServer((req, res) => {
    const path = req.url ?? '/';
    const handle = req.method === 'GET' ? /^\/v1\/u\/([^/?]+)$/.exec(path)?.[1] : undefined;
    if (handle !== undefined && swapped.has(decodeURIComponent(handle))) {
      req.resume();
      res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' }).end(JSON.stringify(swapped.get(decodeURIComponent(handle))));
      return;
    }
    if (req.method === 'POST' && path === '/v1/messages') posted++;
    forward(upstream, path, req, res);
  });
  const url = await listenLocal(srv);
  return {
    url,
    posted: () => posted,
    swap: (handle, record) => swapped.set(handle, record),
    stop: () => stopServer(srv),
  };
}
