import 'fake-indexeddb/auto';
import { IDBFactory } from 'fake-indexeddb';
import { describe, expect, it } from 'vitest';
import {
  appendMessage,
  conversations,
  deleteConversation,
  getConversation,
  getFile,
  getMeta,
  groupStates,
  historyKey,
  lastPage,
  latestGroupState,
  messageBySeq,
  migrateLegacy,
  openHistory,
  peerConv,
  putFile,
  putGroupState,
  updateConversation,
  updateMessage,
  type LegacyHistory,
  type LegacyStore,
  type NewMessage,
} from '../src/lib/history';

const fresh = () => openHistory('me', new IDBFactory());

const text = (conv: string, mid: string, from = 'bob', extra: Partial<NewMessage> = {}): NewMessage => ({
  conv,
  id: mid,
  mid,
  from,
  mine: from === 'me',
  body: `body ${mid}`,
  ts: 100,
  state: from === 'me' ? 'sent' : 'received',
  kind: 'text',
  ...extra,
});

function legacyStore(docs: Record<string, LegacyHistory>): LegacyStore & { docs: Map<string, LegacyHistory> } {
  const m = new Map(Object.entries(docs));
  return { docs: m, get: async (k) => structuredClone(m.get(k)), del: async (k) => void m.delete(k) };
}

