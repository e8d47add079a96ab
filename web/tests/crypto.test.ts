import { afterEach, describe, expect, it } from 'vitest';
import { forceBackend, type Backend } from '../src/lib/backend';
import { decodeB64, utf8, fromUtf8 } from '../src/lib/bytes';
import { generateEncKeyPair, open, resetSuites, seal } from '../src/lib/crypto';
import { claimedSender, InvalidMessage, newMessage, newMessageOf, openEnvelope, type Envelope, type MessageKeys, type PublicUser } from '../src/lib/protocol';
import { generateSigningKey, primaryId, signDocument } from '../src/lib/signing';
import { encodeB64 } from '../src/lib/bytes';
import { vectors } from './vectors';

afterEach(() => {
  forceBackend(undefined);
  resetSuites();
});

const bobKeys = (m: (typeof vectors.messages)[number]): MessageKeys => ({
  handle: m.recipient.handle,
  server: m.recipient.server,
  signing: { alg: 'ed25519', secret: new Uint8Array(32), publicKey: new Uint8Array(32) }, // unused to open
  enc: { publicKey: decodeB64(m.recipient.enc_key), secret: decodeB64(m.recipient_enc_private) },
});

for (const backend of ['webcrypto', 'noble'] as Backend[]) {
  describe(`HPKE with ${backend}`, () => {
    it('opens what the Go client sealed (shared vectors)', async () => {
      forceBackend(backend);
      resetSuites();
      for (const m of vectors.messages) {
        const pt = await openEnvelope(structuredClone(m.envelope), bobKeys(m), m.sender);
        expect(pt, m.name).toEqual(m.plaintext);
      }
    });

    it('round-trips its own seal and refuses another key', async () => {
      forceBackend(backend);
      resetSuites();
      const bob = await generateEncKeyPair();
      const ct = await seal(bob.publicKey, utf8('hi bob'));
      expect(fromUtf8(await open(bob, ct))).toBe('hi bob');
      const eve = await generateEncKeyPair();
      await expect(open(eve, ct)).rejects.toThrow();
      await expect(open(bob, ct.slice(0, 20))).rejects.toThrow();
    });
  });
}

