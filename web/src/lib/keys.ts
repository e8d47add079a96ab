// The identity: keys made in the browser and kept in IndexedDB, registered
// under a handle; and its passphrase-encrypted export, the only form in
// which a private key leaves the browser. Kept keys are non-extractable
// WebCrypto keys where the browser has Ed25519 and X25519: page code signs
// and decrypts with them but cannot read them. The raw keys, which only an
// export needs, are kept sealed (AES-GCM under a non-extractable key of
// their own), never as plain bytes beside the history.

import { del, get, set } from 'idb-keyval';
import { decodeB64, encodeB64, equalBytes, fromUtf8, utf8 } from './bytes';
import { generateEncKeyPair, nonExtractableEncKey, x25519PublicKey, type EncKeyPair } from './crypto';
import { TYPE_REGISTER, type RegisterPayload } from './protocol';
import { ed25519PublicKey, generateSigningKey, nonExtractableSigningKey, primaryId, signDocument, type Signed, type SigningKey } from './signing';

export interface Keys {
  signing: SigningKey;
  enc: EncKeyPair;
}

export interface Identity extends Keys {
  handle: string;
  server: string;
  primaryId: string;
  /**
   * The identity's primary public key, on a linked device (whose signing
   * key is its own device key); absent where the signing key is the primary.
   */
  primary?: PublicKey;
  /** The raw private keys, sealed, for an export: set once the identity is kept. */
  sealed?: SealedKeys;
}

/** Raw private keys encrypted under a non-extractable AES-GCM key stored with them. */
export interface SealedKeys {
  key: CryptoKey;
  iv: Uint8Array<ArrayBuffer>;
  data: Uint8Array<ArrayBuffer>;
}

interface RawKeys {
  signing_key: string; // the Ed25519 seed, base64url
  enc_key: string; // the X25519 private key, base64url
}

const IDENTITY_KEY = 'identity';
const SEALED_KIND = utf8('kez-chat-sealed-keys');

export interface PublicKey {
  alg: string;
  publicKey: Uint8Array<ArrayBuffer>;
}

/** The identity's primary public key: what safety numbers and key documents are made of. */
export const primaryKey = (id: Identity): PublicKey => id.primary ?? { alg: id.signing.alg, publicKey: id.signing.publicKey };

export async function generateKeys(): Promise<Keys> {
  return { signing: await generateSigningKey(), enc: await generateEncKeyPair() };
}

/** The identity as kept: non-extractable keys where the browser allows, the raw keys sealed. */
export async function keptIdentity(id: Identity): Promise<Identity> {
  if (id.sealed && !id.signing.secret && !id.enc.secret) return id;
  const raw = await rawKeys(id);
  const key = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const data = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv, additionalData: SEALED_KIND }, key, utf8(JSON.stringify(raw))));
  return {
    handle: id.handle,
    server: id.server,
    primaryId: id.primaryId,
    ...(id.primary && { primary: id.primary }),
    signing: await nonExtractableSigningKey(id.signing),
    enc: await nonExtractableEncKey(id.enc),
    sealed: { key, iv, data },
  };
}

/** The raw X25519 private key, base64url: what a device link hands to the new device (sealed to it). */
export async function encPrivateKey(id: Identity): Promise<string> {
  return (await rawKeys(id)).enc_key;
}

/** The raw private keys: from the sealed copy, or the key objects while they still hold them. */
async function rawKeys(id: Identity): Promise<RawKeys> {
  if (id.signing.secret && id.enc.secret) return { signing_key: encodeB64(id.signing.secret), enc_key: encodeB64(id.enc.secret) };
  if (!id.sealed) throw new Error('This identity holds no private keys to export.');
  const { key, iv, data } = id.sealed;
  const plain = await crypto.subtle.decrypt({ name: 'AES-GCM', iv, additionalData: SEALED_KIND }, key, data);
  return JSON.parse(fromUtf8(new Uint8Array(plain))) as RawKeys;
}

/** The kept identity; one stored before keys were kept non-extractable is converted, once. */
export async function loadIdentity(): Promise<Identity | undefined> {
  const id = await get<Identity>(IDENTITY_KEY);
  if (id && (!id.sealed || id.signing.secret || id.enc.secret)) return saveIdentity(id);
  return id;
}

