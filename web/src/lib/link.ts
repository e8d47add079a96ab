// Linking a device (docs/protocol.md, "Linking a device"): the existing
// device makes a 16-byte secret L and shows it as a code; both sides derive
// the channel and the key K from it; the new device's request and the
// existing device's response travel AES-GCM-wrapped under K, the response's
// keys HPKE-sealed to a key pair made for this one link.

import { concat, decodeB64, encodeB64, fromUtf8, sha256, utf8 } from './bytes';
import { openWithInfo, sealWithInfo, type EncKeyPair } from './crypto';

export const LINK_INFO = 'kez-chat/v1 link';
const NONCE = 12;

export interface LinkCode {
  server: string;
  handle: string;
  secret: Uint8Array<ArrayBuffer>;
}

/** What the new device writes to the request slot. */
export interface LinkRequest {
  alg: string;
  key: string; // the new device's signing key, base64url
  label: string;
  eph: string; // the X25519 key made for this link, base64url
}

/** What the existing device hands over, sealed to eph. */
export interface LinkResponse {
  handle: string;
  server: string;
  enc_private_key: string;
  enc_key: string;
  primary_id: string;
  primary_alg: string;
  primary_key: string;
  keys_version: number;
}

export class LinkError extends Error {
  override name = 'LinkError';
}

export const newLinkSecret = () => crypto.getRandomValues(new Uint8Array(16));

export const formatLinkCode = (c: LinkCode) => `kez-link:1:${c.server}:${c.handle}:${encodeB64(c.secret)}`;

/** Reads a code as the new device is given it (typed or scanned); spaces around are ignored. */
export function parseLinkCode(text: string): LinkCode {
  const parts = text.trim().split(':');
  if (parts.length < 5 || parts[0] !== 'kez-link' || parts[1] !== '1') throw new LinkError('This is not a kez-chat link code.');
  const secretText = parts.at(-1)!;
  const handle = parts.at(-2)!;
  const server = parts.slice(2, -2).join(':');
  let secret: Uint8Array<ArrayBuffer>;
  try {
    secret = decodeB64(secretText);
  } catch {
    throw new LinkError('The link code is damaged.');
  }
  if (secret.length !== 16 || !server || !handle) throw new LinkError('The link code is damaged.');
  return { server, handle, secret };
}

/** The channel: base64url(SHA-256("kez-link channel" || 0x00 || L)). */
export async function linkChannel(secret: Uint8Array<ArrayBuffer>): Promise<string> {
  return encodeB64(await sha256(concat(utf8('kez-link channel'), new Uint8Array([0]), secret)));
}

/** K = HKDF-SHA256(L, salt empty, info "kez-link key", 32 bytes). */
export async function linkKey(secret: Uint8Array<ArrayBuffer>): Promise<CryptoKey> {
  const base = await crypto.subtle.importKey('raw', secret, 'HKDF', false, ['deriveKey']);
  return crypto.subtle.deriveKey({ name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info: utf8('kez-link key') }, base, { name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
}

/** nonce (12) || AES-256-GCM(K, nonce, data), base64url: a slot's data. */
export async function wrap(k: CryptoKey, data: Uint8Array<ArrayBuffer>): Promise<string> {
  const nonce = crypto.getRandomValues(new Uint8Array(NONCE));
  return encodeB64(concat(nonce, new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv: nonce }, k, data))));
}

export async function unwrap(k: CryptoKey, text: string): Promise<Uint8Array<ArrayBuffer>> {
  try {
    const raw = decodeB64(text);
    return new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv: raw.slice(0, NONCE) }, k, raw.slice(NONCE)));
  } catch {
    throw new LinkError('The linked data does not open with this code.');
  }
}

/**
 * The check code both devices show: the first 6 digits of SHA-256(key || eph)
 * read as safety numbers are (each 5 bytes, big-endian, mod 100000, 5 digits).
 */
export async function checkCode(key: Uint8Array<ArrayBuffer>, eph: Uint8Array<ArrayBuffer>): Promise<string> {
  const sum = await sha256(concat(key, eph));
  let digits = '';
  for (let i = 0; i < 2; i++) {
    let n = 0;
    for (let j = 0; j < 5; j++) n = n * 256 + sum[5 * i + j]!;
    digits += String(n % 100000).padStart(5, '0');
  }
  return digits.slice(0, 6);
}

export async function sealRequest(k: CryptoKey, req: LinkRequest): Promise<string> {
  return wrap(k, utf8(JSON.stringify(req)));
}

export async function openRequest(k: CryptoKey, data: string): Promise<LinkRequest> {
  const r = JSON.parse(fromUtf8(await unwrap(k, data))) as Partial<LinkRequest>;
  if (r.alg !== 'ed25519' || typeof r.key !== 'string' || typeof r.eph !== 'string' || typeof r.label !== 'string') throw new LinkError('The new device asked with a malformed request.');
  if (decodeB64(r.key).length !== 32 || decodeB64(r.eph).length !== 32) throw new LinkError('The new device sent malformed keys.');
  const label = r.label.trim().slice(0, 64) || 'device';
  return { alg: r.alg, key: r.key, label, eph: r.eph };
}

export async function sealResponse(k: CryptoKey, eph: string, res: LinkResponse): Promise<string> {
  return wrap(k, await sealWithInfo(decodeB64(eph), utf8(JSON.stringify(res)), LINK_INFO));
}

export async function openResponse(k: CryptoKey, eph: EncKeyPair, data: string): Promise<LinkResponse> {
  let r: Partial<LinkResponse>;
  try {
    r = JSON.parse(fromUtf8(await openWithInfo(eph, await unwrap(k, data), LINK_INFO))) as Partial<LinkResponse>;
  } catch (e) {
    throw e instanceof LinkError ? e : new LinkError('The response does not open with this link.');
  }
  const strs = ['handle', 'server', 'enc_private_key', 'enc_key', 'primary_id', 'primary_alg', 'primary_key'] as const;
  if (strs.some((s) => typeof r[s] !== 'string') || typeof r.keys_version !== 'number') throw new LinkError('The response is malformed.');
  return r as LinkResponse;
}

/** A label for this device from the browser's own description. */
export function deviceLabel(ua: string): string {
  const os = /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS' : /Mac OS/.test(ua) ? 'macOS' : /Windows/.test(ua) ? 'Windows' : /Linux/.test(ua) ? 'Linux' : 'device';
  const browser = /Firefox\//.test(ua) ? 'Firefox' : /Edg\//.test(ua) ? 'Edge' : /Chrom(e|ium)\//.test(ua) ? 'Chrome' : /Safari\//.test(ua) ? 'Safari' : 'browser';
  return `${browser} on ${os}`;
}
