import { describe, expect, it } from 'vitest';
import { concat, decodeB64, encodeB64, sha256, utf8 } from '../src/lib/bytes';
import { generateEncKeyPair } from '../src/lib/crypto';
import { checkCode, formatLinkCode, linkChannel, linkKey, LinkError, newLinkSecret, openRequest, openResponse, parseLinkCode, sealRequest, sealResponse, unwrap, wrap, type LinkResponse } from '../src/lib/link';

describe('link codes', () => {
  it('round-trips a code, a server with a port included', () => {
    const secret = newLinkSecret();
    const c = { server: 'chat.example:8443', handle: 'alice', secret };
    const text = formatLinkCode(c);
    expect(text).toMatch(/^kez-link:1:chat\.example:8443:alice:[A-Za-z0-9_-]{22}$/);
    expect(parseLinkCode(`  ${text}\n`)).toEqual(c);
  });

  it.each(['kez-link:2:s:alice:AAAAAAAAAAAAAAAAAAAAAA', 'hello', 'kez-link:1:s:alice:AAAA', 'kez-link:1:s:alice:***'])('refuses %s', (t) => {
    expect(() => parseLinkCode(t)).toThrow(LinkError);
  });
});

describe('link crypto', () => {
  it('names the channel base64url(SHA-256("kez-link channel" || 0 || L))', async () => {
    const L = new Uint8Array(16).fill(9);
    expect(await linkChannel(L)).toBe(encodeB64(await sha256(concat(utf8('kez-link channel'), new Uint8Array([0]), L))));
    expect(await linkChannel(L)).toHaveLength(43);
  });

  it('wraps under the HKDF key of the secret: another secret cannot open it', async () => {
    const k = await linkKey(new Uint8Array(16).fill(1));
    const data = await wrap(k, utf8('x'));
    expect(new TextDecoder().decode(await unwrap(k, data))).toBe('x');
    await expect(unwrap(await linkKey(new Uint8Array(16).fill(2)), data)).rejects.toThrow(LinkError);
  });

  it('derives K as HKDF-SHA256(L, empty salt, "kez-link key")', async () => {
    const L = new Uint8Array(16).fill(3);
    const base = await crypto.subtle.importKey('raw', L, 'HKDF', false, ['deriveBits']);
    const raw = new Uint8Array(await crypto.subtle.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info: utf8('kez-link key') }, base, 256));
    const mine = await crypto.subtle.importKey('raw', raw, 'AES-GCM', false, ['encrypt']);
    const nonce = new Uint8Array(12);
    const ct = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv: nonce }, mine, utf8('y')));
    expect(new TextDecoder().decode(await unwrap(await linkKey(L), encodeB64(concat(nonce, ct))))).toBe('y');
  });

  it('shows the same 6-digit check code on both sides, and another for another key', async () => {
    const key = new Uint8Array(32).fill(1);
    const eph = new Uint8Array(32).fill(2);
    const c = await checkCode(key, eph);
    expect(c).toMatch(/^\d{6}$/);
    expect(await checkCode(key, eph)).toBe(c);
    expect(await checkCode(new Uint8Array(32).fill(3), eph)).not.toBe(c);
  });

  it('carries the request and the sealed response end to end', async () => {
    const L = newLinkSecret();
    const k = await linkKey(L);
    const eph = await generateEncKeyPair();
    const req = { alg: 'ed25519', key: encodeB64(new Uint8Array(32).fill(5)), label: 'Chrome on Linux', eph: encodeB64(eph.publicKey) };
    const got = await openRequest(k, await sealRequest(k, req));
    expect(got).toEqual(req);
    const res: LinkResponse = { handle: 'alice', server: 's', enc_private_key: 'x', enc_key: 'y', primary_id: 'p', primary_alg: 'ed25519', primary_key: 'k', keys_version: 2 };
    const data = await sealResponse(k, got.eph, res);
    expect(await openResponse(k, eph, data)).toEqual(res);
    // Another link's key pair cannot open it, even with the code.
    await expect(openResponse(k, await generateEncKeyPair(), data)).rejects.toThrow(LinkError);
    expect(decodeB64(data).length).toBeGreaterThan(12 + 32);
  });
});