/** Keeps id (non-extractable, raw keys sealed) and returns what was kept. */
export async function saveIdentity(id: Identity): Promise<Identity> {
  const kept = await keptIdentity(id);
  await set(IDENTITY_KEY, kept);
  return kept;
}

export const forgetIdentity = () => del(IDENTITY_KEY);

/** The handle rules of docs/protocol.md, checked before asking the server. */
export const RESERVED_HANDLES = new Set([
  'admin', 'administrator', 'root', 'support', 'system', 'kez', 'www', 'api', 'abuse',
  'postmaster', 'hostmaster', 'webmaster', 'security', 'noreply', 'no-reply', 'help', 'info',
]);

/**
 * What a handle looks like to a hurried reader (server.HandleSkeleton):
 * without _ - ., with 0 1 i 3 4 5 7 rn vv read as o l l e a s t m w. Two
 * handles with one skeleton are look-alikes.
 */
export function handleSkeleton(handle: string): string {
  const map: Record<string, string> = { '0': 'o', '1': 'l', i: 'l', '3': 'e', '4': 'a', '5': 's', '7': 't' };
  let s = '';
  for (const c of handle) {
    if (c === '_' || c === '-' || c === '.') continue;
    s += map[c] ?? c;
  }
  return s.replaceAll('rn', 'm').replaceAll('vv', 'w');
}

const reservedSkeletons = new Map([...RESERVED_HANDLES].map((h) => [handleSkeleton(h), h]));

export function handleProblem(handle: string): string | null {
  if (handle.length < 3 || handle.length > 32) return 'A handle is 3 to 32 characters long.';
  if (!/^[a-z0-9][a-z0-9_.-]*$/.test(handle)) return 'Use lowercase letters, digits, _ - and . only, starting with a letter or digit.';
  const reserved = reservedSkeletons.get(handleSkeleton(handle));
  if (reserved === handle) return `"${handle}" is reserved; pick another.`;
  if (reserved !== undefined) return `"${handle}" looks like the reserved "${reserved}"; pick another.`;
  return null;
}

export async function registration(keys: Keys, server: string, handle: string, ts: number): Promise<Signed<RegisterPayload>> {
  return signDocument(keys.signing, {
    type: TYPE_REGISTER,
    server,
    handle,
    primary_id: await primaryId(keys.signing.alg, keys.signing.publicKey),
    enc_key: encodeB64(keys.enc.publicKey),
    ts,
  });
}

// The export: the Go client's identity file (v, alg, signing_key, enc_key,
// handle, server), encrypted with AES-256-GCM under a key stretched from the
// passphrase with PBKDF2-SHA-256.
const EXPORT_KIND = 'kez-chat-identity-export';
const PBKDF2_ITERATIONS = 600_000;
/** What an import accepts: OWASP's floor for PBKDF2-SHA-256, and ten times this app's count. */
const MIN_PBKDF2_ITERATIONS = 600_000;
const MAX_PBKDF2_ITERATIONS = 6_000_000;

interface ExportFile {
  kind: string;
  v: 1;
  kdf: { name: 'PBKDF2'; hash: 'SHA-256'; iterations: number; salt: string };
  cipher: { name: 'AES-GCM'; iv: string };
  data: string;
}

