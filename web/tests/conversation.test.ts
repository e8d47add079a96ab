import { describe, expect, it } from 'vitest';
import {
  applyReaction,
  applyReceipt,
  conversationOf,
  deleteAllowed,
  envelopeId,
  envelopeIdFor,
  InvalidPlaintext,
  parsePlaintext,
  plaintextFor,
  qualifyPlaintext,
  reactionContent,
  reactionSummary,
  receiptContents,
  replyTo,
  seenBy,
  textContent,
  ticks,
  type Reactions,
  type Receipts,
} from '../src/lib/conversation';

const env = { from: 'alice', to: 'bob', id: 'm1' };
const base = { v: 1, from: 'alice', to: 'bob', ts: 1764000000, body: 'hi' };
const B32 = 'A'.repeat(43);
const GID = 'AAAAAAAAAAAAAAAAAAAAAA';

describe('parsePlaintext', () => {
  it('reads an old plaintext as text whose mid is the envelope id', () => {
    const pt = parsePlaintext(base, env);
    expect(pt.kind).toBe('text');
    expect(pt.mid).toBe('m1');
  });

  it('ignores members it does not know', () => {
    expect(parsePlaintext({ ...base, future: { x: 1 } }, env).body).toBe('hi');
  });

  it.each([
    ['a version other than 1', { ...base, v: 2 }],
    ['from other than the envelope', { ...base, from: 'mallory' }],
    ['no body', { ...base, body: undefined }],
    ['an unknown kind', { ...base, kind: 'poll' }],
    ['a member differing only in case', { ...base, Kind: 'text' }],
    ['a mid of bad characters', { ...base, mid: 'a b' }],
    ['a mid of 65 characters', { ...base, mid: 'a'.repeat(65) }],
    ['a malformed group id', { ...base, group: { id: 'short' } }],
    ['a reply excerpt over 200 characters', { ...base, reply: { from: 'bob', mid: 'x', body: 'y'.repeat(201) } }],
    ['17 attachments', { ...base, attachments: Array(17).fill({ blob: B32, key: B32, sha256: B32, size: 1, type: 'a/b', name: 'n' }) }],
    ['an attachment with a short key', { ...base, attachments: [{ blob: B32, key: 'AAAA', sha256: B32, size: 1, type: 'a/b', name: 'n' }] }],
    ['a thumb over 320 pixels', { ...base, attachments: [{ blob: B32, key: B32, sha256: B32, size: 1, type: 'image/png', name: 'n', width: 9, height: 9, thumb: { blob: B32, key: B32, sha256: B32, size: 1, width: 321, height: 2 } }] }],
    ['a reaction without target', { ...base, kind: 'reaction', emoji: '👍' }],
    ['a reaction of over 32 bytes', { ...base, kind: 'reaction', emoji: '👍'.repeat(9), target: { from: 'bob', mid: 'x' } }],
    ['a receipt of another kind', { ...base, kind: 'receipt', receipt: 'seen', mids: ['x'] }],
    ['a receipt with no mids', { ...base, kind: 'receipt', receipt: 'read', mids: [] }],
    ['a receipt with 257 mids', { ...base, kind: 'receipt', receipt: 'read', mids: Array.from({ length: 257 }, (_, i) => 'm' + i) }],
    ['a group change without a state', { ...base, kind: 'group', group: { id: GID } }],
    ["a group change whose state is another group's", { ...base, kind: 'group', group: { id: GID }, state: { id: 'BBBBBBBBBBBBBBBBBBBBBA' } }],
    ['both group and peer', { ...base, group: { id: GID }, peer: 'carol' }],
  ])('refuses %s', (_, raw) => {
    expect(() => parsePlaintext(raw, env)).toThrow(InvalidPlaintext);
  });

  it('reads every member of a full text message', () => {
    const att = { blob: B32, key: B32, sha256: B32, size: 10, type: 'image/png', name: 'a.png', width: 640, height: 480, thumb: { blob: B32, key: B32, sha256: B32, size: 3, width: 320, height: 240 } };
    const pt = parsePlaintext({ ...base, mid: 'Q2n', group: { id: GID }, reply: { from: 'bob', mid: 'x', body: 'quoted' }, attachments: [att] }, env);
    expect(pt).toMatchObject({ mid: 'Q2n', group: { id: GID }, reply: { from: 'bob', mid: 'x', body: 'quoted' }, attachments: [att] });
  });

  it('drops duplicate mids of a receipt', () => {
    expect(parsePlaintext({ ...base, kind: 'receipt', receipt: 'read', mids: ['a', 'a', 'b'] }, env).mids).toEqual(['a', 'b']);
  });
});

