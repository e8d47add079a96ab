// The chat server's HTTP API (docs/protocol.md, "Routes"), on the page's own
// origin. Every refusal becomes an ApiError carrying the protocol's code.

import type { Envelope, MessagePayload, PublicUser, RegisterPayload } from './protocol';
import { signRequest, type Signed, type SigningKey } from './signing';

export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly status: number, // 0: no answer (offline, timeout)
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface Receipt {
  to: string;
  seq: number;
  id: string;
}

export interface InboxPage {
  messages: Envelope[];
  next: number;
}

/** Who signs request auth: a registered handle and its key. */
export interface Signer {
  handle: string;
  server: string;
  signing: SigningKey;
}

let base = '';
/** Sets the server's origin (tests in Node); the page uses its own. */
export function setBaseUrl(url: string): void {
  base = url.replace(/\/$/, '');
}

const now = () => Math.floor(Date.now() / 1000);

async function call<T>(method: string, path: string, init: { body?: unknown; auth?: string; signal?: AbortSignal; origin?: string } = {}): Promise<T> {
  const headers: Record<string, string> = {};
  if (init.body !== undefined) headers['Content-Type'] = 'application/json';
  if (init.auth) headers['X-KEZ-Auth'] = init.auth;
  let res: Response;
  try {
    res = await fetch((init.origin ?? base) + path, {
      method,
      headers,
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
      signal: init.signal ?? AbortSignal.timeout(30_000),
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, 'network', `the server did not answer (${(e as Error).message})`);
  }
  const text = await res.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  if (!res.ok) {
    const err = (json as { error?: { code?: string; message?: string } } | undefined)?.error;
    throw new ApiError(res.status, err?.code ?? 'http_' + res.status, err?.message ?? `${method} ${path}: HTTP ${res.status}`);
  }
  return json as T;
}

async function auth(who: Signer, method: string, path: string, bindings: string[], ts = now()): Promise<string> {
  return signRequest(who.signing, who.server, method, path, ts, bindings);
}

export const health = () => call<{ server: string; status: string; version: string }>('GET', '/v1/healthz');

export const register = (doc: Signed<RegisterPayload>) => call<PublicUser>('POST', '/v1/register', { body: doc });

export const lookup = (handle: string) => call<PublicUser>('GET', '/v1/u/' + encodeURIComponent(handle));

/** The WebFinger document of acct:handle@server: it links the identity's key document. */
export const webfinger = (handle: string, server: string) =>
  call<{ links?: { rel: string; href?: string }[] }>('GET', '/.well-known/webfinger?resource=' + encodeURIComponent(`acct:${handle}@${server}`));

/** A page of an identity's key log on the sig-server at origin (which may be another origin: it answers CORS). */
export const keyLog = <D>(origin: string, primaryId: string, from: number) =>
  call<{ documents: D[]; next: number }>('GET', `/v1/keys/${encodeURIComponent(primaryId)}/log?from=${from}`, { origin: origin.replace(/\/$/, '') });

export const postMessage = (doc: Signed<MessagePayload>) => call<Receipt>('POST', '/v1/messages', { body: doc });

export async function inbox(who: Signer, since: number, limit = 100): Promise<InboxPage> {
  const path = `/v1/inbox/${who.handle}`;
  return call<InboxPage>('GET', `${path}?since=${since}&limit=${limit}`, { auth: await auth(who, 'GET', path, [`since=${since}`]) });
}

export async function ack(who: Signer, upto: number): Promise<{ deleted: number }> {
  const path = `/v1/inbox/${who.handle}`;
  return call('DELETE', `${path}?upto=${upto}`, { auth: await auth(who, 'DELETE', path, [`upto=${upto}`]) });
}

// A stream auth opens one stream (the server accepts it once): each gets a
// ts of its own, so two reconnects within a second do not sign the same
// string.
let lastStreamTs = 0;

/** The URL of the inbox stream, with fresh auth in the query (EventSource sets no headers). */
export async function streamUrl(who: Signer, since: number): Promise<string> {
  const path = `/v1/inbox/${who.handle}/stream`;
  lastStreamTs = Math.max(now(), lastStreamTs + 1);
  const a = await auth(who, 'GET', path, [], lastStreamTs);
  return `${base}${path}?auth=${encodeURIComponent(a)}&since=${since}`;
}

export const vapidPublicKey = () => call<{ public_key: string }>('GET', '/v1/push/vapid-public-key');

export async function pushSubscribe(who: Signer, sub: PushSubscriptionJSON): Promise<unknown> {
  const path = `/v1/push/subscribe/${who.handle}`;
  return call('POST', path, { body: sub, auth: await auth(who, 'POST', path, [`endpoint=${sub.endpoint}`]) });
}

export async function pushUnsubscribe(who: Signer, endpoint: string): Promise<unknown> {
  const path = `/v1/push/unsubscribe/${who.handle}`;
  return call('POST', path, { body: { endpoint }, auth: await auth(who, 'POST', path, [`endpoint=${endpoint}`]) });
}
