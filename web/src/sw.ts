/// <reference lib="webworker" />
// The service worker: the app shell offline (Workbox precache), the API
// always from the network, and Web Push notifications.

import { cleanupOutdatedCaches, createHandlerBoundToURL, precacheAndRoute } from 'workbox-precaching';
import { NavigationRoute, registerRoute } from 'workbox-routing';
import { NetworkOnly } from 'workbox-strategies';
import { clientsClaim } from 'workbox-core';
import { get } from 'idb-keyval';
import * as api from './lib/api';
import { messageBySeq, openHistory } from './lib/history';
import { notificationsNameSender } from './lib/push';
import type { Identity } from './lib/keys';

declare const self: ServiceWorkerGlobalScope & { __WB_MANIFEST: (string | { url: string; revision: string | null })[] };

self.skipWaiting();
clientsClaim();
cleanupOutdatedCaches();
precacheAndRoute(self.__WB_MANIFEST);
registerRoute(({ url }) => url.pathname.startsWith('/v1/'), new NetworkOnly());
registerRoute(new NavigationRoute(createHandlerBoundToURL('/index.html'), { denylist: [/^\/v1\//, /^\/\.well-known\//] }));

interface PushNotice {
  type?: string;
  to?: string;
  seq?: number;
  from?: string; // not sent by protocol v1 servers; used when present
}

function parseNotice(data: PushMessageData | null): PushNotice {
  try {
    const n = data?.json() as PushNotice | undefined;
    return n && typeof n === 'object' ? n : {};
  } catch {
    return {};
  }
}

/** Who sent message seq, to route the notification: history first, then the inbox. */
async function senderOf(n: PushNotice): Promise<string | null> {
  if (typeof n.from === 'string') return n.from;
  if (typeof n.seq !== 'number' || typeof n.to !== 'string') return null;
  const id = await get<Identity>('identity');
  if (!id || id.handle !== n.to) return null;
  const db = await openHistory(id.handle);
  try {
    const m = await messageBySeq(db, n.seq);
    if (m && !m.mine) return m.from;
  } finally {
    db.close();
  }
  // Only the envelope's routing metadata is read here; the page verifies
  // and decrypts when it fetches the message.
  const page = await api.inbox(id, n.seq - 1, 1);
  const env = page.messages.find((e) => e.seq === n.seq);
  const from = env?.message?.payload?.from;
  return typeof from === 'string' ? from : null;
}

function withTimeout<T>(p: Promise<T>, ms: number, fallback: T): Promise<T> {
  return Promise.race([p.catch(() => fallback), new Promise<T>((r) => setTimeout(() => r(fallback), ms))]);
}

async function showPush(data: PushMessageData | null): Promise<void> {
  const n = parseNotice(data);
  const from = await withTimeout(senderOf(n), 3000, null);
  const title = 'kez-chat';
  // Who wrote is only for routing the click, unless the person chose to see
  // it (Settings): a notification shows on a locked screen.
  const named = from && (await notificationsNameSender().catch(() => false));
  const options: NotificationOptions & { renotify?: boolean } = {
    body: named ? `New message from @${from}` : 'New message',
    tag: from ? `chat:${from}` : `inbox:${n.to ?? ''}`,
    renotify: true,
    icon: '/icons/icon-192.png',
    badge: '/icons/icon-192.png',
    data: { hash: from ? `#/chat/${encodeURIComponent(from)}` : '#/chat' },
  };
  await self.registration.showNotification(title, options);
  try {
    const shown = await self.registration.getNotifications();
    await (self.navigator as Navigator & { setAppBadge?: (n: number) => Promise<void> }).setAppBadge?.(shown.length);
  } catch {
    // Badging is optional.
  }
}

self.addEventListener('push', (event) => {
  // Never throws and always shows something: a push without a notification
  // counts against the site in Chrome and Safari.
  event.waitUntil(
    showPush(event.data).catch(() => self.registration.showNotification('kez-chat', { body: 'New message', tag: 'inbox', data: { hash: '#/chat' } }).catch(() => {})),
  );
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const hash = typeof event.notification.data?.hash === 'string' ? (event.notification.data.hash as string) : '#/chat';
  event.waitUntil(
    (async () => {
      const tabs = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
      const tab = tabs.find((c) => new URL(c.url).origin === self.location.origin);
      if (tab) {
        tab.postMessage({ type: 'navigate', hash });
        await tab.focus().catch(() => {});
        return;
      }
      await self.clients.openWindow('/' + hash);
    })(),
  );
});

self.addEventListener('pushsubscriptionchange', (event) => {
  const e = event as ExtendableEvent & { oldSubscription?: PushSubscription | null; newSubscription?: PushSubscription | null };
  e.waitUntil(
    (async () => {
      const id = await get<Identity>('identity');
      if (!id) return;
      let sub = e.newSubscription ?? null;
      if (!sub) {
        const { public_key } = await api.vapidPublicKey();
        const key = Uint8Array.from(atob(public_key.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
        sub = await self.registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
      }
      await api.pushSubscribe(id, sub.toJSON());
      if (e.oldSubscription && e.oldSubscription.endpoint !== sub.endpoint) {
        await api.pushUnsubscribe(id, e.oldSubscription.endpoint).catch(() => {});
      }
    })().catch((err) => console.warn('resubscribing after pushsubscriptionchange:', err)),
  );
});