async function passphraseKey(passphrase: string, salt: Uint8Array<ArrayBuffer>, iterations: number): Promise<CryptoKey> {
  const base = await crypto.subtle.importKey('raw', utf8(passphrase.normalize('NFC')), 'PBKDF2', false, ['deriveKey']);
  return crypto.subtle.deriveKey({ name: 'PBKDF2', hash: 'SHA-256', salt, iterations }, base, { name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
}

export async function exportIdentity(id: Identity, passphrase: string, iterations = PBKDF2_ITERATIONS): Promise<string> {
  if (passphrase.length < 8) throw new Error('Use a passphrase of at least 8 characters.');
  const salt = crypto.getRandomValues(new Uint8Array(16));
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const raw = await rawKeys(id);
  // A linked device's export names the primary key its own key is a device of.
  const primary = id.primary && { primary_id: id.primaryId, primary_alg: id.primary.alg, primary_key: encodeB64(id.primary.publicKey) };
  const plain = utf8(JSON.stringify({ v: 1, alg: id.signing.alg, signing_key: raw.signing_key, enc_key: raw.enc_key, handle: id.handle, server: id.server, ...primary }));
  const data = await crypto.subtle.encrypt({ name: 'AES-GCM', iv, additionalData: utf8(EXPORT_KIND) }, await passphraseKey(passphrase, salt, iterations), plain);
  const file: ExportFile = {
    kind: EXPORT_KIND,
    v: 1,
    kdf: { name: 'PBKDF2', hash: 'SHA-256', iterations, salt: encodeB64(salt) },
    cipher: { name: 'AES-GCM', iv: encodeB64(iv) },
    data: encodeB64(new Uint8Array(data)),
  };
  return JSON.stringify(file, null, 2);
}

export async function importIdentity(text: string, passphrase: string): Promise<Identity> {
  let file: ExportFile;
  try {
    file = JSON.parse(text) as ExportFile;
  } catch {
    throw new Error('This is not a kez-chat identity export.');
  }
  if (file?.kind !== EXPORT_KIND || file.v !== 1 || file.kdf?.name !== 'PBKDF2' || file.kdf.hash !== 'SHA-256' || file.cipher?.name !== 'AES-GCM') {
    throw new Error('This is not a kez-chat identity export.');
  }
  // The iteration count comes from the file: bounded, so a crafted file can
  // neither make the passphrase cheap to guess nor hang this device.
  const n = file.kdf.iterations;
  if (!Number.isSafeInteger(n) || n < MIN_PBKDF2_ITERATIONS || n > MAX_PBKDF2_ITERATIONS) {
    throw new Error(`This export's key derivation (${String(n)} PBKDF2 iterations) is outside ${MIN_PBKDF2_ITERATIONS} to ${MAX_PBKDF2_ITERATIONS}; it was not made by kez-chat.`);
  }
  let plain: ArrayBuffer;
  try {
    const key = await passphraseKey(passphrase, decodeB64(file.kdf.salt), file.kdf.iterations);
    plain = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: decodeB64(file.cipher.iv), additionalData: utf8(EXPORT_KIND) }, key, decodeB64(file.data));
  } catch {
    throw new Error('Wrong passphrase, or the file was altered.');
  }
  const f = JSON.parse(fromUtf8(new Uint8Array(plain))) as {
    v: number;
    alg: string;
    signing_key: string;
    enc_key: string;
    handle: string;
    server: string;
    primary_id?: string;
    primary_alg?: string;
    primary_key?: string;
  };
  if (f.v !== 1 || f.alg !== 'ed25519' || !f.handle || !f.server) throw new Error('This export holds an identity this app cannot use.');
  const secret = decodeB64(f.signing_key);
  const encSecret = decodeB64(f.enc_key);
  const signing: SigningKey = { alg: 'ed25519', secret, publicKey: await ed25519PublicKey(secret) };
  const enc: EncKeyPair = { secret: encSecret, publicKey: await x25519PublicKey(encSecret) };
  const id: Identity = { signing, enc, handle: f.handle, server: f.server, primaryId: await primaryId('ed25519', signing.publicKey) };
  if (f.primary_key !== undefined) {
    const primary = { alg: f.primary_alg ?? '', publicKey: decodeB64(f.primary_key) };
    if (primary.alg !== 'ed25519' || (await primaryId(primary.alg, primary.publicKey)) !== f.primary_id) throw new Error('This export names a primary key that is not its identity’s.');
    Object.assign(id, { primary, primaryId: f.primary_id });
  }
  return id;
}

/** Whether a public record is this identity's (after import, before use). */
export function recordMatches(id: Keys, rec: { alg: string; key: string; enc_key: string }): boolean {
  return rec.alg === id.signing.alg && equalBytes(decodeB64(rec.key), id.signing.publicKey) && equalBytes(decodeB64(rec.enc_key), id.enc.publicKey);
}
