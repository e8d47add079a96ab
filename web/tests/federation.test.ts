// Chat across servers (docs/protocol.md, "Federation"): fake servers of
// their own domains, each relaying documents for the others through an
// outbox delivered on demand, with the privacy settings they enforce.

import 'fake-indexeddb/auto';
import { IDBFactory } from 'fake-indexeddb';
import { describe, expect, it, vi } from 'vitest';
import { ApiError, type OutboxEntry, type Privacy, type Receipt } from '../src/lib/api';
import { decodeB64, encodeB64, utf8 } from '../src/lib/bytes';
import { Chat, convOfRoute, groupConv, peerConv, type ChatDeps } from '../src/lib/chat.svelte';
import { addMembers, promoteMember } from '../src/lib/groups';
import { openHistory } from '../src/lib/history';
import { generateKeys, type Identity } from '../src/lib/keys';
import type { Envelope, MessagePayload, PublicUser } from '../src/lib/protocol';
import { canonicalize } from '../src/lib/jcs';
import { primaryId, verify, verifyDocument, type Signed } from '../src/lib/signing';
import type { TypingPayload } from '../src/lib/typing';
import type { Pin } from '../src/lib/trust';

interface Server {
  domain: string;
  records: PublicUser[];
  inboxes: Map<string, Envelope[]>;
  outbox: Map<string, (OutboxEntry & { doc: Signed<MessagePayload> })[]>; // by sending handle
  privacy: Map<string, Privacy>;
  posts: Signed<MessagePayload>[];
  /** Each POST /v1/typing body, as JSON on the wire. */
  typing: { to: { to: string; ct: string }[]; remote?: Signed<TypingPayload>[] }[];
}

/** Servers by domain, one network: each answers WebFinger and records for its own people at https://<domain>. */
function network() {
  const servers = new Map<string, Server>();
  /** Domains whose servers do not answer browsers now. */
  const down = new Set<string>();
  let seq = 0;
  const pinStore = new Map<string, [string, Pin][]>();

  /** Takes a document posted by one of srv's people (relayed: delivered by another server). */
  function store(srv: Server, doc: Signed<MessagePayload>, relayed = false): Receipt {
    const p = doc.payload;
    if (!relayed) srv.posts.push(doc);
    if (p.server !== srv.domain) {
      const from = p.from.split('@')[0]!;
      const entries = srv.outbox.get(from) ?? [];
      const to = `${p.to}@${p.server}`;
      if (!entries.some((e) => e.to === to && e.id === p.id)) entries.push({ to, id: p.id, state: 'queued', doc: JSON.parse(JSON.stringify(doc)) });
      srv.outbox.set(from, entries);
      return { to, id: p.id, state: 'queued' };
    }
    const env: Envelope = { seq: ++seq, received_at: 1, message: JSON.parse(JSON.stringify(doc)) };
    srv.inboxes.set(p.to, [...(srv.inboxes.get(p.to) ?? []), env]);
    return { to: p.to, seq: env.seq, id: p.id };
  }

  function deps(srv: Server): ChatDeps {
    const idb = new IDBFactory();
    const privacyOf = (h: string) => srv.privacy.get(h) ?? { strangers: 'accept', known: [], blocked: [] };
    return {
      lookup: async (h) => {
        const r = srv.records.find((r) => r.handle === h);
        if (!r) throw new ApiError(404, 'unknown_handle', 'no such user');
        return r;
      },
      postMessage: async (doc) => store(srv, doc),
      postBatch: async (_who, docs) => ({ receipts: docs.map((d) => store(srv, d)) }),
      postTyping: async (_who, to, remote) => (srv.typing.push(JSON.parse(JSON.stringify(remote.length ? { to, remote } : { to }))), {}),
      getBlob: async () => {
        throw new ApiError(404, 'unknown_blob', 'no blobs here');
      },
      getJSON: async <T,>(url: string): Promise<T> => {
        const u = new URL(url);
        const other = servers.get(u.host);
        if (!other || u.protocol !== 'https:' || down.has(u.host)) throw new ApiError(0, 'network', `no server at ${u.origin}`);
        if (u.pathname === '/.well-known/webfinger') {
          const acct = u.searchParams.get('resource')!.slice('acct:'.length);
          const [handle, domain] = acct.split('@');
          if (domain !== other.domain || !other.records.some((r) => r.handle === handle)) throw new ApiError(404, 'unknown_handle', 'no such user');
          return { subject: `acct:${acct}`, links: [{ rel: 'self', href: `https://${other.domain}/v1/u/${handle}` }] } as T;
        }
        const r = other.records.find((r) => `/v1/u/${r.handle}` === u.pathname);
        if (!r) throw new ApiError(404, 'unknown_handle', 'no such user');
        return structuredClone(r) as T;
      },
      // Newest first, as the server lists them.
      outbox: async (who) => ({ entries: (srv.outbox.get(who.handle) ?? []).map(({ doc: _doc, ...e }) => ({ ...e })).reverse() }),
      getPrivacy: async (who) => structuredClone(privacyOf(who.handle)),
      putPrivacy: async (who, p) => (srv.privacy.set(who.handle, structuredClone(p)), p),
      inbox: async (who, since) => {
        const msgs = (srv.inboxes.get(who.handle) ?? []).filter((e) => e.seq > since);
        return { messages: msgs, next: msgs.at(-1)?.seq ?? since };
      },
      ack: async () => ({ deleted: 0 }),
      openHistory: (handle) => openHistory(handle, idb),
      legacy: { get: async () => undefined, del: async () => {} },
      now: () => Math.floor(Date.now() / 1000),
      trust: { webfinger: async () => ({ links: [] }), keyLog: async () => ({ documents: [], next: 0 }) },
      loadPins: async (me) => new Map(structuredClone(pinStore.get(`${srv.domain}/${me}`) ?? [])),
      savePins: async (me, pins) => void pinStore.set(`${srv.domain}/${me}`, structuredClone([...pins])),
    };
  }

  return {
    down,
    server(domain: string): Server {
      const s: Server = { domain, records: [], inboxes: new Map(), outbox: new Map(), privacy: new Map(), posts: [], typing: [] };
      servers.set(domain, s);
      return s;
    },
    async person(srv: Server, handle: string): Promise<Chat> {
      const k = await generateKeys();
      const pid = await primaryId('ed25519', k.signing.publicKey);
      const id: Identity = { ...k, handle, server: srv.domain, primaryId: pid };
      srv.records.push({ handle, server: srv.domain, primary_id: pid, alg: 'ed25519', key: encodeB64(k.signing.publicKey), enc_key: encodeB64(k.enc.publicKey), created_at: 1 });
      return new Chat(id, deps(srv));
    },
    /** Another device of chat's identity, with a history of its own; the identity's record lists two signing keys from now on (so each device sends sync copies). */
    device(srv: Server, of: Chat): Chat {
      const r = srv.records.find((r) => r.handle === of.me.handle)!;
      r.signing_keys = [
        { alg: 'ed25519', key: r.key, label: 'laptop' },
        { alg: 'ed25519', key: r.key, label: 'phone' },
      ];
      return new Chat(of.me, deps(srv));
    },
    /** Every server's courier: each queued document to its server, refused as the recipient's privacy says. */
    deliver(): void {
      for (const srv of servers.values()) {
        for (const entries of srv.outbox.values()) {
          for (const e of entries.filter((e) => e.state === 'queued')) {
            const dest = servers.get(e.doc.payload.server)!;
            const from = e.doc.payload.from;
            const p = dest.privacy.get(e.doc.payload.to) ?? { strangers: 'accept', known: [], blocked: [] };
            if (p.blocked.includes(from) || p.blocked.includes(from.split('@')[1]!)) {
              e.state = 'failed';
              e.error = { code: 'sender_blocked' };
              continue;
            }
            if (p.strangers === 'refuse' && !p.known.includes(from)) {
              e.state = 'failed';
              e.error = { code: 'stranger_refused' };
              continue;
            }
            store(dest, e.doc, true);
            e.state = 'delivered';
          }
        }
      }
    },
  };
}

