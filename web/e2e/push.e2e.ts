import { createECDH, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Browser, BrowserContext, Page, Worker } from 'playwright-core';
import { bubble, launchBrowser, newUser, openChat, register, send, startPushReceiver, startServer, type ChatServer } from './harness';

type Shown = { title: string; body: string; tag: string; data: { hash?: string } };

async function serviceWorker(context: BrowserContext, page: Page): Promise<Worker> {
  await page.evaluate(() => navigator.serviceWorker.ready);
  return context.serviceWorkers()[0] ?? (await context.waitForEvent('serviceworker'));
}

const notifications = (sw: Worker) =>
  sw.evaluate(async () =>
    (await (self as unknown as ServiceWorkerGlobalScope).registration.getNotifications()).map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data })),
  ) as Promise<Shown[]>;

describe('Web Push in the service worker', () => {
  let server: ChatServer;
  let browser: Browser;
  let alice: Page;
  let bob: Page;
  let bobContext: BrowserContext;

  beforeAll(async () => {
    server = await startServer();
    browser = await launchBrowser();
    alice = (await newUser(browser, server)).page;
    ({ page: bob, context: bobContext } = await newUser(browser, server));
    await bobContext.grantPermissions(['notifications'], { origin: server.url });
    await register(alice, 'alice');
    await register(bob, 'bob');
  });

  afterAll(async () => {
    await browser?.close();
    await server?.stop();
  });

  /** Delivers a push message to bob's service worker as a push service would. */
  async function deliverPush(data: string): Promise<void> {
    const cdp = await bobContext.newCDPSession(bob);
    const registration = new Promise<string>((resolve) =>
      cdp.on('ServiceWorker.workerRegistrationUpdated', (e) => {
        const r = e.registrations.find((r) => r.scopeURL === server.url + '/' && !r.isDeleted);
        if (r) resolve(r.registrationId);
      }),
    );
    await cdp.send('ServiceWorker.enable');
    await cdp.send('ServiceWorker.deliverPushMessage', { origin: server.url + '/', registrationId: await registration, data });
    await cdp.detach();
  }

  it('shows the generic notification, and its click moves the open tab to the chat', async () => {
    const sw = await serviceWorker(bobContext, bob);
    await openChat(alice, 'bob');
    await send(alice, 'ping for the push test');
    const row = bob.locator('a[data-peer="alice"]');
    await row.waitFor({ timeout: 10_000 });
    // The seq the server gave the message, from bob's stored history.
    const seq = await bob.evaluate(
      () =>
        new Promise<number>((resolve, reject) => {
          const open = indexedDB.open('kez-history:bob');
          open.onerror = () => reject(open.error);
          open.onsuccess = () => {
            const range = IDBKeyRange.bound(['p:alice', -Infinity], ['p:alice', Infinity]);
            const get = open.result.transaction('messages').objectStore('messages').getAll(range);
            get.onsuccess = () => resolve(get.result[0].seq);
            get.onerror = () => reject(get.error);
          };
        }),
    );
    await bob.goto('/#/settings');
    await bob.getByRole('heading', { name: 'Settings' }).waitFor();

    // What the server sends: routing metadata only. The notification names
    // no one, as Settings says, though its click leads to alice's chat.
    await deliverPush(JSON.stringify({ type: 'message', to: 'bob', seq }));
    await expect.poll(() => notifications(sw)).toEqual([{ title: 'kez-chat', body: 'New message', tag: 'chat:alice', data: { hash: '#/chat/alice' } }]);
    await sw.evaluate(async () => {
      for (const n of await (self as unknown as ServiceWorkerGlobalScope).registration.getNotifications()) n.close();
    });
    // Bob chooses to see who wrote.
    await bob.getByRole('switch', { name: 'Name who wrote' }).click();
    await expect.poll(() => bob.getByRole('switch', { name: 'Name who wrote' }).getAttribute('aria-checked')).toBe('true');
    await deliverPush(JSON.stringify({ type: 'message', to: 'bob', seq }));
    await expect.poll(() => notifications(sw)).toEqual([
      { title: 'kez-chat', body: 'New message from @alice', tag: 'chat:alice', data: { hash: '#/chat/alice' } },
    ]);

    // Headless chromium shows no notification to click, so the worker gets
    // the event the browser would dispatch on a click.
    await sw.evaluate(async () => {
      const scope = self as unknown as ServiceWorkerGlobalScope;
      const [n] = await scope.registration.getNotifications();
      scope.dispatchEvent(new NotificationEvent('notificationclick', { notification: n! }));
    });
    await expect.poll(() => new URL(bob.url()).hash).toBe('#/chat/alice');
    await bubble(bob, 'ping for the push test').waitFor();
    await expect.poll(() => notifications(sw)).toEqual([]);
  });

  it('a push it cannot place, or cannot even parse, still shows "New message"', async () => {
    const sw = await serviceWorker(bobContext, bob);
    await deliverPush(JSON.stringify({ type: 'message', to: 'bob', seq: 987654 }));
    await expect.poll(() => notifications(sw)).toEqual([{ title: 'kez-chat', body: 'New message', tag: 'inbox:bob', data: { hash: '#/chat' } }]);
    await deliverPush('this is not JSON');
    await expect.poll(async () => (await notifications(sw)).map((n) => n.body)).toEqual(['New message', 'New message']);
  });
});

