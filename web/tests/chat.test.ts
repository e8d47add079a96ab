import { describe, expect, it, vi } from 'vitest';
import { ApiError, type InboxPage, type Receipt } from '../src/lib/api';
import { encodeB64 } from '../src/lib/bytes';
import { Chat, historyKey, type ChatDeps, type History } from '../src/lib/chat.svelte';
import { generateKeys, type Identity } from '../src/lib/keys';
import { newMessage, type Envelope, type MessagePayload, type PublicUser } from '../src/lib/protocol';
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
  const store = new Map<string, History>();
  const pinStore = new Map<string, [string, Pin][]>();
  const inboxes = new Map<string, Envelope[]>();
  const acks: number[] = [];
  const batches: string[][] = [];
  const typingSent: { to: string; ct: string }[] = [];
  const blobs = new Map<string, Uint8Array<ArrayBuffer>>();
  const files = new Map<string, Uint8Array<ArrayBuffer>>();
  const settings = new Map<string, unknown>();
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
    saveFile: async (me, blob, bytes) => void files.set(`${me}:${blob}`, bytes),
    deleteFile: async (me, blob) => void files.delete(`${me}:${blob}`),
    loadFile: async (me, blob) => files.get(`${me}:${blob}`),
    loadSetting: async (k) => settings.get(k),
    saveSetting: async (k, v) => void settings.set(k, v),
    inbox: async (who, since): Promise<InboxPage> => {
      const msgs = (inboxes.get(who.handle) ?? []).filter((e) => e.seq > since);
      return { messages: msgs, next: msgs.at(-1)?.seq ?? since };
    },
    ack: async (who, upto) => {
      acks.push(upto);
      inboxes.set(who.handle, (inboxes.get(who.handle) ?? []).filter((e) => e.seq > upto));
      return { deleted: 0 };
    },
    load: async (k) => structuredClone(store.get(k)),
    save: async (k, h) => void store.set(k, structuredClone(h)),
    now: () => Math.floor(Date.now() / 1000),
    trust: { webfinger: async () => ({ links: [] }), keyLog: async () => ({ documents: [], next: 0 }) },
    loadPins: async (me) => new Map(structuredClone(pinStore.get(me) ?? [])),
    savePins: async (me, pins) => void pinStore.set(me, structuredClone([...pins])),
  };
  /** Answers rec for its handle from now on, as a server that swaps keys would. */
  const swap = (rec: PublicUser) => records.splice(records.findIndex((r) => r.handle === rec.handle), 1, rec);
  return { deps, store, inboxes, acks, swap, batches, typingSent, blobs, files, failNextPosts: (n: number) => (failPosts = n) };
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
    expect(a.conversations.get('bob')!.messages.map((m) => [m.body, m.state])).toEqual([['hi bob', 'sent'], ['second', 'sent']]);

    await b.poll();
    const conv = b.conversations.get('alice')!;
    expect(conv.messages.map((m) => m.body)).toEqual(['hi bob', 'second']);
    expect(conv.unread).toBe(2);
    expect(srv.acks).toEqual([2]);
    expect(srv.inboxes.get('bob')).toEqual([]);
    expect(srv.store.get(historyKey('bob'))!.cursor).toBe(2);

    // An envelope at or before the cursor (a stream resuming, a poll racing it) is skipped.
    await b.ingest([{ seq: 2, received_at: 1, message: { payload: {}, signature: {} } as never }]);
    expect(b.conversations.get('alice')!.messages).toHaveLength(2);

    const reloaded = new Chat(bob.id, srv.deps);
    await reloaded.load();
    expect(reloaded.cursor).toBe(2);
    expect(reloaded.conversations.get('alice')!.messages.map((m) => m.body)).toEqual(['hi bob', 'second']);
    reloaded.markRead('alice');
    expect(reloaded.conversations.get('alice')!.unread).toBe(0);
  });

  it('marks a failed send and a retry posts the same message once', async () => {
    const alice = await person('alice');
    const bob = await person('bob');
    const srv = fakeServer([alice.record, bob.record]);
    const a = new Chat(alice.id, srv.deps);
    srv.failNextPosts(1);
    await expect(a.send('bob', 'are you there?')).rejects.toThrow(/offline/);
    const m = a.conversations.get('bob')!.messages[0]!;
    expect(m.state).toBe('failed');
    await a.retry('bob', m.id);
    expect(a.conversations.get('bob')!.messages[0]!.state).toBe('sent');
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
    expect(b.conversations.get('alice')!.messages.map((m) => m.body)).toEqual(['genuine']);
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

  it('keeps a conversation of its own for peers named like Object properties', async () => {
    const bob = await person('bob');
    const odd = await Promise.all(['constructor', '__proto__', 'toString', 'hasOwnProperty'].map(person));
    const srv = fakeServer([bob.record, ...odd.map((p) => p.record)]);
    for (const p of odd) await new Chat(p.id, srv.deps).send('bob', `from ${p.id.handle}`);
    const b = new Chat(bob.id, srv.deps);
    await b.poll();
    expect(b.cursor).toBe(4);
    for (const p of odd) expect(b.conversations.get(p.id.handle)?.messages.map((m) => m.body), p.id.handle).toEqual([`from ${p.id.handle}`]);
    expect(b.list.map((c) => c.peer).sort()).toEqual(['__proto__', 'constructor', 'hasOwnProperty', 'toString']);

    const reloaded = new Chat(bob.id, srv.deps);
    await reloaded.load();
    for (const p of odd) expect(reloaded.conversations.get(p.id.handle)?.messages.map((m) => m.body)).toEqual([`from ${p.id.handle}`]);
    expect(Object.getPrototypeOf({})).toBe(Object.prototype); // nothing was polluted
  });

  it('reads a history stored before, keyed by peer', async () => {
    const bob = await person('bob');
    const srv = fakeServer([bob.record]);
    srv.store.set(historyKey('bob'), { cursor: 3, conversations: { alice: { peer: 'alice', messages: [{ id: 'x', mine: false, body: 'old', ts: 1, seq: 3, state: 'received' }], unread: 1 } } });
    const b = new Chat(bob.id, srv.deps);
    await b.load();
    expect(b.conversations.get('alice')?.messages.map((m) => m.body)).toEqual(['old']);
    expect(b.cursor).toBe(3);
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
    expect(reloaded.conversation('bob').messages.at(-1)!.state).toBe('failed');
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

  it('lists conversations by their latest message', async () => {
    const me = await person('me');
    const srv = fakeServer([me.record]);
    const c = new Chat(me.id, srv.deps);
    c.conversation('old').messages.push({ id: '1', mine: false, body: 'x', ts: 10, state: 'received' });
    c.conversation('new').messages.push({ id: '2', mine: false, body: 'y', ts: 20, state: 'received' });
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
    return { srv, a, b, c, alice: alice!, bob: bob!, carol: carol! };
  }

  it('makes a group, sends to its members in one group send, and collects delivered and read receipts per member', async () => {
    const { srv, a, b, c } = await trio();
    const g = await a.createGroup('team', ['bob', 'carol']);
    await b.poll();
    await c.poll();
    expect(b.conversations.get(g)!.group).toMatchObject({ name: 'team', member: true });
    expect(c.list.map((x) => x.peer)).toEqual([g]);

    await a.send(g, 'hello team');
    const mid = a.conversations.get(g)!.messages.at(-1)!.id;
    expect(srv.batches.at(-1)).toEqual(['bob', 'carol']);
    expect(srv.inboxes.get('bob')!.at(-1)!.message.payload.id).toBe(`${mid}:bob`);

    b.activePeer = null;
    await b.poll();
    await c.poll();
    await Promise.all([b.receiptsSent(), c.receiptsSent()]);
    expect(b.conversations.get(g)!.messages.at(-1)).toMatchObject({ id: mid, from: 'alice', body: 'hello team', mine: false });
    await a.poll();
    expect(a.conversations.get(g)!.messages.at(-1)!.receipts).toEqual({ bob: 'delivered', carol: 'delivered' });

    b.markRead(g);
    await b.receiptsSent();
    await a.poll();
    expect(a.conversations.get(g)!.messages.at(-1)!.receipts).toEqual({ bob: 'read', carol: 'delivered' });
  });

  it('sends no read receipts once they are turned off, and delivered ones still', async () => {
    const { a, b } = await trio();
    await b.setReadReceipts(false);
    await a.send('bob', 'hi');
    await b.poll();
    b.markRead('alice');
    await b.receiptsSent();
    await a.poll();
    expect(a.conversations.get('bob')!.messages[0]!.receipts).toEqual({ bob: 'delivered' });
    const reloaded = new Chat(b.me, (b as unknown as { deps: ChatDeps }).deps);
    await reloaded.load();
    expect(reloaded.readReceipts).toBe(false);
  });

  it('a removed member learns it, no longer shows the group and receives nothing more', async () => {
    const { srv, a, b, c } = await trio();
    const g = await a.createGroup('team', ['bob', 'carol']);
    const gid = g.slice(2);
    await c.poll();
    const before = a.groups.state(gid)!;
    const { removeMember } = await import('../src/lib/groups');
    await a.changeGroup(before, await removeMember(before, 'alice', 'carol'));
    expect(srv.batches.at(-1)).toEqual(['alice', 'bob', 'carol']); // the removed member is told, and the author reads its change back
    await c.poll();
    expect(c.list).toEqual([]);
    await a.send(g, 'without carol');
    expect(srv.batches.at(-1)).toEqual(['bob']);
    await b.poll();
    expect(b.conversations.get(g)!.messages.map((m) => m.body)).toEqual(['alice created "team"', 'alice removed carol', 'without carol']);
  });

  it('drops group messages from a handle that is not a member', async () => {
    const { srv, a, b, c } = await trio();
    const g = await a.createGroup('pair', ['bob']);
    await b.poll();
    // carol learns the id somehow and writes to bob as if in the group.
    (c as unknown as { groups: { histories: Map<string, unknown> } }).groups.histories.set(g.slice(2), structuredClone(a.groups.histories.get(g.slice(2))));
    await expect(c.send(g, 'let me in')).rejects.toThrow(/not in this group/);
    const { newMessageOf } = await import('../src/lib/protocol');
    const doc = await newMessageOf(c.keys, await c.user('bob'), 'x:bob', { v: 1, from: 'carol', to: 'bob', ts: 1, body: 'intruder', mid: 'x', group: { id: g.slice(2) } }, 1);
    await srv.deps.postBatch(c.me, [doc]);
    await b.poll();
    expect(b.conversations.get(g)!.messages.map((m) => m.body)).not.toContain('intruder');
    expect(b.conversations.has('carol')).toBe(false);
  });

  it('replies quote, reactions are one per person and changeable, and only the sender deletes for everyone', async () => {
    const { a, b } = await trio();
    await a.send('bob', 'original');
    await b.poll();
    const orig = b.conversations.get('alice')!.messages[0]!;
    const { replyTo } = await import('../src/lib/conversation');
    await b.send('alice', 'answer', { reply: replyTo('alice', orig.id, orig.body) });
    await b.react('alice', orig, '👍');
    await b.react('alice', orig, '🎉');
    await a.poll();
    const mine = a.conversations.get('bob')!.messages[0]!;
    expect(a.conversations.get('bob')!.messages.find((m) => m.body === 'answer')!.reply).toEqual({ from: 'alice', mid: mine.id, body: 'original' });
    expect(mine.reactions).toEqual({ bob: '🎉' });
    await b.react('alice', orig, '🎉'); // the same again takes it back
    await a.poll();
    expect(mine.reactions).toEqual({});

    await expect(b.deleteForEveryone('alice', orig)).rejects.toThrow(/own messages/);
    await a.deleteForEveryone('bob', mine);
    await b.poll();
    expect(b.conversations.get('alice')!.messages[0]).toMatchObject({ deleted: true, body: '' });
  });

  it('keeps attachments on the device before acknowledging, and refuses one whose digest differs', async () => {
    const { srv, a, b } = await trio();
    const { encryptAttachment } = await import('../src/lib/attachments');
    const file = new TextEncoder().encode('file bytes');
    const enc = await encryptAttachment(file);
    const id = encodeB64(new Uint8Array(32).fill(1));
    const bad = encodeB64(new Uint8Array(32).fill(2));
    srv.blobs.set(id, enc.blob);
    srv.blobs.set(bad, enc.blob);
    const att = { blob: id, key: enc.key, sha256: enc.sha256, size: file.length, type: 'text/plain', name: 'a.txt' };
    await a.send('bob', '', { attachments: [att, { ...att, blob: bad, sha256: encodeB64(new Uint8Array(32)) }], blobs: [id, bad] });
    expect(srv.inboxes.get('bob')![0]!.message.payload.blobs).toEqual([id, bad]);

    srv.blobs.delete(id);
    const offline: ChatDeps = { ...srv.deps, getBlob: async () => { throw new ApiError(0, 'network', 'offline'); } };
    const early = new Chat(b.me, offline);
    await early.poll();
    expect(early.cursor).toBe(0); // not acknowledged while the file is not kept
    srv.blobs.set(id, enc.blob);
    await b.poll();
    expect(srv.files.get(`bob:${id}`)).toEqual(file);
    expect(srv.files.has(`bob:${bad}`)).toBe(false);
    expect(b.conversations.get('alice')!.messages[0]!.attachments).toHaveLength(2);
  });

  it('sends typing notes sealed per recipient and shows the ones it receives', async () => {
    const { srv, a, b } = await trio();
    await a.send('bob', 'hi');
    await b.poll();
    a.typed('bob');
    a.typed('bob'); // within 3 s: not again
    await vi.waitFor(() => expect(srv.typingSent).toHaveLength(1));
    await b.onTyping({ from: 'alice', ct: srv.typingSent[0]!.ct });
    expect(b.typing.get('alice')).toEqual(['alice']);
    await b.onTyping({ from: 'carol', ct: srv.typingSent[0]!.ct }); // from differs from the note's
    expect(b.typing.has('carol')).toBe(false);
  });

  it('sends a sync copy when the identity has other devices, and that device shows it as its own', async () => {
    const [alice, bob] = await Promise.all(['alice', 'bob'].map(person));
    const devices = { ...alice!.record, signing_keys: [{ alg: 'ed25519', key: alice!.record.key, label: 'primary' }, { alg: 'ed25519', key: encodeB64(new Uint8Array(32).fill(4)), label: 'phone' }] };
    const srv = fakeServer([devices, bob!.record]);
    const laptop = new Chat(alice!.id, srv.deps);
    const phone = new Chat(alice!.id, srv.deps);
    await laptop.send('bob', 'from the laptop');
    expect(srv.batches.at(-1)).toEqual(['bob', 'alice']);
    await phone.poll();
    expect(phone.conversations.get('bob')!.messages).toMatchObject([{ body: 'from the laptop', mine: true, from: 'alice' }]);
    const b = new Chat(bob!.id, srv.deps);
    await b.poll();
    expect(b.conversations.get('alice')!.messages.map((m) => m.body)).toEqual(['from the laptop']);
  });
});
