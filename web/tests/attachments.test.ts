import { describe, expect, it } from 'vitest';
import { AttachmentCorrupt, decryptAttachment, digest, encryptAttachment, fitWithin, shouldDownscale, thumbSize } from '../src/lib/attachments';
import { decodeB64, encodeB64, sha256 } from '../src/lib/bytes';

describe('attachment encryption', () => {
  it('round-trips a file under a fresh key, the blob named by its SHA-256', async () => {
    const file = new Uint8Array(70_000).map((_, i) => (i * 31) & 255);
    const a = await encryptAttachment(file);
    const b = await encryptAttachment(file);
    expect(a.key).not.toBe(b.key);
    expect(a.blob.length).toBe(12 + file.length + 16);
    expect(a.sha256).toBe(encodeB64(await sha256(a.blob)));
    expect(decodeB64(a.key)).toHaveLength(32);
    expect(await decryptAttachment(a.blob, a.key, a.sha256)).toEqual(file);
  });

  it('decrypts what the spec describes: nonce || AES-256-GCM with aad "kez-chat/v1 attachment"', async () => {
    const raw = new Uint8Array(32).fill(7);
    const nonce = new Uint8Array(12).fill(1);
    const key = await crypto.subtle.importKey('raw', raw, 'AES-GCM', false, ['encrypt']);
    const ct = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv: nonce, additionalData: new TextEncoder().encode('kez-chat/v1 attachment') }, key, new TextEncoder().encode('hello')));
    const blob = new Uint8Array([...nonce, ...ct]);
    expect(new TextDecoder().decode(await decryptAttachment(blob, encodeB64(raw), await digest(blob)))).toBe('hello');
  });

  it('refuses a blob whose SHA-256 differs before decrypting, and one altered under a matching digest', async () => {
    const a = await encryptAttachment(new Uint8Array([1, 2, 3]));
    const altered = a.blob.slice();
    altered[20]! ^= 1;
    await expect(decryptAttachment(altered, a.key, a.sha256)).rejects.toThrow(/SHA-256/);
    await expect(decryptAttachment(altered, a.key, await digest(altered))).rejects.toThrow(AttachmentCorrupt);
    await expect(decryptAttachment(a.blob, encodeB64(new Uint8Array(32)), a.sha256)).rejects.toThrow(AttachmentCorrupt);
  });
});

describe('image sizes', () => {
  it.each([
    [4000, 3000, { width: 320, height: 240 }],
    [3000, 4000, { width: 240, height: 320 }],
    [100, 50, { width: 100, height: 50 }],
    [10000, 1, { width: 320, height: 1 }],
    [320, 320, { width: 320, height: 320 }],
  ])('a thumbnail of %ix%i is at most 320 on its longer side', (w, h, want) => {
    expect(thumbSize(w, h)).toEqual(want);
  });

  it('refuses an image without dimensions', () => {
    expect(() => fitWithin(0, 10, 320)).toThrow(RangeError);
  });

  it('scales down only what is large', () => {
    expect(shouldDownscale(4032, 3024, 3_000_000)).toBe(true);
    expect(shouldDownscale(1024, 768, 5_000_000)).toBe(true);
    expect(shouldDownscale(1024, 768, 200_000)).toBe(false);
  });
});