describe('chat across servers', () => {
  it('sends to an address through the own server, shows it pending until delivered, and the reader takes it as a request', async () => {
    const net = network();
    const one = net.server('one.example');
    const two = net.server('two.example');
    const alice = await net.person(one, 'alice');
    const bob = await net.person(two, 'bob');
    await alice.load();
    await bob.load();

    await alice.send('bob@two.example', 'hello across');
    const doc = one.posts.at(-1)!;
    expect(doc.payload).toMatchObject({ server: 'two.example', from: 'alice@one.example', to: 'bob' });
    let mine = (await alice.openConversation(peerConv('bob@two.example'))).messages[0]!;
    expect(mine).toMatchObject({ state: 'sent', relay: [{ to: 'bob@two.example', id: doc.payload.id, state: 'queued' }] });
    expect(alice.relayingAny).toBe(true);
    await alice.checkOutbox(); // still queued
    expect(alice.relayingAny).toBe(true);

    net.deliver();
    await alice.checkOutbox();
    mine = alice.conversations.get(peerConv('bob@two.example'))!.messages[0]!;
    expect(mine.relay).toEqual([{ to: 'bob@two.example', id: doc.payload.id, state: 'delivered' }]);
    expect(alice.relayingAny).toBe(false);

    // bob's server stored it; bob verifies it against alice's keys from one.example.
    await bob.poll();
    const conv = bob.conversations.get(peerConv('alice@one.example'))!;
    expect(conv).toMatchObject({ request: true, unread: 1, peer: 'alice@one.example' });
    await bob.receiptsSent();
    expect(two.posts).toEqual([]);
    bob.markRead(conv.conv);
    await bob.receiptsSent();
    expect(two.posts).toEqual([]);

    // Accepting (here, by answering) tells bob's server alice is known, and alice what bob has.
    await bob.send('alice@one.example', 'who is this?');
    expect(two.privacy.get('bob')?.known).toEqual(['alice@one.example']);
    expect(bob.conversations.get(conv.conv)!.request).toBeUndefined();
    await bob.receiptsSent();
    expect(two.posts.map((d) => [d.payload.server, d.payload.from, d.payload.to])).toContainEqual(['one.example', 'bob@two.example', 'alice']);
    net.deliver();
    await alice.poll();
    mine = alice.conversations.get(peerConv('bob@two.example'))!.messages[0]!;
    expect(mine.receipts?.delivered).toEqual(['bob@two.example']);

    // bob replies quoting alice: he names her by address, she reads herself bare.
    const quoted = (await bob.openConversation(conv.conv)).messages.find((m) => !m.mine)!;
    await bob.send('alice@one.example', 'hi back', { reply: { from: quoted.from, mid: quoted.mid, body: quoted.body } });
    expect(two.posts.at(-1)!.payload).toMatchObject({ server: 'one.example', from: 'bob@two.example', to: 'alice' });
    net.deliver();
    await alice.poll();
    const reply = alice.conversations.get(peerConv('bob@two.example'))!.messages.at(-1)!;
    expect(reply).toMatchObject({ body: 'hi back', from: 'bob@two.example', mine: false, reply: { from: 'alice', mid: mine.mid } });
    // Her conversation is no request: she wrote first.
    expect(alice.conversations.get(peerConv('bob@two.example'))!.request).toBeUndefined();

    // Pinned by address on each side; the safety numbers match.
    const [na, nb] = await Promise.all([alice.safetyNumbers('bob@two.example'), bob.safetyNumbers('alice@one.example')]);
    expect(na.pinned).toMatch(/^[\d ]{71}$/);
    expect(nb.pinned).toBe(na.pinned);
  });

  it('blocks a stranger at the own server: its messages fail at its sender, with the reason, and nothing more is kept', async () => {
    const net = network();
    const one = net.server('one.example');
    const two = net.server('two.example');
    const alice = await net.person(one, 'alice');
    const carol = await net.person(two, 'carol');
    await alice.load();
    await carol.load();
    await carol.send('alice@one.example', 'buy my stuff');
    net.deliver();
    await alice.poll();
    await alice.block('carol@two.example');
    expect(one.privacy.get('alice')).toEqual({ strangers: 'accept', known: [], blocked: ['carol@two.example'] });
    expect(alice.conversations.get(peerConv('carol@two.example'))).toMatchObject({ blocked: true, request: undefined });

    await carol.send('alice@one.example', 'are you there?');
    net.deliver();
    await carol.checkOutbox();
    const refused = carol.conversations.get(peerConv('alice@one.example'))!.messages.at(-1)!;
    expect(refused.relay).toMatchObject([{ state: 'failed', error: 'sender_blocked' }]);
    expect(carol.relayingAny).toBe(false);

    // Blocking her whole server, then unblocking.
    await alice.block('carol@two.example', true);
    expect(one.privacy.get('alice')?.blocked).toEqual(['carol@two.example', 'two.example']);
    await alice.unblock('carol@two.example');
    expect(one.privacy.get('alice')?.blocked).toEqual([]);
    expect(alice.conversations.get(peerConv('carol@two.example'))!.blocked).toBeUndefined();
    // A retry of the refused message goes out again under a new envelope id.
    await carol.retryRelay(peerConv('alice@one.example'), refused.mid);
    net.deliver();
    await carol.checkOutbox();
    expect(carol.conversations.get(peerConv('alice@one.example'))!.messages.at(-1)!.relay).toMatchObject([{ state: 'delivered' }]);
    await alice.poll();
    expect((await alice.openConversation(peerConv('carol@two.example'))).messages.map((m) => m.body)).toEqual(['buy my stuff', 'are you there?']);
  });

  it("a sender elsewhere whose server cannot be asked does not hold up the inbox: its messages wait and open later", async () => {
    const net = network();
    const one = net.server('one.example');
    const two = net.server('two.example');
    const alice = await net.person(one, 'alice');
    const dave = await net.person(one, 'dave');
    const bob = await net.person(two, 'bob');
    for (const c of [alice, dave, bob]) await c.load();
    await bob.send('alice@one.example', 'from bob');
    net.deliver();
    await dave.send('alice', 'from dave, after');
    net.down.add('two.example');
    await alice.poll();
    expect((await alice.openConversation(peerConv('dave'))).messages.map((m) => m.body)).toEqual(['from dave, after']);
    expect(alice.conversations.get(peerConv('bob@two.example'))!.withheld).toHaveLength(1);
    net.down.delete('two.example');
    await alice.poll();
    expect(alice.conversations.get(peerConv('bob@two.example'))!.withheld).toEqual([]);
    expect((await alice.openConversation(peerConv('bob@two.example'))).messages.map((m) => m.body)).toEqual(['from bob']);
    expect(alice.conversations.get(peerConv('bob@two.example'))!.request).toBe(true);
  });

  it('blocks a person of its own server in the client alone: the server setting names people elsewhere', async () => {
    const net = network();
    const one = net.server('one.example');
    const alice = await net.person(one, 'alice');
    const dave = await net.person(one, 'dave');
    await alice.load();
    await dave.load();
    await dave.send('alice', 'hi');
    await alice.poll();
    await alice.block('dave');
    expect(one.privacy.get('alice')).toBeUndefined();
    await dave.send('alice', 'hello?');
    await alice.poll();
    expect((await alice.openConversation(peerConv('dave'))).messages.map((m) => m.body)).toEqual(['hi']);
    await alice.unblock('dave');
    expect(alice.conversations.get(peerConv('dave'))!.blocked).toBeUndefined();
  });

  it('asks the outbox less often while nothing moves, and forgets a document the outbox no longer knows', async () => {
    const net = network();
    const one = net.server('one.example');
    net.server('two.example');
    const alice = await net.person(one, 'alice');
    await net.person(net.server('three.example'), 'bob');
    await alice.load();
    await alice.send('bob@three.example', 'hi');
    let asked = 0;
    const deps = (alice as unknown as { deps: ChatDeps }).deps;
    const outbox = deps.outbox;
    deps.outbox = (who) => (asked++, outbox(who));
    const t0 = Date.now();
    await alice.outboxTick(t0);
    await alice.outboxTick(t0 + 1_000); // within the wait
    expect(asked).toBe(1);
    await alice.outboxTick(t0 + 60_000);
    expect(asked).toBe(2);
    // Three days later, the outbox holds nothing of it.
    one.outbox.clear();
    const now = deps.now;
    deps.now = () => now() + 80 * 3600;
    await alice.checkOutbox();
    const m = alice.conversations.get(peerConv('bob@three.example'))!.messages[0]!;
    expect(m.relay).toMatchObject([{ state: 'failed', error: 'unknown' }]);
    expect(alice.relayingAny).toBe(false);
  });

  it('refusing strangers keeps whom one chats with known, and a new chat elsewhere becomes known', async () => {
    const net = network();
    const one = net.server('one.example');
    const two = net.server('two.example');
    const alice = await net.person(one, 'alice');
    const bob = await net.person(two, 'bob');
    const eve = await net.person(two, 'eve');
    const zoe = await net.person(two, 'zoe');
    for (const c of [alice, bob, eve, zoe]) await c.load();
    await alice.send('bob@two.example', 'hi');
    await eve.send('alice@one.example', 'spam');
    net.deliver();
    await alice.poll();
    await alice.setStrangers('refuse');
    expect(one.privacy.get('alice')).toEqual({ strangers: 'refuse', known: ['bob@two.example'], blocked: [] });
    alice.conversation('zoe@two.example');
    await expect.poll(() => one.privacy.get('alice')?.known).toEqual(['bob@two.example', 'zoe@two.example']);
    expect(await alice.strangers()).toBe('refuse');
  });

  it('a group of people on two servers: one document per member for its server, every member on one state', async () => {
    const net = network();
    const one = net.server('one.example');
    const two = net.server('two.example');
    const alice = await net.person(one, 'alice');
    const dave = await net.person(one, 'dave');
    const bob = await net.person(two, 'bob');
    for (const c of [alice, dave, bob]) await c.load();
    const g = await alice.createGroup('team', ['dave', 'Bob@Two.Example']);
    expect(alice.groups.state(g.slice(2))).toMatchObject({ members: ['alice', 'bob@two.example', 'dave'] });
    net.deliver();
    await Promise.all([dave.poll(), bob.poll()]);
    expect(bob.groups.state(g.slice(2))).toMatchObject({ members: ['alice@one.example', 'bob', 'dave@one.example'], by: 'alice@one.example' });
    expect(dave.groups.state(g.slice(2))).toMatchObject({ members: ['alice', 'bob@two.example', 'dave'] });

    await bob.sendIn(groupConv(g.slice(2)), 'hello team');
    const sent = two.posts.filter((d) => d.payload.server === 'one.example');
    expect(sent.map((d) => [d.payload.from, d.payload.to]).sort()).toEqual([
      ['bob@two.example', 'alice'],
      ['bob@two.example', 'dave'],
    ]);
    net.deliver();
    await Promise.all([alice.poll(), dave.poll()]);
    for (const c of [alice, dave]) {
      const m = (await c.openConversation(g)).messages.at(-1)!;
      expect(m).toMatchObject({ body: 'hello team', from: 'bob@two.example' });
    }
  });
});