describe('building', () => {
  it('builds what parses back, per recipient, the sync copy naming its peer', () => {
    const c = textContent('Q2n', 'hello', { reply: replyTo('bob', 'x', 'é'.repeat(300)) });
    expect(c.reply!.body).toHaveLength(200);
    const toBob = plaintextFor(c, 'alice', 'bob', 5);
    expect(toBob).not.toHaveProperty('kind');
    expect(toBob).not.toHaveProperty('peer');
    const sync = plaintextFor(c, 'alice', 'alice', 5, 'bob');
    expect(sync.peer).toBe('bob');
    const read = parsePlaintext(sync, { from: 'alice', to: 'alice', id: 'Q2n:alice' });
    expect(read.mid).toBe('Q2n');
    expect(conversationOf(read, 'alice')).toBe('bob');
    expect(conversationOf(parsePlaintext(toBob, { from: 'alice', to: 'bob', id: 'Q2n' }), 'bob')).toBe('alice');
  });

  it('files a group message under its group', () => {
    const pt = parsePlaintext(plaintextFor(textContent('m', 'x', { group: GID }), 'alice', 'bob', 1), env);
    expect(conversationOf(pt, 'bob')).toBe('g:' + GID);
  });

  it('names an envelope <mid>:<to> in a batch and <mid> alone otherwise', () => {
    expect(envelopeId('Q2n', 'bob', true)).toBe('Q2n:bob');
    expect(envelopeId('Q2n', 'bob', false)).toBe('Q2n');
  });

  it('splits receipts into plaintexts of at most 256 mids', () => {
    let n = 0;
    const mids = Array.from({ length: 600 }, (_, i) => 'm' + i);
    const cs = receiptContents(() => 'r' + n++, 'read', mids);
    expect(cs.map((c) => c.mids!.length)).toEqual([256, 256, 88]);
    for (const c of cs) expect(() => parsePlaintext(plaintextFor(c, 'alice', 'bob', 1), env)).not.toThrow();
  });

  it('refuses a reaction longer than one emoji', () => {
    expect(() => reactionContent('m', { from: 'bob', mid: 'x' }, 'x'.repeat(33))).toThrow();
  });
});

describe('receipts', () => {
  it('moves from delivered to read and never back', () => {
    const r: Receipts = { delivered: [], read: [] };
    expect(applyReceipt(r, 'bob', 'delivered')).toBe(true);
    expect(applyReceipt(r, 'bob', 'delivered')).toBe(false);
    expect(applyReceipt(r, 'bob', 'read')).toBe(true);
    expect(applyReceipt(r, 'bob', 'delivered')).toBe(false);
    expect(r).toEqual({ delivered: ['bob'], read: ['bob'] });
    expect(applyReceipt(r, 'constructor', 'read')).toBe(true);
    expect(r.read).toEqual(['bob', 'constructor']);
  });

  it('ticks read only once every recipient read, and not at all with read receipts off', () => {
    const r: Receipts = { delivered: ['bob', 'carol'], read: ['bob'] };
    expect(ticks(r, ['bob', 'carol'], true)).toBe('delivered');
    applyReceipt(r, 'carol', 'read');
    expect(ticks(r, ['bob', 'carol'], true)).toBe('read');
    expect(ticks(r, ['bob', 'carol'], false)).toBe('delivered');
    expect(ticks({ delivered: ['bob'], read: [] }, ['bob', 'carol'], true)).toBe('sent');
    expect(seenBy(r, true)).toEqual(['bob', 'carol']);
    expect(seenBy(r, false)).toEqual([]);
  });
});

