// Checking the keys a server answers (docs/protocol.md, "Checking keys"):
// what this browser first saw of each peer is pinned; a record whose
// primary key differs, or whose enc_key no key document signed by the
// pinned primary key vouches for, is refused with KeyChanged. Safety
// numbers let two people check that each has the other's keys.

import { get, set } from 'idb-keyval';
import { decodeB64, equalBytes, sha256, utf8 } from './bytes';
import { canonicalize } from './jcs';
import type { PublicUser } from './protocol';
import { primaryId, verify, type Signed } from './signing';

/** What this browser has seen of a peer's identity. */
export interface Pin {
  primary_id: string;
  alg: string;
  key: string; // the primary key, base64url
  enc_key: string;
  keys_version: number; // the highest key document verified, 0 for none
}

export class KeyChanged extends Error {
  override name = 'KeyChanged';
  constructor(
    readonly handle: string,
    readonly was: Pin,
    readonly now: Pin,
    readonly why: string,
  ) {
    super(`the keys of ${handle} changed (${why})`);
  }
}

/** The server answers keys the identity did not sign in its key document. */
export class KeyDocumentMismatch extends Error {
  override name = 'KeyDocumentMismatch';
}

const pinOf = (u: PublicUser, version: number): Pin => ({ primary_id: u.primary_id, alg: u.alg, key: u.key, enc_key: u.enc_key, keys_version: version });

const samePin = (a: Pin, b: Pin) =>
  a.primary_id === b.primary_id && a.alg === b.alg && a.key === b.key && a.enc_key === b.enc_key && a.keys_version === b.keys_version;

// --- safety numbers ---------------------------------------------------

/** One identity's 30 digits (client.SafetyNumber). */
async function safetyHalf(alg: string, key: Uint8Array, address: string): Promise<string> {
  const enc = new TextEncoder();
  const label = enc.encode(`kez-chat safety number v1\0${alg}\0`);
  const tail = enc.encode(`\0${address}`);
  const input = new Uint8Array(label.length + key.length + tail.length);
  input.set(label);
  input.set(key, label.length);
  input.set(tail, label.length + key.length);
  const sum = await sha256(input);
  let digits = '';
  for (let i = 0; i < 6; i++) {
    let n = 0;
    for (let j = 0; j < 5; j++) n = n * 256 + sum[5 * i + j]!; // at most 2^40: exact
    digits += String(n % 100000).padStart(5, '0');
  }
  return digits;
}

/** The 60 digits two people compare, in 12 groups of 5, the same on both sides. */
export async function safetyNumber(algA: string, keyA: Uint8Array, addressA: string, algB: string, keyB: Uint8Array, addressB: string): Promise<string> {
  let [a, b] = await Promise.all([safetyHalf(algA, keyA, addressA), safetyHalf(algB, keyB, addressB)]);
  if (b < a) [a, b] = [b, a];
  return (a + b).match(/.{5}/g)!.join(' ');
}

// --- key documents ----------------------------------------------------

export interface KeyPayload {
  type: string;
  primary_id: string;
  version: number;
  prev: string;
  signing_keys: { alg: string; key: string; label: string }[];
  enc_key: string;
  ts: number;
}

const KEY_PAYLOAD_MEMBERS = 'enc_key,prev,primary_id,signing_keys,ts,type,version';

export interface KeyDocument {
  primaryId: string;
  version: number;
  prev: Uint8Array | null;
  hash: Uint8Array;
  signingKeys: { alg: string; key: string }[];
  encKey: string;
}

/** Verifies what a key document says about itself (server.ParseKeyDocument). */
export async function parseKeyDocument(doc: Signed<KeyPayload>): Promise<KeyDocument> {
  const bad = (why: string) => new KeyDocumentMismatch(`a key document ${why}`);
  const p = doc?.payload;
  if (!p || typeof p !== 'object' || Object.keys(p).sort().join(',') !== KEY_PAYLOAD_MEMBERS) throw bad('has other members than the protocol names');
  const s = doc.signature;
  let key: Uint8Array<ArrayBuffer>, sig: Uint8Array<ArrayBuffer>;
  try {
    key = decodeB64(s.key);
    sig = decodeB64(s.sig);
  } catch {
    throw bad('has a malformed signature');
  }
  const canonical = utf8(canonicalize(p));
  if (!(await verify(s.alg, key, canonical, sig))) throw bad('does not verify');
  if (p.type !== 'kez.sig.keys/v1') throw bad(`has type ${JSON.stringify(p.type)}`);
  if (p.primary_id !== (await primaryId(s.alg, key))) throw bad('is not signed by the primary key of its primary_id');
  if (!Number.isSafeInteger(p.version) || p.version < 1 || p.version > 4096) throw bad('has a bad version');
  if ((p.version === 1) !== (p.prev === '')) throw bad('has a bad prev');
  const keys = Array.isArray(p.signing_keys) ? p.signing_keys : [];
  if (keys.length < 1 || keys.length > 16) throw bad('lists no signing key, or too many');
  if (p.version === 1 && !keys.some((k) => k.alg === s.alg && k.key === s.key)) throw bad('of version 1 does not list its primary key');
  try {
    if (decodeB64(p.enc_key).length !== 32 || (p.prev !== '' && decodeB64(p.prev).length !== 32)) throw new Error();
    for (const k of keys) if (decodeB64(k.key).length !== 32) throw new Error();
  } catch {
    throw bad('has a malformed key');
  }
  return {
    primaryId: p.primary_id,
    version: p.version,
    prev: p.prev === '' ? null : decodeB64(p.prev),
    hash: await sha256(canonical),
    signingKeys: keys.map((k) => ({ alg: k.alg, key: k.key })),
    encKey: p.enc_key,
  };
}

