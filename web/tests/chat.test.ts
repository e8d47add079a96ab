import 'fake-indexeddb/auto';
import { IDBFactory } from 'fake-indexeddb';
import { describe, expect, it, vi } from 'vitest';
import { encryptAttachment } from '../src/lib/attachments';
import { replyTo } from '../src/lib/conversation';
import { removeMember } from '../src/lib/groups';
import { ApiError, type InboxPage, type Receipt } from '../src/lib/api';
import { encodeB64 } from '../src/lib/bytes';
import { Chat, historyKey, PAGE_SIZE, peerConv, type ChatDeps, type ChatMessage } from '../src/lib/chat.svelte';
import { appendMessage, getMeta, openHistory, type LegacyHistory } from '../src/lib/history';
import { generateKeys, type Identity } from '../src/lib/keys';
import { newMessage, newMessageOf, type Envelope, type MessagePayload, type PublicUser } from '../src/lib/protocol';
import { primaryId, type Signed } from '../src/lib/signing';
import { KeyChanged, type Pin } from '../src/lib/trust';

const SERVER = 'chat.example';

async function person(handle: string): Promise<{ id: Identity; record: PublicUser }> {
  const k = await generateKeys();
  const pid = await primaryId('ed25519', k.signing.publicKey);
  return {
    id: { ...k, handle, server: SERVER, primaryId: pid },
    record: { handle, server: SERVER, primary_id: pid, alg: 'ed25519', key: encodeB64(k.signing.publicKey), enc_key: encodeB64(k.enc.publicKey), created_at: 1 },
  };
}

/**
 * A fake server: one inbox per handle, acks recorded, failures on demand,
 * no key directory (keys stand on their pins), records swapped on demand.
 */
function fakeServer(records: PublicUser[]) {
  // Every fake server has an IndexedDB of its own: each test starts empty.
  const idb = new IDBFactory();
  const legacy = new Map<string, LegacyHistory>();
  const pinStore = new Map<string, [string, Pin][]>();
  const inboxes = new Map<string, Envelope[]>();
  const acks: number[] = [];
  const batches: string[][] = [];
  const typingSent: { to: string; ct: string }[] = [];
  const blobs = new Map<string, Uint8Array<ArrayBuffer>>();
  let seq = 0;
  let failPosts = 0;
  const deps: ChatDeps = {
    lookup: async (h) => {
      const r = records.find((r) => r.handle === h);
      if (!r) throw new ApiError(404, 'unknown_handle', 'no such user');
      return r;
    },
    postMessage: async (doc: Signed<MessagePayload>): Promise<Receipt> => {
      if (failPosts > 0) {
        failPosts--;
        throw new ApiError(0, 'network', 'offline');
      }
      const to = doc.payload.to;
      const env: Envelope = { seq: ++seq, received_at: 1, message: JSON.parse(JSON.stringify(doc)) };
      inboxes.set(to, [...(inboxes.get(to) ?? []), env]);
      return { to, seq: env.seq, id: doc.payload.id };
    },
    postBatch: async (_who, docs) => {
      if (failPosts > 0) {
        failPosts--;
        throw new ApiError(0, 'network', 'offline');
      }
      const receipts: Receipt[] = [];
      for (const doc of docs) {
        const to = doc.payload.to;
        const env: Envelope = { seq: ++seq, received_at: 1, message: JSON.parse(JSON.stringify(doc)) };
        inboxes.set(to, [...(inboxes.get(to) ?? []), env]);
        receipts.push({ to, seq: env.seq, id: doc.payload.id });
      }
      batches.push(docs.map((d) => d.payload.to));
      return { receipts };
    },
    postTyping: async (_who, to) => {
      typingSent.push(...to);
      return { relayed: to.length };
    },
    getBlob: async (id) => {
      const b = blobs.get(id);
      if (!b) throw new ApiError(404, 'unknown_blob', 'no such blob');
      return b;
    },
    getJSON: async (url) => {
      throw new ApiError(0, 'network', `no network in this test (${url})`);
    },
    outbox: async () => ({ entries: [] }),
    getPrivacy: async () => ({ strangers: 'accept', known: [], blocked: [] }),
    putPrivacy: async (_who, p) => p,
    inbox: async (who, since): Promise<InboxPage> => {
      const msgs = (inboxes.get(who.handle) ?? []).filter((e) => e.seq > since);
      return { messages: msgs, next: msgs.at(-1)?.seq ?? since };
    },
    ack: async (who, upto) => {
      acks.push(upto);
      inboxes.set(who.handle, (inboxes.get(who.handle) ?? []).filter((e) => e.seq > upto));
      return { deleted: 0 };
    },
    openHistory: (handle) => openHistory(handle, idb),
    legacy: { get: async (k) => structuredClone(legacy.get(k)), del: async (k) => void legacy.delete(k) },
    now: () => Math.floor(Date.now() / 1000),
    trust: { webfinger: async () => ({ links: [] }), keyLog: async () => ({ documents: [], next: 0 }) },
    loadPins: async (me) => new Map(structuredClone(pinStore.get(me) ?? [])),
    savePins: async (me, pins) => void pinStore.set(me, structuredClone([...pins])),
  };
  /** Answers rec for its handle from now on, as a server that swaps keys would. */
  const swap = (rec: PublicUser) => records.splice(records.findIndex((r) => r.handle === rec.handle), 1, rec);
  /** A value of handle's history meta store, as the next load reads it. */
  const meta = async (handle: string, key: 'cursor' | 'order' | 'legacyImported') => getMeta(await openHistory(handle, idb), key);
  return { deps, idb, legacy, meta, inboxes, acks, swap, batches, typingSent, blobs, failNextPosts: (n: number) => (failPosts = n) };
}