describe('the Settings toggle', () => {
  it('subscribes with the server VAPID key and the server stores the subscription', async () => {
    const receiver = await startPushReceiver();
    const server = await startServer({ pushEndpointOrigin: receiver.origin });
    const browser = await launchBrowser();
    try {
      const ecdh = createECDH('prime256v1');
      ecdh.generateKeys();
      const stub = {
        endpoint: `${receiver.origin}/push/carol-1`,
        p256dh: ecdh.getPublicKey().toString('base64url'),
        auth: randomBytes(16).toString('base64url'),
      };
      const context = await browser.newContext({ baseURL: server.url });
      await context.grantPermissions(['notifications'], { origin: server.url });
      // Headless chromium has no push service: PushManager answers with a
      // subscription to the local receiver instead.
      await context.addInitScript((s: typeof stub) => {
        type W = typeof window & { __sub: PushSubscription | null; __serverKey?: string };
        const w = window as W;
        w.__sub = null;
        PushManager.prototype.subscribe = async function (opts?: PushSubscriptionOptionsInit) {
          const key = new Uint8Array(opts!.applicationServerKey as ArrayBuffer);
          w.__serverKey = btoa(String.fromCharCode(...key)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
          const sub = {
            endpoint: s.endpoint,
            expirationTime: null,
            options: { userVisibleOnly: true, applicationServerKey: opts!.applicationServerKey },
            getKey: () => null,
            toJSON: () => ({ endpoint: s.endpoint, expirationTime: null, keys: { p256dh: s.p256dh, auth: s.auth } }),
            unsubscribe: async () => ((w.__sub = null), true),
          };
          w.__sub = sub as unknown as PushSubscription;
          return w.__sub;
        };
        PushManager.prototype.getSubscription = async () => w.__sub;
      }, stub);
      const carol = await context.newPage();
      await carol.goto('/');
      await register(carol, 'carol');
      await carol.evaluate(() => navigator.serviceWorker.ready);
      await carol.getByRole('link', { name: 'Settings' }).click();
      const toggle = carol.getByRole('switch', { name: 'Background notifications (Web Push)' });
      expect(await toggle.getAttribute('aria-checked')).toBe('false');
      await toggle.click();
      await expect.poll(() => toggle.getAttribute('aria-checked')).toBe('true');
      expect(await carol.getByTestId('push-message').textContent()).toMatch(/on for this device/);
      const { public_key } = (await (await fetch(server.url + '/v1/push/vapid-public-key')).json()) as { public_key: string };
      expect(await carol.evaluate(() => (window as unknown as { __serverKey: string }).__serverKey)).toBe(public_key);

      // With carol's tab closed (no stream open), a message to her makes the
      // server push to the endpoint the toggle registered.
      await carol.close();
      await server.cli('dave', 'keygen');
      await server.cli('dave', 'register', 'dave');
      await vi.waitFor(
        async () => {
          if (receiver.received.length === 0) {
            await server.cli('dave', 'send', 'carol', 'are you there?');
            throw new Error('no push yet');
          }
        },
        { timeout: 15_000, interval: 500 },
      );
      expect(receiver.received[0]!.path).toBe('/push/carol-1');
      expect(receiver.received[0]!.headers.authorization).toMatch(/^vapid t=/);
      expect(receiver.received[0]!.headers['content-encoding']).toBe('aes128gcm');
    } finally {
      await browser.close();
      await server.stop();
      await receiver.stop();
    }
  });
});
