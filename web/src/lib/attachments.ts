// Attachments (docs/protocol.md, "Attachments"): each file, and each image's
// thumbnail, encrypted on the device under a fresh 32-byte key,
//   blob = nonce (12) || AES-256-GCM(key, nonce, file, aad "kez-chat/v1 attachment")
// named by its base64url SHA-256; and the sizing of thumbnails and of
// images scaled down before upload.

import { concat, decodeB64, encodeB64, sha256, utf8 } from './bytes';

const AAD = utf8('kez-chat/v1 attachment');
const NONCE = 12;
export const THUMB_MAX = 320;
/** The longer side an image is scaled down to when the person asks for smaller uploads. */
export const DOWNSCALE_MAX = 2048;

export interface Encrypted {
  blob: Uint8Array<ArrayBuffer>;
  key: string;
  sha256: string;
}

export class AttachmentCorrupt extends Error {
  override name = 'AttachmentCorrupt';
}

export async function digest(blob: Uint8Array<ArrayBuffer>): Promise<string> {
  return encodeB64(await sha256(blob));
}

async function aesKey(raw: Uint8Array<ArrayBuffer>, use: KeyUsage): Promise<CryptoKey> {
  if (raw.length !== 32) throw new AttachmentCorrupt('an attachment key is 32 bytes');
  return crypto.subtle.importKey('raw', raw, 'AES-GCM', false, [use]);
}

/** Encrypts a file under a fresh key. */
export async function encryptAttachment(file: Uint8Array<ArrayBuffer>): Promise<Encrypted> {
  const raw = crypto.getRandomValues(new Uint8Array(32));
  const nonce = crypto.getRandomValues(new Uint8Array(NONCE));
  const ct = await crypto.subtle.encrypt({ name: 'AES-GCM', iv: nonce, additionalData: AAD }, await aesKey(raw, 'encrypt'), file);
  const blob = concat(nonce, new Uint8Array(ct));
  return { blob, key: encodeB64(raw), sha256: await digest(blob) };
}

/** Checks the blob's SHA-256 before anything else, then decrypts it. */
export async function decryptAttachment(blob: Uint8Array<ArrayBuffer>, key: string, expectedSha256: string): Promise<Uint8Array<ArrayBuffer>> {
  if ((await digest(blob)) !== expectedSha256) throw new AttachmentCorrupt('the downloaded attachment is not the one the message names (SHA-256 differs)');
  if (blob.length < NONCE + 16) throw new AttachmentCorrupt('the attachment is too short');
  let raw: Uint8Array<ArrayBuffer>;
  try {
    raw = decodeB64(key);
  } catch {
    throw new AttachmentCorrupt('the attachment key is malformed');
  }
  try {
    const pt = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: blob.slice(0, NONCE), additionalData: AAD }, await aesKey(raw, 'decrypt'), blob.slice(NONCE));
    return new Uint8Array(pt);
  } catch {
    throw new AttachmentCorrupt('the attachment does not decrypt');
  }
}

/** The size that fits w×h into max pixels on its longer side, keeping the aspect; never enlarged, never 0. */
export function fitWithin(w: number, h: number, max: number): { width: number; height: number } {
  if (!(w > 0 && h > 0)) throw new RangeError('an image has positive dimensions');
  const scale = Math.min(1, max / Math.max(w, h));
  return { width: Math.max(1, Math.round(w * scale)), height: Math.max(1, Math.round(h * scale)) };
}

export const thumbSize = (w: number, h: number) => fitWithin(w, h, THUMB_MAX);

/** Whether an image is worth scaling down before upload (when the person asked for it). */
export const shouldDownscale = (w: number, h: number, bytes: number) => Math.max(w, h) > DOWNSCALE_MAX || bytes > 4 << 20;

/** MIME types shown inline (and given a thumbnail). */
export const isInlineImage = (type: string) => /^image\/(png|jpeg|gif|webp|avif|bmp)$/.test(type);

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// --- in the browser: canvas work ---------------------------------------------

/** Draws an image scaled to size and encodes it, WebP where the browser makes it, else JPEG. */
export async function renderImage(source: ImageBitmap, size: { width: number; height: number }, quality = 0.8): Promise<{ bytes: Uint8Array<ArrayBuffer>; type: string }> {
  const canvas = new OffscreenCanvas(size.width, size.height);
  const ctx = canvas.getContext('2d');
  if (!ctx) throw new Error('this browser cannot draw images');
  ctx.drawImage(source, 0, 0, size.width, size.height);
  let out = await canvas.convertToBlob({ type: 'image/webp', quality });
  if (out.type !== 'image/webp') out = await canvas.convertToBlob({ type: 'image/jpeg', quality });
  return { bytes: new Uint8Array(await out.arrayBuffer()), type: out.type };
}
