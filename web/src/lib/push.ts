// Background notifications (Web Push): subscribe this browser and tell the
// server, or undo both. The server's push says only that a message waits;
// the service worker shows a generic notification.

import { get, set } from 'idb-keyval';
import * as api from './api';
import { decodeB64 } from './bytes';

/**
 * Whether a notification names who wrote: off unless the person turns it
 * on, since a notification shows on a locked screen. The service worker
 * reads it; the server never knows (its push names no one).
 */
const NAME_SENDER_KEY = 'notify-name-sender';
export const notificationsNameSender = async (): Promise<boolean> => (await get<boolean>(NAME_SENDER_KEY)) === true;
export const setNotificationsNameSender = (on: boolean): Promise<void> => set(NAME_SENDER_KEY, on);

/** pushManager.subscribe can hang forever (no push service, a stuck prompt). */
const SUBSCRIBE_TIMEOUT_MS = 20_000;

export function pushSupported(): boolean {
  return 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;
}

/** iOS allows Web Push only for web apps added to the Home Screen. */
export function needsHomeScreenInstall(): boolean {
  const ios = /iPad|iPhone|iPod/.test(navigator.userAgent) || (navigator.platform === 'MacIntel' && navigator.maxTouchPoints > 1);
  const standalone = window.matchMedia('(display-mode: standalone)').matches || (navigator as { standalone?: boolean }).standalone === true;
  return ios && !standalone;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what} took longer than ${ms / 1000} s`)), ms);
    p.then(
      (v) => (clearTimeout(t), resolve(v)),
      (e) => (clearTimeout(t), reject(e)),
    );
  });
}

export async function isPushSubscribed(): Promise<boolean> {
  if (!pushSupported()) return false;
  const reg = await navigator.serviceWorker.getRegistration();
  return !!(await reg?.pushManager.getSubscription());
}

export async function enablePush(who: api.Signer): Promise<void> {
  if (!pushSupported()) throw new Error('This browser has no Web Push.');
  if ((await Notification.requestPermission()) !== 'granted') throw new Error('Notifications are blocked for this site; allow them in the browser settings.');
  const { public_key } = await api.vapidPublicKey();
  const reg = await withTimeout(navigator.serviceWorker.ready, SUBSCRIBE_TIMEOUT_MS, 'Starting the service worker');
  const sub = await withTimeout(
    reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: decodeB64(public_key) }),
    SUBSCRIBE_TIMEOUT_MS,
    'Subscribing to the push service',
  );
  try {
    await api.pushSubscribe(who, sub.toJSON());
  } catch (e) {
    await sub.unsubscribe().catch(() => {});
    throw e;
  }
}

export async function disablePush(who: api.Signer): Promise<void> {
  const reg = await navigator.serviceWorker.getRegistration();
  const sub = await reg?.pushManager.getSubscription();
  if (!sub) return;
  const endpoint = sub.endpoint;
  await sub.unsubscribe();
  await api.pushUnsubscribe(who, endpoint);
}