/** The messages of the conversation with peer, as its screen shows them (the latest page). */
async function shown(chat: Chat, peer: string): Promise<ChatMessage[]> {
  return (await chat.openConversation(peerConv(peer))).messages;
}

describe('Chat', () => {
  it('delivers, decrypts, stores and acknowledges, and keeps history across a reload', async () => {
    const alice = await person('alice');
    const bob = await person('bob');
    const srv = fakeServer([alice.record, bob.record]);
    const a = new Chat(alice.id, srv.deps);
    const b = new Chat(bob.id, srv.deps);
    await a.send('bob', 'hi bob');
    await a.send('bob', 'second');
    expect((await shown(a, 'bob')).map((m) => [m.body, m.state])).toEqual([['hi bob', 'sent'], ['second', 'sent']]);

    await b.poll();
    expect(b.conversations.get('p:alice')!.unread).toBe(2);
    expect(b.conversations.get('p:alice')!.last?.body).toBe('second');
    expect((await shown(b, 'alice')).map((m) => m.body)).toEqual(['hi bob', 'second']);
    expect(srv.acks).toEqual([2]);
    expect(srv.inboxes.get('bob')).toEqual([]);
    expect(await srv.meta('bob', 'cursor')).toBe(2);

    // An envelope at or before the cursor (a stream resuming, a poll racing it) is skipped.
    await b.ingest([{ seq: 2, received_at: 1, message: { payload: {}, signature: {} } as never }]);
    expect(await shown(b, 'alice')).toHaveLength(2);

    const reloaded = new Chat(bob.id, srv.deps);
    await reloaded.load();
    expect(reloaded.cursor).toBe(2);
    expect(reloaded.conversations.get('p:alice')!.messages).toEqual([]); // read as the conversation opens
    expect(reloaded.conversations.get('p:alice')!.unread).toBe(2);
    expect((await shown(reloaded, 'alice')).map((m) => m.body)).toEqual(['hi bob', 'second']);
    reloaded.markRead('p:alice');
    expect(reloaded.conversations.get('p:alice')!.unread).toBe(0);
    // The conversation the app opens at is read with the list.
    const again = new Chat(bob.id, srv.deps);
    await again.load('p:alice');
    expect(again.conversations.get('p:alice')).toMatchObject({ unread: 0, loaded: true, more: false });
    expect(again.conversations.get('p:alice')!.messages.map((m) => m.body)).toEqual(['hi bob', 'second']);
  });

  it('marks a failed send and a retry posts the same message once', async () => {
    const alice = await person('alice');
    const bob = await person('bob');
    const srv = fakeServer([alice.record, bob.record]);
    const a = new Chat(alice.id, srv.deps);
    srv.failNextPosts(1);
    await expect(a.send('bob', 'are you there?')).rejects.toThrow(/offline/);
    const m = (await shown(a, 'bob'))[0]!;
    expect(m.state).toBe('failed');
    await a.retry('bob', m.mid);
    expect((await shown(a, 'bob'))[0]!.state).toBe('sent');
    expect(srv.inboxes.get('bob')!.map((e) => e.message.payload.id)).toEqual([m.id]);
  });

  it('drops what does not verify but still moves past it', async () => {
    const alice = await person('alice');
    const bob = await person('bob');
    const mallory = await person('mallory');
    const srv = fakeServer([alice.record, bob.record, mallory.record]);
    // Mallory signs a message claiming to be from alice.
    const forged = await newMessage({ handle: 'alice', server: SERVER, signing: mallory.id.signing, enc: mallory.id.enc }, bob.record, 'f1', 'forged', 1);
    const ok = await newMessage({ handle: 'alice', server: SERVER, signing: alice.id.signing, enc: alice.id.enc }, bob.record, 'g1', 'genuine', 2);
    const b = new Chat(bob.id, srv.deps);
    await b.ingest([
      { seq: 5, received_at: 1, message: forged },
      { seq: 9, received_at: 1, message: ok },
    ]);
    expect((await shown(b, 'alice')).map((m) => m.body)).toEqual(['genuine']);
    expect(b.cursor).toBe(9);
    expect(srv.acks).toEqual([9]);
  });

  it('does not move past a message whose sender could not be looked up', async () => {
    const alice = await person('alice');
    const bob = await person('bob');
    const srv = fakeServer([alice.record, bob.record]);
    const doc = await newMessage({ handle: 'alice', server: SERVER, signing: alice.id.signing, enc: alice.id.enc }, bob.record, 'm', 'later', 2);
    const offline: ChatDeps = { ...srv.deps, lookup: async () => { throw new ApiError(0, 'network', 'offline'); } };
    const b = new Chat(bob.id, offline);
    await b.ingest([{ seq: 3, received_at: 1, message: doc }]);
    expect(b.cursor).toBe(0);
    expect(srv.acks).toEqual([]);
  });

  it('does not move past or acknowledge a message it could not store', async () => {
    const alice = await person('alice');
    const bob = await person('bob');
    const srv = fakeServer([alice.record, bob.record]);
    const doc = await newMessage({ handle: 'alice', server: SERVER, signing: alice.id.signing, enc: alice.id.enc }, bob.record, 'm', 'kept later', 2);
    const b = new Chat(bob.id, srv.deps);
    (await b.db()).close(); // every write fails from now on
    await b.ingest([{ seq: 3, received_at: 1, message: doc }]);
    expect(b.cursor).toBe(0);
    expect(srv.acks).toEqual([]);
  });

  it('keeps a conversation of its own for peers named like Object properties', async () => {
    const bob = await person('bob');
    const odd = await Promise.all(['constructor', '__proto__', 'toString', 'hasOwnProperty'].map(person));
    const srv = fakeServer([bob.record, ...odd.map((p) => p.record)]);
    for (const p of odd) await new Chat(p.id, srv.deps).send('bob', `from ${p.id.handle}`);
    const b = new Chat(bob.id, srv.deps);
    await b.poll();
    expect(b.cursor).toBe(4);
    for (const p of odd) expect((await shown(b, p.id.handle)).map((m) => m.body), p.id.handle).toEqual([`from ${p.id.handle}`]);
    expect(b.list.map((c) => c.title).sort()).toEqual(['__proto__', 'constructor', 'hasOwnProperty', 'toString']);

    const reloaded = new Chat(bob.id, srv.deps);
    await reloaded.load();
    for (const p of odd) expect((await shown(reloaded, p.id.handle)).map((m) => m.body)).toEqual([`from ${p.id.handle}`]);
    expect(Object.getPrototypeOf({})).toBe(Object.prototype); // nothing was polluted
  });

  it('reads a history stored before, keyed by peer', async () => {
    const bob = await person('bob');
    const srv = fakeServer([bob.record]);
    srv.legacy.set(historyKey('bob'), { cursor: 3, conversations: { alice: { peer: 'alice', messages: [{ id: 'x', mine: false, body: 'old', ts: 1, seq: 3, state: 'received' }], unread: 1 } } });
    const b = new Chat(bob.id, srv.deps);
    await b.load();
    expect((await shown(b, 'alice')).map((m) => m.body)).toEqual(['old']);
    expect(b.cursor).toBe(3);
    await b.legacyImport;
    expect(srv.legacy.has(historyKey('bob'))).toBe(false); // migrated once, then deleted
  });

  it('holds messages to and from a peer whose keys the server swapped until the person accepts them', async () => {
    const alice = await person('alice');
    const bob = await person('bob');
    const mallory = await person('bob'); // the server's own keys under bob's handle
    const srv = fakeServer([alice.record, bob.record]);
    const a = new Chat(alice.id, srv.deps);
    await a.load();
    await a.send('bob', 'pinned'); // first contact pins bob's keys
    const pinned = (await a.safetyNumbers('bob')).pinned;

    srv.swap(mallory.record);
    const reloaded = new Chat(alice.id, srv.deps);
    await reloaded.load();
    await expect(reloaded.send('bob', 'secret')).rejects.toBeInstanceOf(KeyChanged);
    expect((await shown(reloaded, 'bob')).at(-1)!.state).toBe('failed');
    expect(srv.inboxes.get('bob') ?? []).toHaveLength(1); // only what went to the pinned keys
    expect(reloaded.keyProblems.get('bob')).toBeInstanceOf(KeyChanged);

    // What the swapped keys sign is held, not shown, and still acknowledged (kept here).
    const fake = await newMessage({ handle: 'bob', server: SERVER, signing: mallory.id.signing, enc: mallory.id.enc }, alice.record, 'x1', 'trust me', 5);
    await reloaded.ingest([{ seq: 7, received_at: 1, message: fake }]);
    expect(reloaded.conversation('bob').messages.filter((m) => !m.mine)).toEqual([]);
    expect(reloaded.conversation('bob').withheld?.map((e) => e.seq)).toEqual([7]);
    expect(srv.acks).toContain(7);

    const numbers = await reloaded.safetyNumbers('bob');
    expect(numbers.pinned).toBe(pinned);
    expect(numbers.proposed).toMatch(/^(\d{5} ){11}\d{5}$/);
    expect(numbers.proposed).not.toBe(pinned);

    // The person compared and accepts: what was held opens, sending works.
    await reloaded.accept('bob');
    expect(reloaded.keyProblems.has('bob')).toBe(false);
    expect(reloaded.conversation('bob').messages.filter((m) => !m.mine).map((m) => m.body)).toEqual(['trust me']);
    expect(reloaded.conversation('bob').withheld).toEqual([]);
    await reloaded.send('bob', 'after accepting');
    expect((await reloaded.safetyNumbers('bob')).pinned).toBe(numbers.proposed);
  });

  it('holds in memory only the pages of messages opened, and reads earlier ones on demand', async () => {
    const alice = await person('alice');
    const bob = await person('bob');
    const carol = await person('carol');
    const srv = fakeServer([alice.record, bob.record, carol.record]);
    const a = new Chat(alice.id, srv.deps);
    for (let i = 1; i <= PAGE_SIZE + 5; i++) await a.send('bob', `to bob ${i}`);
    await new Chat(carol.id, srv.deps).send('bob', 'from carol');
    const b = new Chat(bob.id, srv.deps);
    await b.poll();
    // Nothing is open: memory has the list (previews, unread counts), no messages.
    expect(b.list.map((c) => [c.conv, c.unread, c.last?.body, c.messages.length])).toEqual([
      ['p:carol', 1, 'from carol', 0],
      ['p:alice', PAGE_SIZE + 5, `to bob ${PAGE_SIZE + 5}`, 0],
    ]);
    const c = await b.openConversation('p:alice');
    expect(c.messages.map((m) => m.body)).toEqual(Array.from({ length: PAGE_SIZE }, (_, i) => `to bob ${i + 6}`));
    expect(c.more).toBe(true);
    expect(b.conversations.get('p:carol')!.messages).toEqual([]);
    await b.loadEarlier('p:alice');
    expect(c.messages.map((m) => m.body)).toEqual(Array.from({ length: PAGE_SIZE + 5 }, (_, i) => `to bob ${i + 1}`));
    expect(c.more).toBe(false);
    // What arrives in an open conversation is appended; in another, it only counts.
    await a.send('bob', 'one more');
    await new Chat(carol.id, srv.deps).send('bob', 'again');
    b.activeConv = 'p:alice';
    await b.poll();
    expect(c.messages.at(-1)?.body).toBe('one more');
    expect(b.conversations.get('p:carol')).toMatchObject({ unread: 2, messages: [], last: { body: 'again' } });
  }, 60_000); // 60 signed and encrypted messages on a busy machine

  it('shows a message left pending by a page that closed mid-send as failed, and Retry sends it', async () => {
    const alice = await person('alice');
    const bob = await person('bob');
    const srv = fakeServer([alice.record, bob.record]);
    const db = await srv.deps.openHistory('alice');
    await appendMessage(db, { conv: 'p:bob', id: 'cut', mid: 'cut', from: 'alice', mine: true, body: 'cut short', ts: srv.deps.now(), state: 'pending', kind: 'text' });
    const a = new Chat(alice.id, srv.deps);
    await a.load();
    expect((await shown(a, 'bob')).map((m) => m.state)).toEqual(['failed']);
    await a.retry('bob', 'cut');
    expect((await shown(a, 'bob')).map((m) => m.state)).toEqual(['sent']);
    expect(srv.inboxes.get('bob')!.map((e) => e.message.payload.id)).toEqual(['cut']);
  });

  it('lists conversations by their latest message', async () => {
    const me = await person('me');
    const srv = fakeServer([me.record]);
    const c = new Chat(me.id, srv.deps);
    c.conversation('old').last = { from: 'old', mine: false, body: 'x', ts: 10, order: 2, kind: 'text' };
    c.conversation('new').last = { from: 'new', mine: false, body: 'y', ts: 20, order: 1, kind: 'text' };
    c.conversation('empty');
    expect(c.list.map((x) => x.peer)).toEqual(['new', 'old', 'empty']);
  });
});

