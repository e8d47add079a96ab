// The chat server's HTTP API (docs/protocol.md, "Routes"), on the page's own
// origin. Every refusal becomes an ApiError carrying the protocol's code.

import type { Envelope, MessagePayload, PublicUser, RegisterPayload } from './protocol';
import { encodeB64, sha256, utf8 } from './bytes';
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

/**
 * A stored message's receipt; one for a person of another server is queued
 * in this server's outbox (to is then the address, and there is no seq).
 */
export interface Receipt {
  to: string;
  seq?: number;
  id: string;
  state?: 'queued';
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

async function call<T>(method: string, path: string, init: { body?: unknown; raw?: string; auth?: string; signal?: AbortSignal; origin?: string } = {}): Promise<T | undefined> {
  const headers: Record<string, string> = {};
  if (init.body !== undefined || init.raw !== undefined) headers['Content-Type'] = 'application/json';
  if (init.auth) headers['X-KEZ-Auth'] = init.auth;
  let res: Response;
  try {
    res = await fetch((init.origin ?? base) + path, {
      method,
      headers,
      body: init.raw ?? (init.body === undefined ? undefined : JSON.stringify(init.body)),
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
  return json as T | undefined;
}

/** A call whose answer always has a body. */
async function callJSON<T>(method: string, path: string, init: Parameters<typeof call>[2] = {}): Promise<T> {
  return (await call<T>(method, path, init)) as T;
}

async function auth(who: Signer, method: string, path: string, bindings: string[], ts = now()): Promise<string> {
  return signRequest(who.signing, who.server, method, path, ts, bindings);
}

export const health = () => callJSON<{ server: string; status: string; version: string }>('GET', '/v1/healthz');

export const register = (doc: Signed<RegisterPayload>) => callJSON<PublicUser>('POST', '/v1/register', { body: doc });

export const lookup = (handle: string) => callJSON<PublicUser>('GET', '/v1/u/' + encodeURIComponent(handle));

/** The WebFinger document of acct:handle@server: it links the identity's key document. */
export const webfinger = (handle: string, server: string) =>
  callJSON<{ links?: { rel: string; href?: string }[] }>('GET', '/.well-known/webfinger?resource=' + encodeURIComponent(`acct:${handle}@${server}`));

/** A page of an identity's key log on the sig-server at origin (which may be another origin: it answers CORS). */
export const keyLog = <D>(origin: string, primaryId: string, from: number) =>
  callJSON<{ documents: D[]; next: number }>('GET', `/v1/keys/${encodeURIComponent(primaryId)}/log?from=${from}`, { origin: origin.replace(/\/$/, '') });

export const postMessage = (doc: Signed<MessagePayload>) => callJSON<Receipt>('POST', '/v1/messages', { body: doc });

export async function inbox(who: Signer, since: number, limit = 100): Promise<InboxPage> {
  const path = `/v1/inbox/${who.handle}`;
  return callJSON<InboxPage>('GET', `${path}?since=${since}&limit=${limit}`, { auth: await auth(who, 'GET', path, [`since=${since}`]) });
}

export async function ack(who: Signer, upto: number): Promise<{ deleted: number }> {
  const path = `/v1/inbox/${who.handle}`;
  return callJSON('DELETE', `${path}?upto=${upto}`, { auth: await auth(who, 'DELETE', path, [`upto=${upto}`]) });
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

export const vapidPublicKey = () => callJSON<{ public_key: string }>('GET', '/v1/push/vapid-public-key');

export async function pushSubscribe(who: Signer, sub: PushSubscriptionJSON): Promise<unknown> {
  const path = `/v1/push/subscribe/${who.handle}`;
  return callJSON('POST', path, { body: sub, auth: await auth(who, 'POST', path, [`endpoint=${sub.endpoint}`]) });
}

export async function pushUnsubscribe(who: Signer, endpoint: string): Promise<unknown> {
  const path = `/v1/push/unsubscribe/${who.handle}`;
  return callJSON('POST', path, { body: { endpoint }, auth: await auth(who, 'POST', path, [`endpoint=${endpoint}`]) });
}

// --- issue #17: group sends, blobs, typing, link channels, key documents ----

/** base64url SHA-256 of a body exactly as sent: what the sha256= binding names. */
async function bodyDigest(body: Uint8Array<ArrayBuffer>): Promise<string> {
  return encodeB64(await sha256(body));
}

/** One request, one signed document per recipient, stored all or none. */
export async function postBatch(who: Signer, docs: Signed<MessagePayload>[]): Promise<{ receipts: Receipt[] }> {
  const path = `/v1/batch/${who.handle}`;
  const raw = JSON.stringify({ messages: docs });
  const d = await bodyDigest(utf8(raw));
  return callJSON('POST', path, { raw, auth: await auth(who, 'POST', path, [`sha256=${d}`]) });
}

/** Uploads an encrypted attachment, reporting progress (bytes sent, of total). */
export async function uploadBlob(who: Signer, blob: Uint8Array<ArrayBuffer>, onProgress?: (sent: number, total: number) => void): Promise<{ id: string; size: number; sha256: string }> {
  const path = `/v1/blobs/${who.handle}`;
  const digest = await bodyDigest(blob);
  const a = await auth(who, 'POST', path, [`sha256=${digest}`]);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    // The digest rides in the query too, so the server checks the auth before the body.
    xhr.open('POST', `${base}${path}?sha256=${digest}`);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.setRequestHeader('X-KEZ-Auth', a);
    xhr.upload.onprogress = (e) => onProgress?.(e.loaded, e.total || blob.length);
    xhr.onerror = () => reject(new ApiError(0, 'network', 'the server did not answer the upload'));
    xhr.onload = () => {
      let json: { id?: string; size?: number; sha256?: string; error?: { code?: string; message?: string } } | undefined;
      try {
        json = JSON.parse(xhr.responseText);
      } catch {
        json = undefined;
      }
      if (xhr.status >= 200 && xhr.status < 300 && json?.id) return resolve(json as { id: string; size: number; sha256: string });
      reject(new ApiError(xhr.status, json?.error?.code ?? 'http_' + xhr.status, json?.error?.message ?? `upload: HTTP ${xhr.status}`));
    };
    xhr.send(blob);
  });
}

/** Downloads a blob's bytes as uploaded, from this server or, for a sender elsewhere, the sender's (origin). */
export async function getBlob(id: string, origin?: string): Promise<Uint8Array<ArrayBuffer>> {
  let res: Response;
  try {
    res = await fetch(`${origin ?? base}/v1/blobs/${encodeURIComponent(id)}`, { signal: AbortSignal.timeout(120_000) });
  } catch (e) {
    throw new ApiError(0, 'network', `the server did not answer (${(e as Error).message})`);
  }
  if (!res.ok) throw new ApiError(res.status, res.status === 404 ? 'unknown_blob' : 'http_' + res.status, `blob ${id}: HTTP ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

/**
 * Typing notes (docs/protocol.md, "POST /v1/typing"): to this server's
 * people, and beside them (remote) one signed kez.chat.typing/v1 document
 * per other server, which this server relays at once.
 */
export async function postTyping(who: Signer, to: { to: string; ct: string }[], remote: Signed<object>[] = []): Promise<{ recipients: number; servers?: number }> {
  const path = `/v1/typing/${who.handle}`;
  const raw = JSON.stringify(remote.length ? { to, remote } : { to });
  return callJSON('POST', path, { raw, auth: await auth(who, 'POST', path, [`sha256=${await bodyDigest(utf8(raw))}`]) });
}

export async function openLink(who: Signer, channel: string): Promise<{ channel: string; expires: number }> {
  const path = `/v1/link/${who.handle}`;
  return callJSON('POST', `${path}?channel=${channel}`, { raw: '', auth: await auth(who, 'POST', path, [`channel=${channel}`]) });
}

export const putLinkRequest = (channel: string, data: string) => call('PUT', `/v1/link/${channel}/request`, { body: { data } });

export async function putLinkResponse(who: Signer, channel: string, data: string): Promise<unknown> {
  const path = `/v1/link/${channel}/response`;
  const raw = JSON.stringify({ data });
  return call('PUT', path, { raw, auth: await auth(who, 'PUT', path, [`handle=${who.handle}`, `sha256=${await bodyDigest(utf8(raw))}`]) });
}

/** A link slot's data once written, undefined while it is not (after waiting up to wait seconds). */
export async function getLinkSlot(channel: string, slot: 'request' | 'response', wait = 25): Promise<string | undefined> {
  const r = await call<{ data: string }>('GET', `/v1/link/${channel}/${slot}?wait=${wait}`, { signal: AbortSignal.timeout((wait + 10) * 1000) });
  return r?.data;
}

/** The latest key document of an identity on the sig-server at origin; undefined when it published none. */
export async function latestKeys<D>(origin: string, primaryId: string): Promise<D | undefined> {
  try {
    return await callJSON<D>('GET', `/v1/keys/${encodeURIComponent(primaryId)}`, { origin: origin.replace(/\/$/, '') });
  } catch (e) {
    if (e instanceof ApiError && e.code === 'unknown_identity') return undefined;
    throw e;
  }
}

export const publishKeys = (origin: string, doc: Signed<unknown>) => callJSON<{ primary_id: string; version: number; hash: string }>('POST', '/v1/keys', { body: doc, origin: origin.replace(/\/$/, '') });

// --- issue #20: federation ---------------------------------------------------

/** GETs a URL of any origin (another server's WebFinger, record: they answer CORS) and answers its JSON. */
export function getJSON<T>(url: string): Promise<T> {
  const u = new URL(url);
  return callJSON<T>('GET', u.pathname + u.search, { origin: u.origin });
}

/** One document of this identity's outbox (docs/protocol.md, "GET /v1/outbox/{handle}"). */
export interface OutboxEntry {
  to: string;
  id: string;
  state: 'queued' | 'delivered' | 'failed';
  attempts?: number;
  queued_at?: number;
  updated_at?: number;
  error?: { code: string; message?: string };
}

export async function outbox(who: Signer): Promise<{ entries: OutboxEntry[] }> {
  const path = `/v1/outbox/${who.handle}`;
  return callJSON('GET', path, { auth: await auth(who, 'GET', path, []) });
}

/** Who may write to an identity (docs/protocol.md, "PUT /v1/privacy/{handle}"). */
export interface Privacy {
  strangers: 'accept' | 'refuse';
  known: string[];
  blocked: string[];
}

export async function getPrivacy(who: Signer): Promise<Privacy> {
  const path = `/v1/privacy/${who.handle}`;
  return callJSON('GET', path, { auth: await auth(who, 'GET', path, []) });
}

export async function putPrivacy(who: Signer, p: Privacy): Promise<Privacy> {
  const path = `/v1/privacy/${who.handle}`;
  const raw = JSON.stringify(p);
  return callJSON('PUT', path, { raw, auth: await auth(who, 'PUT', path, [`sha256=${await bodyDigest(utf8(raw))}`]) });
}
