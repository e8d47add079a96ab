import { afterEach, describe, expect, it, vi } from 'vitest';
import { postTyping, setBaseUrl } from '../src/lib/api';
import { generateEncKeyPair } from '../src/lib/crypto';
import { encodeB64 } from '../src/lib/bytes';
import { generateSigningKey, verifyDocument } from '../src/lib/signing';
import { newTypingDocument, openTyping, sealTyping, TypingBoard, typingLine, TypingSender } from '../src/lib/typing';

describe('typing notes', () => {
  it('opens a note sealed to this client under the typing info, at most 512 bytes of ct', async () => {
    const bob = await generateEncKeyPair();
    const ct = await sealTyping(encodeB64(bob.publicKey), { v: 1, from: 'alice', to: 'bob', ts: 1, typing: true, group: { id: 'AAAAAAAAAAAAAAAAAAAAAA' } });
    expect(Buffer.from(ct, 'base64url').length).toBeLessThanOrEqual(512);
    expect(await openTyping({ handle: 'bob', enc: bob }, { from: 'alice', ct })).toMatchObject({ typing: true, group: { id: 'AAAAAAAAAAAAAAAAAAAAAA' } });
  });

  it('drops a note whose from or to differ from the event, or that another key sealed', async () => {
    const bob = await generateEncKeyPair();
    const ct = await sealTyping(encodeB64(bob.publicKey), { v: 1, from: 'alice', to: 'bob', ts: 1, typing: true });
    expect(await openTyping({ handle: 'bob', enc: bob }, { from: 'mallory', ct })).toBeNull();
    expect(await openTyping({ handle: 'carol', enc: bob }, { from: 'alice', ct })).toBeNull();
    expect(await openTyping({ handle: 'bob', enc: await generateEncKeyPair() }, { from: 'alice', ct })).toBeNull();
  });
});

describe('typing across servers', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('a note from an address opens when its from is the event\'s and its to this reader\'s handle', async () => {
    const bob = await generateEncKeyPair();
    const ct = await sealTyping(encodeB64(bob.publicKey), { v: 1, from: 'alice@one.example', to: 'bob', ts: 1, typing: true });
    expect(await openTyping({ handle: 'bob', enc: bob }, { from: 'alice@one.example', ct })).toMatchObject({ from: 'alice@one.example', to: 'bob', typing: true });
    expect(await openTyping({ handle: 'bob', enc: bob }, { from: 'alice', ct })).toBeNull();
    expect(await openTyping({ handle: 'bob', enc: bob }, { from: 'alice@two.example', ct })).toBeNull();
    expect(await openTyping({ handle: 'bobby', enc: bob }, { from: 'alice@one.example', ct })).toBeNull();
  });

  it('POST /v1/typing carries the signed documents as remote beside to, under a body digest', async () => {
    const signing = await generateSigningKey();
    const doc = await newTypingDocument(signing, 'two.example', 'alice@one.example', 1764000000, [{ to: 'bob', ct: 'AAAA' }]);
    expect(doc.payload).toEqual({ type: 'kez.chat.typing/v1', server: 'two.example', from: 'alice@one.example', ts: 1764000000, to: [{ to: 'bob', ct: 'AAAA' }] });
    expect(await verifyDocument(doc, 'ed25519', signing.publicKey)).toBe(true);
    const calls: { url: string; init: RequestInit }[] = [];
    vi.stubGlobal('fetch', async (url: string, init: RequestInit) => (calls.push({ url, init }), new Response('{"recipients":0,"servers":1}', { status: 202 })));
    setBaseUrl('http://one.test');
    await postTyping({ handle: 'alice', server: 'one.example', signing }, [], [doc]);
    await postTyping({ handle: 'alice', server: 'one.example', signing }, [{ to: 'dave', ct: 'BBBB' }]);
    expect(calls.map((c) => c.url)).toEqual(['http://one.test/v1/typing/alice', 'http://one.test/v1/typing/alice']);
    expect(JSON.parse(calls[0]!.init.body as string)).toEqual({ to: [], remote: [JSON.parse(JSON.stringify(doc))] });
    expect(JSON.parse(calls[1]!.init.body as string)).toEqual({ to: [{ to: 'dave', ct: 'BBBB' }] });
    expect((calls[0]!.init.headers as Record<string, string>)['X-KEZ-Auth']).toBeTruthy();
  });
});

describe('TypingBoard', () => {
  it('shows who types for 6 s unless renewed, and not after a stop', () => {
    const b = new TypingBoard();
    b.note('g:x', 'bob', true, 0);
    b.note('g:x', 'alice', true, 1000);
    expect(b.typing('g:x', 5999)).toEqual(['alice', 'bob']);
    expect(b.typing('g:x', 6000)).toEqual(['alice']);
    b.note('g:x', 'alice', true, 5000);
    expect(b.typing('g:x', 10_000)).toEqual(['alice']);
    b.note('g:x', 'alice', false, 10_001);
    expect(b.typing('g:x', 10_002)).toEqual([]);
    expect(typingLine(['bob'])).toBe('bob is typing…');
  });
});

describe('TypingSender', () => {
  it('sends at once, then at most every 3 s, and one stop', () => {
    const s = new TypingSender();
    expect(s.keystroke(0)).toBe(true);
    expect(s.keystroke(2999)).toBe(false);
    expect(s.keystroke(3000)).toBe(true);
    expect(s.stop()).toBe(true);
    expect(s.stop()).toBe(false);
    expect(s.keystroke(3001)).toBe(true);
  });
});