describe('typing across servers', () => {
  it('one signed document per other server beside the local recipients, shown at each reader in its conversation, by address', async () => {
    const net = network();
    const one = net.server('one.example');
    const two = net.server('two.example');
    const three = net.server('three.example');
    const alice = await net.person(one, 'alice');
    const dave = await net.person(one, 'dave');
    const bob = await net.person(two, 'bob');
    const carol = await net.person(two, 'carol');
    const erin = await net.person(three, 'erin');
    for (const c of [alice, dave, bob, carol, erin]) await c.load();
    const g = await alice.createGroup('team', ['dave', 'bob@two.example', 'carol@two.example', 'erin@three.example']);
    const gid = g.slice(2);
    net.deliver();
    await Promise.all([dave, bob, carol, erin].map((c) => c.poll()));
    expect(bob.groups.state(gid)?.members).toContain('alice@one.example');

    alice.typed(g);
    await vi.waitFor(() => expect(one.typing).toHaveLength(1));
    const body = one.typing[0]!;
    expect(body.to.map((t) => t.to)).toEqual(['dave']);
    const docs = body.remote!;
    expect(docs.map((d) => d.payload.server).sort()).toEqual(['three.example', 'two.example']);
    const aliceKey = decodeB64(one.records.find((r) => r.handle === 'alice')!.key);
    for (const d of docs) {
      expect(Object.keys(d.payload).sort()).toEqual(['from', 'server', 'to', 'ts', 'type']);
      expect(d.payload).toMatchObject({ type: 'kez.chat.typing/v1', from: 'alice@one.example' });
      expect(Math.abs(d.payload.ts - Date.now() / 1000)).toBeLessThan(5);
      expect(d.signature).toMatchObject({ alg: 'ed25519', key: encodeB64(aliceKey) });
      expect(await verifyDocument(d, 'ed25519', aliceKey)).toBe(true);
      expect(await verify('ed25519', aliceKey, utf8(canonicalize(d.payload)), decodeB64(d.signature.sig))).toBe(true);
      // Another payload under the same signature does not verify.
      expect(await verifyDocument({ ...d, payload: { ...d.payload, server: 'evil.example' } }, 'ed25519', aliceKey)).toBe(false);
    }
    const atTwo = docs.find((d) => d.payload.server === 'two.example')!;
    const atThree = docs.find((d) => d.payload.server === 'three.example')!;
    expect(atTwo.payload.to.map((t) => t.to).sort()).toEqual(['bob', 'carol']);
    expect(atThree.payload.to.map((t) => t.to)).toEqual(['erin']);
    const ctFor = (h: string) => atTwo.payload.to.find((t) => t.to === h)!.ct;

    // Each server hands its people the event from the document's from.
    await bob.onTyping({ from: 'alice@one.example', ct: ctFor('bob') });
    expect(bob.typing.get(g)).toEqual(['alice@one.example']);
    await erin.onTyping({ from: 'alice@one.example', ct: atThree.payload.to[0]!.ct });
    expect(erin.typing.get(g)).toEqual(['alice@one.example']);
    await dave.onTyping({ from: 'alice', ct: body.to[0]!.ct });
    expect(dave.typing.get(g)).toEqual(['alice']);
    // A from or to other than the note's is dropped.
    await carol.onTyping({ from: 'alice@one.example', ct: ctFor('bob') }); // to bob, read by carol
    await carol.onTyping({ from: 'dave@one.example', ct: ctFor('carol') }); // from alice, the event says dave
    await carol.onTyping({ from: 'alice', ct: ctFor('carol') }); // a bare name: alice of carol's own server
    expect(carol.typing.has(g)).toBe(false);
    await carol.onTyping({ from: 'alice@one.example', ct: ctFor('carol') });
    expect(carol.typing.get(g)).toEqual(['alice@one.example']);

    // Stopping tells them once more, in the same form.
    alice.stoppedTyping(g);
    await vi.waitFor(() => expect(one.typing).toHaveLength(2));
    const stop = one.typing[1]!.remote!.find((d) => d.payload.server === 'two.example')!;
    await bob.onTyping({ from: 'alice@one.example', ct: stop.payload.to.find((t) => t.to === 'bob')!.ct });
    expect(bob.typing.has(g)).toBe(false);
  });

  it('a person elsewhere: the document alone (no local recipients), shown in their conversation until blocked; none to a request', async () => {
    const net = network();
    const one = net.server('one.example');
    const two = net.server('two.example');
    const alice = await net.person(one, 'alice');
    const bob = await net.person(two, 'bob');
    await alice.load();
    await bob.load();
    await alice.send('bob@two.example', 'hi');
    net.deliver();
    await bob.poll();
    const conv = peerConv('alice@one.example');
    expect(bob.conversations.get(conv)?.request).toBe(true);

    // bob has not accepted her: he tells her nothing.
    bob.typed(conv);
    await new Promise((r) => setTimeout(r, 20));
    expect(two.typing).toEqual([]);

    alice.typed(peerConv('bob@two.example'));
    await vi.waitFor(() => expect(one.typing).toHaveLength(1));
    expect(one.typing[0]!.to).toEqual([]);
    const [doc] = one.typing[0]!.remote!;
    expect(doc!.payload).toMatchObject({ type: 'kez.chat.typing/v1', server: 'two.example', from: 'alice@one.example' });
    expect(doc!.payload.to.map((t) => t.to)).toEqual(['bob']);
    const ct = doc!.payload.to[0]!.ct;
    await bob.onTyping({ from: 'alice@one.example', ct });
    expect(bob.typing.get(conv)).toEqual(['alice@one.example']);
    expect(bob.typing.has(peerConv('alice'))).toBe(false);

    alice.stoppedTyping(peerConv('bob@two.example'));
    await vi.waitFor(() => expect(one.typing).toHaveLength(2));
    await bob.onTyping({ from: 'alice@one.example', ct: one.typing[1]!.remote![0]!.payload.to[0]!.ct });
    expect(bob.typing.has(conv)).toBe(false);
    // Blocked, her typing is no longer shown.
    await bob.block('alice@one.example');
    await bob.onTyping({ from: 'alice@one.example', ct });
    expect(bob.typing.has(conv)).toBe(false);
  });
});