describe('history', () => {
  it('gives each message the next order over every conversation and keeps the conversation preview and unread count', async () => {
    const db = await fresh();
    const a = await appendMessage(db, text('p:bob', 'm1'), { unread: true });
    const b = await appendMessage(db, text('p:carol', 'm2', 'carol'), { unread: true });
    const c = await appendMessage(db, text('p:bob', 'm3', 'me'));
    expect([a?.message.order, b?.message.order, c?.message.order]).toEqual([1, 2, 3]);
    expect(c?.conversation).toMatchObject({ conv: 'p:bob', peer: 'bob', title: 'bob', group: false, unread: 1, last: { from: 'me', mine: true, body: 'body m3', order: 3 } });
    const all = await conversations(db);
    expect(all.map((r) => [r.conv, r.unread, r.last?.order]).sort()).toEqual([
      ['p:bob', 1, 3],
      ['p:carol', 1, 2],
    ]);
    expect(await getMeta(db, 'order')).toBe(3);
  });

  it('stores a repeat delivery (same conversation, sender and mid) once', async () => {
    const db = await fresh();
    expect(await appendMessage(db, text('p:bob', 'm1'), { unread: true })).toBeDefined();
    expect(await appendMessage(db, text('p:bob', 'm1', 'bob', { body: 'again' }), { unread: true })).toBeUndefined();
    // The same mid from someone else, or in another conversation, is another message.
    expect(await appendMessage(db, text('p:bob', 'm1', 'me'))).toBeDefined();
    expect(await appendMessage(db, text('g:group1', 'm1'))).toBeDefined();
    const page = await lastPage(db, 'p:bob', 10);
    expect(page.messages.map((m) => [m.from, m.body])).toEqual([
      ['bob', 'body m1'],
      ['me', 'body m1'],
    ]);
    expect((await getConversation(db, 'p:bob'))?.unread).toBe(1);
  });

  it('reads a conversation page by page from the latest', async () => {
    const db = await fresh();
    for (let i = 1; i <= 12; i++) {
      await appendMessage(db, text('p:bob', `b${i}`));
      await appendMessage(db, text('p:carol', `c${i}`, 'carol'));
    }
    const last = await lastPage(db, 'p:bob', 5);
    expect(last.messages.map((m) => m.mid)).toEqual(['b8', 'b9', 'b10', 'b11', 'b12']);
    expect(last.more).toBe(true);
    const before = await lastPage(db, 'p:bob', 5, last.messages[0]!.order);
    expect(before.messages.map((m) => m.mid)).toEqual(['b3', 'b4', 'b5', 'b6', 'b7']);
    const first = await lastPage(db, 'p:bob', 5, before.messages[0]!.order);
    expect(first).toEqual({ messages: [expect.objectContaining({ mid: 'b1' }), expect.objectContaining({ mid: 'b2' })], more: false });
    expect(await lastPage(db, 'p:nobody', 5)).toEqual({ messages: [], more: false });
    const exact = await lastPage(db, 'p:carol', 12);
    expect([exact.messages.length, exact.more]).toEqual([12, false]);
  });

  it('updates a message by conversation, sender and mid, and the preview when it is the latest', async () => {
    const db = await fresh();
    await appendMessage(db, text('p:bob', 'old', 'me', { state: 'pending' }));
    await appendMessage(db, text('p:bob', 'new', 'bob'));
    const older = await updateMessage(db, 'p:bob', 'me', 'old', (m) => {
      m.state = 'sent';
      m.reactions = [{ from: 'bob', emoji: '👍' }];
    });
    expect(older?.message).toMatchObject({ mid: 'old', order: 1, state: 'sent', reactions: [{ from: 'bob', emoji: '👍' }] });
    expect(older?.conversation.last?.body).toBe('body new');
    const latest = await updateMessage(db, 'p:bob', 'bob', 'new', (m) => {
      m.deleted = true;
      m.body = '';
    });
    expect(latest?.conversation.last).toMatchObject({ deleted: true, body: '', order: 2 });
    expect((await getConversation(db, 'p:bob'))?.last?.deleted).toBe(true);
    // Another sender's mid, an unknown mid, or a change that declines, write nothing.
    expect(await updateMessage(db, 'p:bob', 'mallory', 'old', (m) => void (m.body = 'x'))).toBeUndefined();
    expect(await updateMessage(db, 'p:bob', 'me', 'nope', (m) => void (m.body = 'x'))).toBeUndefined();
    expect(await updateMessage(db, 'p:bob', 'me', 'old', () => false)).toBeUndefined();
    // A new mid (a message signed again) finds it from then on.
    await updateMessage(db, 'p:bob', 'me', 'old', (m) => void (m.id = m.mid = 'renamed'));
    expect((await lastPage(db, 'p:bob', 5)).messages.map((m) => m.mid)).toEqual(['renamed', 'new']);
    expect(await updateMessage(db, 'p:bob', 'me', 'renamed', (m) => void (m.receipts = { delivered: ['bob'], read: [] }))).toBeDefined();
  });

  it('finds who sent inbox message seq', async () => {
    const db = await fresh();
    await appendMessage(db, text('p:bob', 'm1', 'bob', { seq: 41 }));
    await appendMessage(db, text('p:bob', 'm2', 'me'));
    expect((await messageBySeq(db, 41))?.from).toBe('bob');
    expect(await messageBySeq(db, 42)).toBeUndefined();
  });

  it('changes and deletes conversations', async () => {
    const db = await fresh();
    await appendMessage(db, text('g:abc', 'm1'));
    const r = await updateConversation(db, 'g:abc', (c) => void (c.title = 'Climbing'));
    expect(r).toMatchObject({ conv: 'g:abc', group: true, title: 'Climbing', unread: 0 });
    expect(await updateConversation(db, 'p:new', () => false)).toMatchObject({ conv: 'p:new' });
    expect(await getConversation(db, 'p:new')).toBeUndefined();
    await deleteConversation(db, 'g:abc');
    expect(await conversations(db)).toEqual([]);
    expect((await lastPage(db, 'g:abc', 5)).messages).toEqual([]);
  });

  it('keeps group states by version and attachment bytes by blob id', async () => {
    const db = await fresh();
    await putGroupState(db, { group: 'g1', version: 2, state: { name: 'two' } });
    await putGroupState(db, { group: 'g1', version: 1, state: { name: 'one' } });
    await putGroupState(db, { group: 'g2', version: 9, state: { name: 'other' } });
    expect((await groupStates(db, 'g1')).map((s) => s.version)).toEqual([1, 2]);
    expect(await latestGroupState(db, 'g1')).toEqual({ group: 'g1', version: 2, state: { name: 'two' } });
    expect(await latestGroupState(db, 'g3')).toBeUndefined();
    const data = new Uint8Array([1, 2, 3]).buffer;
    await putFile(db, { id: 'blob1', data, type: 'image/png', size: 3 });
    expect(new Uint8Array((await getFile(db, 'blob1'))!.data as ArrayBuffer)).toEqual(new Uint8Array([1, 2, 3]));
  });

  describe('migrating the single document', () => {
    const doc = (): LegacyHistory => ({
      cursor: 7,
      conversations: [
        {
          peer: 'alice',
          unread: 1,
          messages: [
            { id: 'a1', mine: false, body: 'hi', ts: 1, seq: 3, state: 'received' },
            { id: 'a2', mine: true, body: 'hello', ts: 2, state: 'failed', doc: { payload: { id: 'a2' } } as never },
          ],
        },
        { peer: 'constructor', unread: 0, messages: [{ id: 'c1', mine: false, body: 'odd name', ts: 5, seq: 7, state: 'received' }], withheld: [{ seq: 6 } as never] },
        { peer: 'quiet', unread: 0, messages: [] },
      ],
    });

    it('moves every message and conversation into the stores once, then deletes the document', async () => {
      const db = await fresh();
      const legacy = legacyStore({ [historyKey('me')]: doc() });
      const imported = await migrateLegacy(db, 'me', legacy);
      await imported?.rest;
      expect(legacy.docs.size).toBe(0);
      expect(await getMeta(db, 'cursor')).toBe(7);
      const alice = await lastPage(db, peerConv('alice'), 10);
      expect(alice.messages.map((m) => [m.from, m.mine, m.body, m.state, m.seq, m.mid])).toEqual([
        ['alice', false, 'hi', 'received', 3, 'a1'],
        ['me', true, 'hello', 'failed', undefined, 'a2'],
      ]);
      expect(alice.messages[1]!.doc).toEqual({ payload: { id: 'a2' } });
      const convs = new Map((await conversations(db)).map((c) => [c.conv, c]));
      expect(convs.get('p:alice')).toMatchObject({ unread: 1, last: { body: 'hello', mine: true } });
      expect(convs.get('p:constructor')).toMatchObject({ withheld: [{ seq: 6 }], last: { body: 'odd name' } });
      expect(convs.get('p:quiet')).toMatchObject({ title: 'quiet', unread: 0 });
      expect(convs.get('p:quiet')?.last).toBeUndefined();
      // New messages follow the migrated ones.
      expect((await appendMessage(db, text('p:alice', 'a3', 'alice')))?.message.order).toBe(4);
      expect(await migrateLegacy(db, 'me', legacy)).toBeUndefined();
    });

    it('reads the oldest documents, keyed by peer', async () => {
      const db = await fresh();
      const legacy = legacyStore({ [historyKey('me')]: { cursor: 3, conversations: { alice: { peer: 'alice', messages: [{ id: 'x', mine: false, body: 'old', ts: 1, seq: 3, state: 'received' }], unread: 1 } } } });
      await (await migrateLegacy(db, 'me', legacy))?.rest;
      expect((await lastPage(db, 'p:alice', 5)).messages.map((m) => m.body)).toEqual(['old']);
    });

    it('deletes without importing again a document left behind by a migration cut short', async () => {
      const db = await fresh();
      const legacy = legacyStore({ [historyKey('me')]: doc() });
      const kept = legacy.del;
      legacy.del = async () => {
        throw new Error('the tab closed');
      };
      await expect((await migrateLegacy(db, 'me', legacy))?.rest).rejects.toThrow(/tab closed/);
      expect(legacy.docs.size).toBe(1);
      legacy.del = kept;
      await (await migrateLegacy(db, 'me', legacy))?.rest;
      expect(legacy.docs.size).toBe(0);
      expect((await lastPage(db, 'p:alice', 10)).messages).toHaveLength(2);
    });

    it('stores the latest messages first and, cut short, resumes without duplicating or overwriting anything', async () => {
      const factory = new IDBFactory();
      let db = await openHistory('me', factory);
      const legacy = legacyStore({ [historyKey('me')]: doc() });
      const imported = await migrateLegacy(db, 'me', legacy, { recent: 1, chunk: 1 });
      // The first transaction holds each conversation's latest message: what the app shows first.
      expect((await lastPage(db, 'p:alice', 1)).messages.map((m) => m.mid)).toEqual(['a2']);
      expect((await lastPage(db, 'p:constructor', 1)).messages.map((m) => m.mid)).toEqual(['c1']);
      db.close(); // the tab closes while the rest is being written
      await expect(imported?.rest).rejects.toThrow();
      expect(legacy.docs.size).toBe(1);

      db = await openHistory('me', factory);
      // Used in between: a migrated message changed, a new one arrived.
      await updateMessage(db, 'p:alice', 'me', 'a2', (m) => void (m.state = 'sent'));
      expect((await appendMessage(db, text('p:alice', 'a3', 'alice')))?.message.order).toBe(4);
      await (await migrateLegacy(db, 'me', legacy, { recent: 1, chunk: 1 }))?.rest;
      expect(legacy.docs.size).toBe(0);
      expect((await lastPage(db, 'p:alice', 10)).messages.map((m) => [m.mid, m.order, m.state])).toEqual([
        ['a1', 1, 'received'],
        ['a2', 2, 'sent'],
        ['a3', 4, 'received'],
      ]);
      expect((await getConversation(db, 'p:alice'))?.last?.body).toBe('body a3');
      expect(await getMeta(db, 'cursor')).toBe(7);
    });

    it('leaves another identity\'s document alone', async () => {
      const db = await fresh();
      const legacy = legacyStore({ [historyKey('someone')]: doc() });
      expect(await migrateLegacy(db, 'me', legacy)).toBeUndefined();
      expect(legacy.docs.size).toBe(1);
      expect(await conversations(db)).toEqual([]);
    });
  });
});