describe('Chat conversations (groups, receipts, reactions, deletion, attachments, typing, sync copies)', () => {
  async function trio() {
    const [alice, bob, carol] = await Promise.all(['alice', 'bob', 'carol'].map(person));
    const srv = fakeServer([alice!.record, bob!.record, carol!.record]);
    const a = new Chat(alice!.id, srv.deps);
    const b = new Chat(bob!.id, srv.deps);
    const c = new Chat(carol!.id, srv.deps);
    await Promise.all([a.load(), b.load(), c.load()]);
    return { srv, a, b, c };
  }
  const msgs = async (chat: Chat, conv: string) => (await chat.openConversation(conv)).messages;

  it('makes a group, sends to its members in one group send, and collects delivered and read receipts per member', async () => {
    const { srv, a, b, c } = await trio();
    const g = await a.createGroup('team', ['bob', 'carol']);
    await b.poll();
    await c.poll();
    expect(b.conversations.get(g)).toMatchObject({ title: 'team', group: true });
    expect(c.list.map((x) => x.conv)).toEqual([g]);

    await a.sendIn(g, 'hello team');
    const mid = (await msgs(a, g)).at(-1)!.mid;
    expect(srv.batches.at(-1)).toEqual(['bob', 'carol']);
    expect(srv.inboxes.get('bob')!.at(-1)!.message.payload.id).toBe(`${mid}:bob`);

    await b.poll();
    await c.poll();
    await Promise.all([b.receiptsSent(), c.receiptsSent()]);
    expect((await msgs(b, g)).at(-1)).toMatchObject({ mid, from: 'alice', body: 'hello team', mine: false });
    await a.poll();
    expect((await msgs(a, g)).at(-1)!.receipts).toEqual({ delivered: ['bob', 'carol'], read: [] });

    b.markRead(g);
    await b.receiptsSent();
    await a.poll();
    expect((await msgs(a, g)).at(-1)!.receipts).toEqual({ delivered: ['bob', 'carol'], read: ['bob'] });
  });

  it('sends no read receipts once they are turned off, and delivered ones still', async () => {
    const { srv, a, b } = await trio();
    await b.setReadReceipts(false);
    await a.send('bob', 'hi');
    await b.poll();
    await msgs(b, 'p:alice');
    b.markRead('p:alice');
    await b.receiptsSent();
    await a.poll();
    expect((await msgs(a, 'p:bob'))[0]!.receipts).toEqual({ delivered: ['bob'], read: [] });
    const reloaded = new Chat(b.me, srv.deps);
    await reloaded.load();
    expect(reloaded.readReceipts).toBe(false);
  });

  it('a removed member learns it, no longer shows the group and receives nothing more', async () => {
    const { srv, a, b, c } = await trio();
    const g = await a.createGroup('team', ['bob', 'carol']);
    const gid = g.slice(2);
    await c.poll();
    const before = a.groups.state(gid)!;
    await a.changeGroup(before, await removeMember(before, 'alice', 'carol'));
    expect(srv.batches.at(-1)).toEqual(['alice', 'bob', 'carol']); // the removed member is told, and the author reads its change back
    await c.poll();
    expect(c.list).toEqual([]);
    await a.sendIn(g, 'without carol');
    expect(srv.batches.at(-1)).toEqual(['bob']);
    await b.poll();
    expect((await msgs(b, g)).map((m) => m.body)).toEqual(['alice created "team"', 'alice removed carol', 'without carol']);
    // The groups are read back with the history.
    const reloaded = new Chat(b.me, srv.deps);
    await reloaded.load();
    expect(reloaded.groups.state(gid)!.members).toEqual(['alice', 'bob']);
  });

  it('drops group messages from a handle that is not a member', async () => {
    const { srv, a, b, c } = await trio();
    const g = await a.createGroup('pair', ['bob']);
    await b.poll();
    const doc = await newMessageOf(c.keys, await c.user('bob'), 'x:bob', { v: 1, from: 'carol', to: 'bob', ts: 1, body: 'intruder', mid: 'x', group: { id: g.slice(2) } }, 1);
    await srv.deps.postBatch(c.me, [doc]);
    await b.poll();
    expect((await msgs(b, g)).map((m) => m.body)).not.toContain('intruder');
    expect(b.conversations.has('p:carol')).toBe(false);
    await expect(c.sendIn(g, 'let me in')).rejects.toThrow(/not in this group/);
  });

  it('replies quote, reactions are one per person and changeable, and only the sender deletes for everyone', async () => {
    const { a, b } = await trio();
    await a.send('bob', 'original');
    await b.poll();
    const orig = (await msgs(b, 'p:alice'))[0]!;
    await b.send('alice', 'answer', { reply: replyTo('alice', orig.mid, orig.body) });
    await b.react(orig, '👍');
    await b.react((await msgs(b, 'p:alice'))[0]!, '🎉');
    await a.poll();
    const mine = () => msgs(a, 'p:bob').then((m) => m[0]!);
    expect((await msgs(a, 'p:bob')).find((m) => m.body === 'answer')!.reply).toEqual({ from: 'alice', mid: (await mine()).mid, body: 'original' });
    expect((await mine()).reactions).toEqual([{ from: 'bob', emoji: '🎉' }]);
    await b.react((await msgs(b, 'p:alice'))[0]!, '🎉'); // the same again takes it back
    await a.poll();
    expect((await mine()).reactions).toEqual([]);

    await expect(b.deleteForEveryone(orig)).rejects.toThrow(/own messages/);
    await a.deleteForEveryone(await mine());
    await b.poll();
    expect((await msgs(b, 'p:alice'))[0]).toMatchObject({ deleted: true, body: '' });
  });

  it('keeps attachments on the device before acknowledging, and refuses one whose digest differs', async () => {
    const { srv, a, b } = await trio();
    const file = new TextEncoder().encode('file bytes');
    const enc = await encryptAttachment(file);
    const id = encodeB64(new Uint8Array(32).fill(1));
    const bad = encodeB64(new Uint8Array(32).fill(2));
    srv.blobs.set(bad, enc.blob);
    const att = { blob: id, key: enc.key, sha256: enc.sha256, size: file.length, type: 'text/plain', name: 'a.txt' };
    await a.send('bob', '', { attachments: [att, { ...att, blob: bad, sha256: encodeB64(new Uint8Array(32)) }], blobs: [id, bad] });
    expect(srv.inboxes.get('bob')![0]!.message.payload.blobs).toEqual([id, bad]);

    const offline: ChatDeps = { ...srv.deps, getBlob: async () => Promise.reject(new ApiError(0, 'network', 'offline')) };
    const early = new Chat(b.me, offline);
    await early.load();
    await early.poll();
    expect(early.cursor).toBe(0); // not acknowledged while the file is not kept
    srv.blobs.set(id, enc.blob);
    await b.poll();
    expect(b.cursor).toBe(1);
    expect(await b.file(id)).toEqual(file);
    expect(await b.file(bad)).toBeUndefined();
    expect((await msgs(b, 'p:alice'))[0]!.attachments).toHaveLength(2);
  });

  it('sends typing notes sealed per recipient and shows the ones it receives', async () => {
    const { srv, a, b } = await trio();
    await a.send('bob', 'hi');
    await b.poll();
    a.typed('p:bob');
    a.typed('p:bob'); // within 3 s: not again
    await vi.waitFor(() => expect(srv.typingSent).toHaveLength(1));
    await b.onTyping({ from: 'alice', ct: srv.typingSent[0]!.ct });
    expect(b.typing.get('p:alice')).toEqual(['alice']);
    await b.onTyping({ from: 'carol', ct: srv.typingSent[0]!.ct }); // from differs from the note's
    expect(b.typing.has('p:carol')).toBe(false);
  });

  it("shows on a linked device the safety number of the identity, learning a primary key it did not keep from its own record", async () => {
    const [alice, bob] = await Promise.all(['alice', 'bob'].map(person));
    const srv = fakeServer([alice!.record, bob!.record]);
    const fromPrimary = (await new Chat(alice!.id, srv.deps).safetyNumbers('bob')).pinned;
    expect(fromPrimary).toMatch(/^\d{5}( \d{5}){11}$/);
    // A device linked before identities kept their primary key: its own
    // signing key, the identity's id, no primary.
    const device = { ...alice!.id, signing: (await generateKeys()).signing };
    expect((await new Chat(device, srv.deps).safetyNumbers('bob')).pinned).toBe(fromPrimary);
    // A server that answers another key for the identity is not believed.
    const liar = fakeServer([{ ...alice!.record, key: bob!.record.key }, bob!.record]);
    await expect(new Chat(device, liar.deps).safetyNumbers('bob')).rejects.toThrow(/not this identity/);
  });

  it('sends a sync copy when the identity has other devices, and that device shows it as its own', async () => {
    const [alice, bob] = await Promise.all(['alice', 'bob'].map(person));
    const devices = { ...alice!.record, signing_keys: [{ alg: 'ed25519', key: alice!.record.key, label: 'primary' }, { alg: 'ed25519', key: encodeB64(new Uint8Array(32).fill(4)), label: 'phone' }] };
    const srv = fakeServer([devices, bob!.record]);
    const laptop = new Chat(alice!.id, srv.deps);
    await laptop.send('bob', 'from the laptop');
    expect(srv.batches.at(-1)).toEqual(['bob', 'alice']);
    // The other device: the same identity, a history of its own.
    const phoneDeps: ChatDeps = { ...srv.deps, openHistory: (h) => openHistory(h, new IDBFactory()) };
    const phone = new Chat(alice!.id, phoneDeps);
    await phone.load();
    await phone.poll();
    expect(await msgs(phone, 'p:bob')).toMatchObject([{ body: 'from the laptop', mine: true, from: 'alice' }]);
    const b = new Chat(bob!.id, srv.deps);
    await b.poll();
    expect((await msgs(b, 'p:alice')).map((m) => m.body)).toEqual(['from the laptop']);
  });
});
