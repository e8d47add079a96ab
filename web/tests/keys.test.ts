import { describe, expect, it } from 'vitest';
import { encodeB64 } from '../src/lib/bytes';
import { open, seal } from '../src/lib/crypto';
import { exportIdentity, generateKeys, handleProblem, handleSkeleton, importIdentity, keptIdentity, primaryKey, recordMatches, registration, type Identity } from '../src/lib/keys';
import { vectors } from './vectors';
import { primaryId, signDocument, verifyDocument } from '../src/lib/signing';

async function identity(): Promise<Identity> {
  const k = await generateKeys();
  return { ...k, handle: 'alice', server: 'chat.example', primaryId: await primaryId('ed25519', k.signing.publicKey) };
}

describe('handles', () => {
  it('says what is wrong before asking the server', () => {
    expect(handleProblem('alice')).toBeNull();
    expect(handleProblem('a.b-c_9')).toBeNull();
    expect(handleProblem('ab')).toMatch(/3 to 32/);
    expect(handleProblem('Alice')).toMatch(/lowercase/);
    expect(handleProblem('-alice')).toMatch(/starting/);
    expect(handleProblem('admin')).toMatch(/reserved/);
    expect(handleProblem('adm1n')).toMatch(/looks like the reserved "admin"/);
  });

  it('finds the look-alikes the Go server finds (shared vectors)', () => {
    for (const h of vectors.handles) {
      expect(handleSkeleton(h.handle), h.handle).toBe(h.skeleton);
      expect(handleProblem(h.handle) !== null, h.handle).toBe(h.reserved);
    }
  });
});

describe('registration', () => {
  it('is signed by the new key and names its primary_id', async () => {
    const id = await identity();
    const doc = await registration(id, 'chat.example', 'alice', 1764000000);
    expect(doc.payload).toMatchObject({ type: 'kez.chat.register/v1', server: 'chat.example', handle: 'alice', primary_id: id.primaryId, enc_key: encodeB64(id.enc.publicKey) });
    expect(await verifyDocument(doc, 'ed25519', id.signing.publicKey)).toBe(true);
  });
});

describe('the kept identity', () => {
  it('holds non-extractable keys and no raw key, signs and opens, and still exports what was made', async () => {
    const made = await identity();
    const kept = structuredClone(await keptIdentity(made)); // as IndexedDB stores it
    expect(kept.signing.secret).toBeUndefined();
    expect(kept.enc.secret).toBeUndefined();
    for (const k of [kept.signing.cryptoKey!, kept.enc.cryptoKey!, kept.sealed!.key]) {
      expect(k.extractable).toBe(false);
      await expect(crypto.subtle.exportKey('jwk', k)).rejects.toThrow();
    }
    const stored = JSON.stringify(kept, (_, v) => (v instanceof Uint8Array ? encodeB64(v) : v));
    expect(stored).not.toContain(encodeB64(made.signing.secret!));
    expect(stored).not.toContain(encodeB64(made.enc.secret!));

    const doc = await signDocument(kept.signing, { hello: 'world' });
    expect(await verifyDocument(doc, 'ed25519', made.signing.publicKey)).toBe(true);
    expect(new TextDecoder().decode(await open(kept.enc, await seal(made.enc.publicKey, new TextEncoder().encode('to the kept key'))))).toBe('to the kept key');

    const back = await importIdentity(await exportIdentity(kept, 'correct horse battery'), 'correct horse battery');
    expect(back).toEqual(made);
    expect(await keptIdentity(kept)).toBe(kept); // kept once
  });
});

describe('identity export', () => {
  it('round-trips with the passphrase, and holds no key in the clear', async () => {
    const id = await identity();
    const text = await exportIdentity(id, 'correct horse battery');
    expect(text).not.toContain(encodeB64(id.signing.secret!));
    expect(text).not.toContain(encodeB64(id.enc.secret!));
    const back = await importIdentity(text, 'correct horse battery');
    expect(back).toEqual(id);
    expect(recordMatches(back, { alg: 'ed25519', key: encodeB64(id.signing.publicKey), enc_key: encodeB64(id.enc.publicKey) })).toBe(true);
  });

  it("keeps the primary key a linked device's identity names, and refuses one that is not its identity's", async () => {
    const primary = await generateKeys();
    const device = await identity();
    const linked: Identity = { ...device, primaryId: await primaryId('ed25519', primary.signing.publicKey), primary: { alg: 'ed25519', publicKey: primary.signing.publicKey } };
    const back = await importIdentity(await exportIdentity(linked, 'correct horse battery'), 'correct horse battery');
    expect(back).toEqual(linked);
    expect(primaryKey(back).publicKey).toEqual(primary.signing.publicKey);
    expect(primaryKey(device).publicKey).toEqual(device.signing.publicKey);
    const forged: Identity = { ...linked, primary: { alg: 'ed25519', publicKey: (await generateKeys()).signing.publicKey } };
    await expect(importIdentity(await exportIdentity(forged, 'correct horse battery'), 'correct horse battery')).rejects.toThrow(/not its identity/);
  });

  it('refuses a wrong passphrase, an altered file and a short passphrase', async () => {
    const id = await identity();
    const text = await exportIdentity(id, 'correct horse battery');
    await expect(importIdentity(text, 'wrong horse battery')).rejects.toThrow(/Wrong passphrase/);
    const f = JSON.parse(text);
    f.data = f.data.slice(0, -2) + (f.data.endsWith('AA') ? 'AQ' : 'AA');
    await expect(importIdentity(JSON.stringify(f), 'correct horse battery')).rejects.toThrow();
    await expect(importIdentity('{"hello":1}', 'x')).rejects.toThrow(/not a kez-chat identity/);
    await expect(exportIdentity(id, 'short')).rejects.toThrow(/8 characters/);
  });

  it('refuses key derivations too cheap to protect the passphrase or too costly to run', async () => {
    const id = await identity();
    const text = await exportIdentity(id, 'correct horse battery');
    for (const iterations of [1, 1000, 599_999, 6_000_001, 1e12, 1.5e6 + 0.5, '600000', null]) {
      const f = JSON.parse(text);
      f.kdf.iterations = iterations;
      await expect(importIdentity(JSON.stringify(f), 'correct horse battery'), String(iterations)).rejects.toThrow(/key derivation/);
    }
    const f = JSON.parse(text);
    f.kdf.hash = 'SHA-1';
    await expect(importIdentity(JSON.stringify(f), 'correct horse battery')).rejects.toThrow(/not a kez-chat identity/);
  });
});