describe('reactions', () => {
  it('keeps one reaction per person, changeable and removable', () => {
    const r: Reactions = [];
    applyReaction(r, 'bob', '👍');
    applyReaction(r, 'carol', '👍');
    applyReaction(r, '__proto__', '🎉');
    expect(reactionSummary(r)).toEqual([
      { emoji: '👍', by: ['bob', 'carol'] },
      { emoji: '🎉', by: ['__proto__'] },
    ]);
    expect(applyReaction(r, 'bob', '🎉')).toBe(true);
    expect(applyReaction(r, 'carol', '')).toBe(true);
    expect(applyReaction(r, 'carol', '')).toBe(false);
    expect(reactionSummary(r)).toEqual([{ emoji: '🎉', by: ['__proto__', 'bob'] }]);
  });
});

describe('deletion', () => {
  it('honours a delete only from the sender of the target', () => {
    expect(deleteAllowed('alice', { from: 'alice', mid: 'x' })).toBe(true);
    expect(deleteAllowed('bob', { from: 'alice', mid: 'x' })).toBe(false);
  });
});

describe('names across servers', () => {
  const env = { from: 'carol@three.example', to: 'bob', id: 'e1' };
  it("reads addresses wherever a name is, and qualifies the writer's bare names with its domain", () => {
    const raw = { v: 1, from: env.from, to: env.to, ts: 1, body: 'hi', mid: 'm1', reply: { from: 'dave', mid: 'm0', body: 'x' } };
    const pt = qualifyPlaintext(parsePlaintext(raw, env), 'three.example', 'two.example');
    // from and to stay the payload's; dave is carol's server's.
    expect(pt.from).toBe('carol@three.example');
    expect(pt.to).toBe('bob');
    expect(pt.reply?.from).toBe('dave@three.example');
    const reaction = { v: 1, from: env.from, to: env.to, ts: 1, body: '', kind: 'reaction', mid: 'm2', target: { from: 'bob@two.example', mid: 'm1' }, emoji: '👍' };
    expect(qualifyPlaintext(parsePlaintext(reaction, env), 'three.example', 'two.example').target?.from).toBe('bob');
    expect(() => parsePlaintext({ ...raw, reply: { from: 'Dave@x', mid: 'm0', body: '' } }, env)).toThrow(InvalidPlaintext);
  });

  it("keeps a sync copy's peer elsewhere as an address, and a local writer's names as written", () => {
    const copy = { v: 1, from: 'bob', to: 'bob', ts: 1, body: 'hi', mid: 'm1', peer: 'carol@three.example' };
    const pt = qualifyPlaintext(parsePlaintext(copy, { from: 'bob', to: 'bob', id: 'm1:bob' }), 'two.example', 'two.example');
    expect(pt.peer).toBe('carol@three.example');
    expect(conversationOf(pt, 'bob')).toBe('carol@three.example');
  });
});

describe('envelope ids across servers', () => {
  it('name a recipient elsewhere by handle and domain, or by its digest past 64 characters (client.envelopeID)', async () => {
    const mid = 'AAAAAAAAAAAAAAAAAAAAAA';
    expect(await envelopeIdFor(mid, 'bob', false)).toBe(mid);
    expect(await envelopeIdFor(mid, 'bob', true)).toBe(`${mid}:bob`);
    expect(await envelopeIdFor(mid, 'bob@two.example', true)).toBe(`${mid}:bob:two.example`);
    expect(await envelopeIdFor(mid, 'bob@127.0.0.1:7000', true)).toBe(`${mid}:bob:127.0.0.1:7000`);
    const long = 'bob@' + 'a'.repeat(40) + '.example';
    const id = await envelopeIdFor(mid, long, true);
    expect(id).toMatch(new RegExp(`^${mid}:[A-Za-z0-9_-]{22}$`));
    expect(id).not.toBe(await envelopeIdFor(mid, 'bob@' + 'b'.repeat(40) + '.example', true));
  });

  it('an address at the own server is the bare handle, whoever wrote it', () => {
    const raw = { v: 1, from: 'alice', to: 'bob', ts: 1, body: '', mid: 'm1', reply: { from: 'bob@two.example', mid: 'm0', body: '' } };
    expect(qualifyPlaintext(parsePlaintext(raw, { from: 'alice', to: 'bob', id: 'm1' }), 'two.example', 'two.example').reply?.from).toBe('bob');
  });
});