/** Whether d is the version after prev (server.KeyDocument.Follows). */
export function follows(d: KeyDocument, prev: KeyDocument | null): boolean {
  if (!prev) return d.version === 1;
  return d.primaryId === prev.primaryId && d.version === prev.version + 1 && d.prev !== null && equalBytes(d.prev, prev.hash);
}

/** What trust needs from the network; tests give fakes. */
export interface TrustDeps {
  /** The WebFinger document of acct:handle@server. */
  webfinger: (handle: string, server: string) => Promise<{ links?: { rel: string; href?: string }[] }>;
  /** A page of an identity's key log at a sig-server's base URL. */
  keyLog: (base: string, primaryId: string, from: number) => Promise<{ documents: Signed<KeyPayload>[]; next: number }>;
}

const REL_KEYS = 'https://kez.lat/rel/keys';

/**
 * The peer's latest key document, its chain verified from version 1, and
 * checked to list the record's enc_key and device keys; null when no
 * sig-server is linked (or reachable from here), or the identity published
 * none. The record's enc_key then stands on its pin alone.
 */
export async function verifiedKeys(u: PublicUser, deps: TrustDeps): Promise<KeyDocument | null> {
  let base: string | undefined;
  try {
    const jrd = await deps.webfinger(u.handle, u.server);
    const href = jrd.links?.find((l) => l.rel === REL_KEYS)?.href;
    if (href) base = href.endsWith(`/v1/keys/${u.primary_id}`) ? href.slice(0, -`/v1/keys/${u.primary_id}`.length) : undefined;
    if (href && base === undefined) throw new KeyDocumentMismatch(`WebFinger links the keys of ${u.handle} to ${href}`);
  } catch (e) {
    if (e instanceof KeyDocumentMismatch) throw e;
    return null;
  }
  if (base === undefined) return null;
  let prev: KeyDocument | null = null;
  let from = 1;
  for (;;) {
    let page: { documents: Signed<KeyPayload>[]; next: number };
    try {
      page = await deps.keyLog(base, u.primary_id, from);
    } catch {
      return null; // not reachable from this browser: the pin decides
    }
    for (const raw of page.documents ?? []) {
      const d = await parseKeyDocument(raw);
      if (d.primaryId !== u.primary_id || !follows(d, prev)) throw new KeyDocumentMismatch(`the key log of ${u.handle} breaks at version ${d.version}`);
      prev = d;
      from = d.version + 1;
    }
    if (!page.next || !page.documents?.length) break;
  }
  if (!prev) return null;
  if (prev.encKey !== u.enc_key) throw new KeyDocumentMismatch(`the server answers an enc_key for ${u.handle} that its key document does not list`);
  for (const k of u.signing_keys ?? []) {
    if (!prev.signingKeys.some((d) => d.alg === k.alg && d.key === k.key)) throw new KeyDocumentMismatch(`the server answers a device key for ${u.handle} that its key document does not list`);
  }
  return prev;
}

// --- pins -------------------------------------------------------------

/** The pins of identity me, by peer: a Map, since a handle may be any name. */
export async function loadPins(me: string): Promise<Map<string, Pin>> {
  const list = (await get<[string, Pin][]>(`pins:${me}`)) ?? [];
  return new Map(list);
}

export async function savePins(me: string, pins: Map<string, Pin>): Promise<void> {
  await set(`pins:${me}`, [...pins]);
}

/**
 * Checks u against its key documents and its pin (kept under name: the bare
 * handle of a person of this server, the address of one elsewhere), pins it on first
 * contact, and moves the pin when a document signed by the pinned primary
 * key lists a new enc_key. Device keys nothing verified vouches for are
 * dropped from the record returned.
 */
export async function checkPeer(u: PublicUser, pins: Map<string, Pin>, deps: TrustDeps, name = u.handle): Promise<{ record: PublicUser; changed: boolean }> {
  const doc = await verifiedKeys(u, deps);
  const record = doc ? u : { ...u, signing_keys: [], keys_version: 0 };
  const now = pinOf(record, doc?.version ?? 0);
  const was = pins.get(name);
  if (!was) {
    pins.set(name, now);
    return { record, changed: true };
  }
  // A server that hides the documents once must not lower the version
  // pinned: a rollback would then pass for a first sight.
  if (!doc) now.keys_version = was.keys_version;
  if (was.primary_id !== now.primary_id || was.alg !== now.alg || was.key !== now.key) throw new KeyChanged(name, was, now, 'another primary key');
  if (doc && doc.version < was.keys_version) throw new KeyChanged(name, was, now, `key document version ${doc.version} answered, ${was.keys_version} seen before`);
  if (doc && doc.version === was.keys_version && was.enc_key !== now.enc_key) throw new KeyChanged(name, was, now, `a second key document of version ${doc.version}`);
  if (was.enc_key !== now.enc_key && !doc) throw new KeyChanged(name, was, now, 'another enc_key, which no key document vouches for');
  if (samePin(was, now)) return { record, changed: false };
  pins.set(name, now);
  return { record, changed: true };
}

/** The safety number of me (handle@server, my primary key) and the identity p pins for peer@server. */
export function safetyWith(meAlg: string, meKey: Uint8Array, meAddress: string, p: Pin, peerAddress: string): Promise<string> {
  return safetyNumber(meAlg, meKey, meAddress, p.alg, decodeB64(p.key), peerAddress);
}
