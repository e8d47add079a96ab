import { describe, expect, it } from 'vitest';
import { decodeB64, encodeB64 } from '../src/lib/bytes';
import type { PublicUser } from '../src/lib/protocol';
import type { Signed } from '../src/lib/signing';
import { checkPeer, follows, KeyChanged, KeyDocumentMismatch, parseKeyDocument, safetyNumber, type Pin, type TrustDeps } from '../src/lib/trust';
import { vectors } from './vectors';

describe('safety numbers', () => {
  it('are the Go client\'s (shared vectors), the same from both sides', async () => {
    for (const v of vectors.safety_numbers) {
      const a = decodeB64(v.key_a);
      const b = decodeB64(v.key_b);
      expect(await safetyNumber(v.alg_a, a, v.address_a, v.alg_b, b, v.address_b)).toBe(v.number);
      expect(await safetyNumber(v.alg_b, b, v.address_b, v.alg_a, a, v.address_a)).toBe(v.number);
    }
  });
});

const chain = vectors.key_chains[0]!;
const docs = chain.documents as unknown as Signed<never>[];

describe('key documents', () => {
  it('verify and chain as the Go code makes them (shared vectors)', async () => {
    let prev = null;
    for (const [i, raw] of docs.entries()) {
      const d = await parseKeyDocument(structuredClone(raw));
      expect(encodeB64(d.hash)).toBe(chain.hashes[i]);
      expect(d.encKey).toBe(chain.enc_keys[i]);
      expect(follows(d, prev)).toBe(true);
      prev = d;
    }
  });

  it('refuse an altered document, an extra member, and a broken chain', async () => {
    const altered = structuredClone(docs[1]!) as unknown as Signed<Record<string, unknown>>;
    altered.payload.enc_key = chain.enc_keys[0];
    await expect(parseKeyDocument(altered as never)).rejects.toBeInstanceOf(KeyDocumentMismatch);
    const extra = structuredClone(docs[0]!) as unknown as Signed<Record<string, unknown>>;
    extra.payload.Enc_key = 'x';
    await expect(parseKeyDocument(extra as never)).rejects.toThrow(/other members/);
    const v2 = await parseKeyDocument(structuredClone(docs[1]!));
    expect(follows(v2, null)).toBe(false);
  });
});

/** A peer record with the chain's primary key and enc_key at version v. */
function record(version: 1 | 2, enc = chain.enc_keys[version - 1]!): PublicUser {
  const sig = (docs[0] as unknown as Signed<{ signing_keys: { alg: string; key: string }[] }>).signature;
  return { handle: 'bob', server: 'chat.example', primary_id: chain.primary_id, alg: sig.alg, key: sig.key, enc_key: enc, created_at: 1 };
}

const withDocs = (n: number): TrustDeps => ({
  webfinger: async () => ({ links: [{ rel: 'https://kez.lat/rel/keys', href: `https://chat.example/v1/keys/${chain.primary_id}` }] }),
  keyLog: async (_base, _pid, from) => ({ documents: docs.slice(from - 1, n) as never, next: 0 }),
});
const noDirectory: TrustDeps = { webfinger: async () => ({ links: [] }), keyLog: async () => ({ documents: [], next: 0 }) };

describe('checking a peer', () => {
  it('pins on first contact, follows a signed key change, and refuses an unsigned one', async () => {
    const pins = new Map<string, Pin>();
    expect((await checkPeer(record(1), pins, withDocs(1))).changed).toBe(true);
    expect(pins.get('bob')?.keys_version).toBe(1);
    expect((await checkPeer(record(1), pins, withDocs(1))).changed).toBe(false);
    // Version 2, signed by the pinned primary key, lists a new enc_key.
    expect((await checkPeer(record(2), pins, withDocs(2))).changed).toBe(true);
    expect(pins.get('bob')?.enc_key).toBe(chain.enc_keys[1]);
    // An enc_key the document does not list.
    await expect(checkPeer(record(2, encodeB64(new Uint8Array(32).fill(3))), pins, withDocs(2))).rejects.toBeInstanceOf(KeyDocumentMismatch);
    // Without the documents (hidden, or no sig-server), a changed enc_key stands on nothing.
    await expect(checkPeer(record(2, encodeB64(new Uint8Array(32).fill(3))), pins, noDirectory)).rejects.toBeInstanceOf(KeyChanged);
    // The documents hidden once do not lower the version pinned.
    await checkPeer(record(2), pins, noDirectory);
    expect(pins.get('bob')?.keys_version).toBe(2);
    // Served version 1 after version 2 was seen: a rollback.
    await expect(checkPeer(record(1), pins, withDocs(1))).rejects.toThrow(/version 1 answered, 2 seen before/);
  });

  it('refuses another primary key under the handle, with the pins kept', async () => {
    const pins = new Map<string, Pin>();
    await checkPeer(record(1), pins, noDirectory);
    const other = { ...record(1), key: encodeB64(new Uint8Array(32).fill(9)) };
    const err = await checkPeer(other, pins, noDirectory).catch((e) => e);
    expect(err).toBeInstanceOf(KeyChanged);
    expect((err as KeyChanged).why).toBe('another primary key');
    expect(pins.get('bob')?.key).toBe(record(1).key);
  });

  it('drops device keys nothing verified vouches for', async () => {
    const withDevice = { ...record(1), signing_keys: [{ alg: 'ed25519', key: encodeB64(new Uint8Array(32).fill(5)), label: 'x' }], keys_version: 1 };
    const { record: r } = await checkPeer(withDevice, new Map(), noDirectory);
    expect(r.signing_keys).toEqual([]);
  });
});