describe('message envelopes', () => {
  const m = vectors.messages[0]!;

  it('refuses a message that is not what its sender signed', async () => {
    const tampered: Envelope = structuredClone(m.envelope);
    tampered.message.payload.to = 'carol';
    await expect(openEnvelope(tampered, bobKeys(m), m.sender)).rejects.toBeInstanceOf(InvalidMessage);
    // Signed by alice, but we are told the sender is someone else.
    const otherKey: PublicUser = { ...m.sender, key: encodeB64(new Uint8Array(32).fill(7)) };
    await expect(openEnvelope(structuredClone(m.envelope), bobKeys(m), otherKey)).rejects.toThrow(/registered key/);
    const mallory: PublicUser = { ...m.sender, handle: 'mallory' };
    await expect(openEnvelope(structuredClone(m.envelope), bobKeys(m), mallory)).rejects.toThrow(/from "alice"/);
    // Addressed to bob, opened as carol.
    await expect(openEnvelope(structuredClone(m.envelope), { ...bobKeys(m), handle: 'carol' }, m.sender)).rejects.toThrow(/addressed/);
  });

  it('a message made here opens for its recipient with the checks of the Go client', async () => {
    const alice = await generateSigningKey();
    const aliceEnc = await generateEncKeyPair();
    const bobEnc = await generateEncKeyPair();
    const server = 'chat.example';
    const bob: PublicUser = { handle: 'bob', server, primary_id: 'x', alg: 'ed25519', key: encodeB64(new Uint8Array(32)), enc_key: encodeB64(bobEnc.publicKey), created_at: 1 };
    const aliceRecord: PublicUser = { handle: 'alice', server, primary_id: await primaryId('ed25519', alice.publicKey), alg: 'ed25519', key: encodeB64(alice.publicKey), enc_key: encodeB64(aliceEnc.publicKey), created_at: 1 };
    const doc = await newMessage({ handle: 'alice', server, signing: alice, enc: aliceEnc }, bob, 'm1', 'hello <b>& 😀', 1764000000);
    const env: Envelope = { seq: 1, received_at: 1764000001, message: JSON.parse(JSON.stringify(doc)) };
    expect(claimedSender(env)).toBe('alice');
    const pt = await openEnvelope(env, { handle: 'bob', server, signing: alice, enc: bobEnc }, aliceRecord);
    expect(pt).toEqual({ v: 1, from: 'alice', to: 'bob', ts: 1764000000, body: 'hello <b>& 😀' });

    // Signed by one of alice's device keys: accepted only when her record lists it.
    const phone = await generateSigningKey();
    const fromPhone = await newMessage({ handle: 'alice', server, signing: phone, enc: aliceEnc }, bob, 'm2', 'from the phone', 1764000000);
    const phoneEnv: Envelope = { seq: 3, received_at: 1, message: JSON.parse(JSON.stringify(fromPhone)) };
    await expect(openEnvelope(phoneEnv, { handle: 'bob', server, signing: alice, enc: bobEnc }, aliceRecord)).rejects.toThrow(/device key/);
    const withDevice = { ...aliceRecord, signing_keys: [{ alg: 'ed25519', key: encodeB64(phone.publicKey), label: 'phone' }] };
    expect((await openEnvelope(phoneEnv, { handle: 'bob', server, signing: alice, enc: bobEnc }, withDevice)).body).toBe('from the phone');

    // Signed by alice, with a member the Go server refuses (unknown_field).
    const extra = await signDocument(alice, { ...doc.payload, From: 'mallory' });
    const odd: Envelope = { seq: 2, received_at: 1764000001, message: JSON.parse(JSON.stringify(extra)) };
    await expect(openEnvelope(odd, { handle: 'bob', server, signing: alice, enc: bobEnc }, aliceRecord)).rejects.toThrow(/payload members/);

    // With blobs, as the Go server takes them (an attachment's ids).
    const withBlobs = await signDocument(alice, { ...doc.payload, blobs: ['AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'] });
    const attached: Envelope = { seq: 3, received_at: 1764000001, message: JSON.parse(JSON.stringify(withBlobs)) };
    expect(await openEnvelope(attached, { handle: 'bob', server, signing: alice, enc: bobEnc }, aliceRecord)).toEqual(pt);
    const noBlobs = await signDocument(alice, { ...doc.payload, blobs: [] });
    const empty: Envelope = { seq: 4, received_at: 1764000001, message: JSON.parse(JSON.stringify(noBlobs)) };
    await expect(openEnvelope(empty, { handle: 'bob', server, signing: alice, enc: bobEnc }, aliceRecord)).rejects.toThrow(/blobs/);
  });
  it("a message to a person of another server is for that server, from the sender's address, and opens only as such", async () => {
    const alice = await generateSigningKey();
    const aliceEnc = await generateEncKeyPair();
    const bobSigning = await generateSigningKey();
    const bobEnc = await generateEncKeyPair();
    const bob: PublicUser = { handle: 'bob', server: 'two.example', primary_id: 'x', alg: 'ed25519', key: encodeB64(bobSigning.publicKey), enc_key: encodeB64(bobEnc.publicKey), created_at: 1 };
    const aliceRecord: PublicUser = { handle: 'alice', server: 'one.example', primary_id: await primaryId('ed25519', alice.publicKey), alg: 'ed25519', key: encodeB64(alice.publicKey), enc_key: encodeB64(aliceEnc.publicKey), created_at: 1 };
    const doc = await newMessage({ handle: 'alice', server: 'one.example', signing: alice, enc: aliceEnc }, bob, 'm1', 'across', 1764000000);
    expect(doc.payload).toMatchObject({ server: 'two.example', from: 'alice@one.example', to: 'bob' });
    const env: Envelope = { seq: 1, received_at: 1, message: JSON.parse(JSON.stringify(doc)) };
    expect(claimedSender(env)).toBe('alice@one.example');
    const bobKeys = { handle: 'bob', server: 'two.example', signing: bobSigning, enc: bobEnc };
    expect(await openEnvelope(env, bobKeys, aliceRecord)).toEqual({ v: 1, from: 'alice@one.example', to: 'bob', ts: 1764000000, body: 'across' });
    // The same document read as from a person of bob's own server: from does not match.
    await expect(openEnvelope(env, bobKeys, { ...aliceRecord, server: 'two.example' })).rejects.toThrow(/from/);
    // Signed for another server than bob's.
    const elsewhere = await signDocument(alice, { ...doc.payload, server: 'three.example' });
    await expect(openEnvelope({ ...env, message: JSON.parse(JSON.stringify(elsewhere)) }, bobKeys, aliceRecord)).rejects.toThrow(/for server/);
    // A plaintext whose from is not the document's is never signed here.
    await expect(newMessageOf({ handle: 'alice', server: 'one.example', signing: alice, enc: aliceEnc }, bob, 'm2', { v: 1, from: 'alice', to: 'bob', ts: 1, body: '' }, 1)).rejects.toThrow(/plaintext from alice/);
  });
});