/** gina@two.example, a stranger to alice@one.example, makes a group of
 * both and ivy@three.example; delivered, not yet read. */
async function ginasGroup(name: string) {
  const net = network();
  const one = net.server('one.example');
  const two = net.server('two.example');
  const three = net.server('three.example');
  const alice = await net.person(one, 'alice');
  const gina = await net.person(two, 'gina');
  const ivy = await net.person(three, 'ivy');
  for (const c of [alice, gina, ivy]) await c.load();
  const g = await gina.createGroup(name, ['alice@one.example', 'ivy@three.example']);
  net.deliver();
  return { net, one, two, three, alice, gina, ivy, g };
}

describe('groups with strangers elsewhere', () => {
  it('an invitation from a stranger elsewhere is a request: its messages are kept, nothing is told until accepted, then the receipts held back go', async () => {
    const net = network();
    const one = net.server('one.example');
    const two = net.server('two.example');
    const alice = await net.person(one, 'alice');
    const gina = await net.person(two, 'gina');
    const hank = await net.person(two, 'hank');
    for (const c of [alice, gina, hank]) await c.load();
    const g = await gina.createGroup('offers', ['alice@one.example', 'hank']);
    net.deliver();
    await Promise.all([alice.poll(), hank.poll()]);
    // Taken (every later version builds on it), but a request.
    expect(alice.groups.state(g.slice(2))?.members).toEqual(['alice', 'gina@two.example', 'hank@two.example']);
    expect(alice.conversations.get(g)).toMatchObject({ group: true, title: 'offers', request: true, inviter: 'gina@two.example', unread: 0 });
    // hank, of gina's own server, is not asked.
    expect(hank.conversations.get(g)?.request).toBeUndefined();

    await hank.sendIn(g, 'cheap watches');
    net.deliver();
    await alice.poll();
    const offer = (await alice.openConversation(g)).messages.at(-1)!;
    expect(offer).toMatchObject({ body: 'cheap watches', from: 'hank@two.example', state: 'received' });
    expect(offer.receiptSent).toBeUndefined();
    expect(alice.conversations.get(g)!.unread).toBe(1);
    // Reading it, or typing, tells nobody.
    alice.markRead(g);
    alice.typed(g);
    await alice.receiptsSent();
    await new Promise((r) => setTimeout(r, 20));
    expect(one.posts).toEqual([]);
    expect(one.typing).toEqual([]);

    await alice.acceptGroupRequest(g);
    await alice.receiptsSent();
    expect(alice.conversations.get(g)).toMatchObject({ request: undefined, inviter: undefined });
    expect(one.posts.map((d) => [d.payload.server, d.payload.to])).toContainEqual(['two.example', 'hank']);
    net.deliver();
    await hank.poll();
    const sent = (await hank.openConversation(g)).messages.find((m) => m.body === 'cheap watches')!;
    expect(sent.receipts?.delivered).toEqual(['alice@one.example']);
  });

  it('is no request from someone one chats with, a fellow member of a group one accepted, or a person of one own server; answering accepts it', async () => {
    const net = network();
    const one = net.server('one.example');
    const two = net.server('two.example');
    const alice = await net.person(one, 'alice');
    const dave = await net.person(one, 'dave');
    const bob = await net.person(two, 'bob');
    const carol = await net.person(two, 'carol');
    const gina = await net.person(two, 'gina');
    const zed = await net.person(two, 'zed');
    for (const c of [alice, dave, bob, carol, gina, zed]) await c.load();
    await alice.send('bob@two.example', 'hi bob');
    const fromBob = await bob.createGroup('friends', ['alice@one.example', 'carol']);
    const fromDave = await dave.createGroup('office', ['alice', 'gina@two.example']);
    net.deliver();
    await alice.poll();
    expect(alice.conversations.get(fromBob)).toMatchObject({ group: true, title: 'friends' });
    expect(alice.conversations.get(fromBob)!.request).toBeUndefined();
    expect(alice.conversations.get(fromDave)!.request).toBeUndefined();
    // carol is in a group alice is in; gina only in one she has not accepted.
    const fromCarol = await carol.createGroup('book club', ['alice@one.example']);
    net.deliver();
    await alice.poll();
    expect(alice.conversations.get(fromCarol)!.request).toBeUndefined();

    // gina is in dave's group, which alice is in: no stranger either. zed is.
    const fromGina = await gina.createGroup('party', ['alice@one.example']);
    const g = await zed.createGroup('raffle', ['alice@one.example']);
    net.deliver();
    await alice.poll();
    expect(alice.conversations.get(fromGina)!.request).toBeUndefined();
    expect(alice.conversations.get(g)).toMatchObject({ request: true, inviter: 'zed@two.example' });
    // Answering accepts it.
    await alice.sendIn(g, 'who are you?');
    expect(alice.conversations.get(g)!.request).toBeUndefined();
  });

  it('blocking the inviter refuses them and keeps nothing of the group; unblocking makes it a request again', async () => {
    const { net, one, three, alice, gina, ivy, g } = await ginasGroup('offers');
    await Promise.all([alice.poll(), ivy.poll()]);
    await alice.block('gina@two.example');
    expect(one.privacy.get('alice')?.blocked).toEqual(['gina@two.example']);
    expect(alice.conversations.get(g)).toMatchObject({ blocked: true, request: undefined, inviter: 'gina@two.example' });
    expect(alice.conversations.get(peerConv('gina@two.example'))?.blocked).toBe(true);

    // ivy, whom the block does not name, still writes in it: nothing is kept, and no typing shown.
    await ivy.sendIn(g, 'still there?');
    net.deliver();
    await alice.poll();
    expect((await alice.openConversation(g)).messages.map((m) => m.body)).not.toContain('still there?');
    ivy.typed(g);
    await vi.waitFor(() => expect(three.typing).toHaveLength(1));
    const note = three.typing[0]!.remote!.find((d) => d.payload.server === 'one.example')!;
    await alice.onTyping({ from: 'ivy@three.example', ct: note.payload.to[0]!.ct });
    expect(alice.typing.has(g)).toBe(false);
    // gina's next invitation does not reach alice's server, and would not be taken.
    const again = await gina.createGroup('more offers', ['alice@one.example']);
    net.deliver();
    await alice.poll();
    expect(alice.conversations.has(again)).toBe(false);

    await alice.unblock('gina@two.example');
    expect(one.privacy.get('alice')?.blocked).toEqual([]);
    expect(alice.conversations.get(g)).toMatchObject({ request: true, blocked: undefined });

    // Blocking her whole server from the request blocks the group too.
    await alice.block('gina@two.example', true);
    expect(one.privacy.get('alice')?.blocked).toEqual(['two.example']);
    expect(alice.conversations.get(g)?.blocked).toBe(true);
  });
});

