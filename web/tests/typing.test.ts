import { describe, expect, it } from 'vitest';
import { generateEncKeyPair } from '../src/lib/crypto';
import { encodeB64 } from '../src/lib/bytes';
import { openTyping, sealTyping, TypingBoard, typingLine, TypingSender } from '../src/lib/typing';

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