describe('refusing strangers, with groups', () => {
  it('the people elsewhere who join a group one is in become known to one own server, whoever added them, so their messages get through', async () => {
    const net = network();
    const one = net.server('one.example');
    const two = net.server('two.example');
    const three = net.server('three.example');
    const alice = await net.person(one, 'alice');
    const bob = await net.person(two, 'bob');
    const carol = await net.person(two, 'carol');
    const erin = await net.person(three, 'erin');
    for (const c of [alice, bob, carol, erin]) await c.load();
    await alice.setStrangers('refuse');
    expect(one.privacy.get('alice')).toEqual({ strangers: 'refuse', known: [], blocked: [] });

    // Her own group: its people elsewhere are known once she reads it back.
    const g = await alice.createGroup('team', ['bob@two.example']);
    const gid = g.slice(2);
    await alice.flushKnown();
    expect(one.privacy.get('alice')!.known).toEqual(['bob@two.example']);
    let held = alice.groups.held(gid)!;
    await alice.changeGroup(held.state, await promoteMember(held.state, 'alice', 'bob@two.example', held.hash));
    net.deliver();
    await bob.poll();
    await bob.acceptGroupRequest(g); // alice is a stranger to bob

    // bob, an admin now, adds carol of his server and erin of a third.
    held = bob.groups.held(gid)!;
    await bob.changeGroup(held.state, await addMembers(held.state, 'bob', ['carol', 'erin@three.example'], held.hash));
    net.deliver();
    await alice.poll();
    expect(alice.groups.state(gid)?.members).toEqual(['alice', 'bob@two.example', 'carol@two.example', 'erin@three.example']);
    await alice.flushKnown();
    expect(one.privacy.get('alice')!.known).toEqual(['bob@two.example', 'carol@two.example', 'erin@three.example']);

    await Promise.all([carol.poll(), erin.poll()]);
    await carol.sendIn(g, 'hello from carol');
    net.deliver();
    await carol.checkOutbox();
    const mine = carol.conversations.get(g)!.messages.at(-1)!;
    expect(mine.relay?.find((r) => r.to === 'alice@one.example')).toMatchObject({ state: 'delivered' });
    await alice.poll();
    expect((await alice.openConversation(g)).messages.at(-1)).toMatchObject({ body: 'hello from carol', from: 'carol@two.example' });
  });

  it('a pending group request makes no one known; accepting it does', async () => {
    const { net, one, alice, gina, g } = await ginasGroup('club');
    await alice.poll();
    await alice.setStrangers('refuse');
    expect(one.privacy.get('alice')!.known).toEqual([]);
    await alice.acceptGroupRequest(g);
    expect(one.privacy.get('alice')!.known).toEqual(['gina@two.example', 'ivy@three.example']);
    await gina.sendIn(g, 'welcome');
    net.deliver();
    await alice.poll();
    expect((await alice.openConversation(g)).messages.at(-1)).toMatchObject({ body: 'welcome', from: 'gina@two.example' });
  });

  it('at the cap of known people, someone no longer chatted with is forgotten to make room for a new member', async () => {
    const net = network();
    const one = net.server('one.example');
    const two = net.server('two.example');
    const alice = await net.person(one, 'alice');
    await net.person(two, 'bob');
    await alice.load();
    const old = Array.from({ length: 5000 }, (_, i) => `old${i}@gone.example`);
    one.privacy.set('alice', { strangers: 'refuse', known: old, blocked: [] });
    await alice.createGroup('team', ['bob@two.example']);
    await alice.flushKnown();
    const known = one.privacy.get('alice')!.known;
    expect(known).toHaveLength(5000);
    expect(known).toContain('bob@two.example');
    expect(known).toEqual(expect.arrayContaining(old.slice(1)));
  });

  it('accepting people is tried again at the next poll when the server could not be told', async () => {
    const net = network();
    const one = net.server('one.example');
    const two = net.server('two.example');
    const alice = await net.person(one, 'alice');
    await net.person(two, 'bob');
    await alice.load();
    await alice.setStrangers('refuse');
    const deps = (alice as unknown as { deps: ChatDeps }).deps;
    const put = deps.putPrivacy;
    let down = true;
    deps.putPrivacy = (who, p) => (down ? Promise.reject(new ApiError(503, 'unavailable', 'down')) : put(who, p));
    await alice.createGroup('team', ['bob@two.example']);
    await alice.flushKnown();
    expect(one.privacy.get('alice')!.known).toEqual([]);
    down = false;
    await alice.poll();
    await alice.flushKnown();
    expect(one.privacy.get('alice')!.known).toEqual(['bob@two.example']);
  });
});

describe('a linked device and the outbox', () => {
  it('follows what another device of the identity sent to people elsewhere: queued, delivered, failed, and a retry from the other device', async () => {
    const net = network();
    const one = net.server('one.example');
    const two = net.server('two.example');
    const laptop = await net.person(one, 'alice');
    const phone = net.device(one, laptop);
    const bob = await net.person(two, 'bob');
    const carol = await net.person(two, 'carol');
    for (const c of [laptop, phone, bob, carol]) await c.load();
    two.privacy.set('carol', { strangers: 'refuse', known: [], blocked: [] });

    await laptop.send('bob@two.example', 'from the laptop');
    // The laptop sent a sync copy beside bob's document.
    expect(one.posts.at(-1)?.payload).toMatchObject({ server: 'one.example', to: 'alice' });
    let asked = 0;
    const deps = (phone as unknown as { deps: ChatDeps }).deps;
    const outbox = deps.outbox;
    deps.outbox = (who) => (asked++, outbox(who));
    await phone.outboxTick(Date.now());
    expect(asked).toBe(0); // nothing to follow yet: the outbox is not asked

    await phone.poll();
    const conv = peerConv('bob@two.example');
    let copy = (await phone.openConversation(conv)).messages[0]!;
    expect(copy).toMatchObject({ mine: true, state: 'sent', body: 'from the laptop', relay: [{ to: 'bob@two.example', state: 'queued' }] });
    expect(phone.relayingAny).toBe(true);
    await phone.outboxTick(Date.now());
    expect(asked).toBe(1);
    copy = phone.conversations.get(conv)!.messages[0]!;
    expect(copy.relay).toEqual([{ to: 'bob@two.example', id: one.outbox.get('alice')![0]!.id, state: 'queued' }]);
    net.deliver();
    await phone.checkOutbox();
    expect(phone.conversations.get(conv)!.messages[0]!.relay).toMatchObject([{ state: 'delivered' }]);
    expect(phone.relayingAny).toBe(false);

    // Refused by carol's server: failed on both devices, with the reason.
    await laptop.send('carol@two.example', 'hello carol');
    net.deliver();
    await phone.poll();
    await phone.checkOutbox();
    const carolConv = peerConv('carol@two.example');
    const refused = (await phone.openConversation(carolConv)).messages[0]!;
    expect(refused.relay).toMatchObject([{ to: 'carol@two.example', state: 'failed', error: 'stranger_refused' }]);
    expect(phone.relayingAny).toBe(false);

    // carol lets her in; the laptop sends it again: the phone follows the retry too.
    two.privacy.set('carol', { strangers: 'refuse', known: ['alice@one.example'], blocked: [] });
    await laptop.checkOutbox();
    await laptop.retryRelay(carolConv, refused.mid);
    expect(one.posts.at(-1)!.payload.id).toMatch(new RegExp(`^${refused.mid}:r`));
    await phone.poll();
    expect(phone.relayingAny).toBe(true);
    net.deliver();
    await phone.checkOutbox();
    expect(phone.conversations.get(carolConv)!.messages[0]!.relay).toMatchObject([{ to: 'carol@two.example', state: 'delivered' }]);
    expect(phone.relayingAny).toBe(false);
  });

  it('in a group, one document per member elsewhere; one the outbox never lists is dropped after a while', async () => {
    const net = network();
    const one = net.server('one.example');
    const two = net.server('two.example');
    const three = net.server('three.example');
    const laptop = await net.person(one, 'alice');
    const phone = net.device(one, laptop);
    const dave = await net.person(one, 'dave');
    const bob = await net.person(two, 'bob');
    const erin = await net.person(three, 'erin');
    for (const c of [laptop, phone, dave, bob, erin]) await c.load();
    const g = await laptop.createGroup('team', ['dave', 'bob@two.example', 'erin@three.example']);
    await laptop.sendIn(g, 'hello team');
    await phone.poll();
    const copy = (await phone.openConversation(g)).messages.at(-1)!;
    expect(copy).toMatchObject({ mine: true, body: 'hello team' });
    expect(copy.relay?.map((r) => r.to).sort()).toEqual(['bob@two.example', 'erin@three.example']);
    await phone.checkOutbox();
    expect(phone.conversations.get(g)!.messages.at(-1)!.relay?.every((r) => r.state === 'queued' && !r.unconfirmed)).toBe(true);

    // A message whose documents elsewhere the outbox never listed (the
    // other device sent it to no one there): expected a while, then dropped.
    await laptop.sendIn(g, 'second');
    const entries = one.outbox.get('alice')!;
    entries.splice(0, entries.length, ...entries.filter((e) => !e.id.startsWith(one.posts.at(-1)!.payload.id.split(':')[0]!)));
    await phone.poll();
    await phone.checkOutbox();
    const second = () => phone.conversations.get(g)!.messages.at(-1)!;
    expect(second().relay).toMatchObject([{ unconfirmed: true }, { unconfirmed: true }]);
    const deps = (phone as unknown as { deps: ChatDeps }).deps;
    const now = deps.now;
    deps.now = () => now() + 600;
    net.deliver();
    await phone.checkOutbox();
    expect(second().relay).toBeUndefined();
    expect(phone.conversations.get(g)!.messages.at(-2)!.relay).toMatchObject([{ state: 'delivered' }, { state: 'delivered' }]);
    expect(phone.relayingAny).toBe(false);
  });
});

describe('routes', () => {
  it('name a conversation by key, or a person by handle or address (whose loopback port holds a colon)', () => {
    expect(convOfRoute('p:bob@127.0.0.1:7000')).toBe('p:bob@127.0.0.1:7000');
    expect(convOfRoute('g:AAAAAAAAAAAAAAAAAAAAAA')).toBe('g:AAAAAAAAAAAAAAAAAAAAAA');
    expect(convOfRoute('bob@127.0.0.1:7000')).toBe('p:bob@127.0.0.1:7000');
    expect(convOfRoute('bob')).toBe('p:bob');
  });
});
