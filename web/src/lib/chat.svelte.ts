// The chat state of one identity: conversations, history and the inbox
// cursor. Every envelope, from the stream or the poll, goes through ingest(),
// which decrypts it, stores it and then acknowledges it, so the server
// deletes only what is kept here.

import { get, set } from 'idb-keyval';
import { SvelteMap } from 'svelte/reactivity';
import * as api from './api';
import type { Identity } from './keys';
import { claimedSender, InvalidMessage, newMessage, newMessageId, openEnvelope, type Envelope, type MessageKeys, type MessagePayload, type PublicUser } from './protocol';
import type { Signed } from './signing';
import type { LinkStatus } from './stream';
import { conversationsOf, historyKey, type ChatMessage, type Conversation, type History } from './history';
import { checkPeer, KeyChanged, KeyDocumentMismatch, loadPins, safetyWith, savePins, type KeyPayload, type Pin, type TrustDeps } from './trust';

export type { ChatMessage, Conversation, History, MessageState } from './history';
export { historyKey } from './history';

/** A conversation the view follows as it changes. */
function reactive(c: Conversation): Conversation {
  const live = $state(c);
  return live;
}

/** What Chat talks to; tests give fakes. */
export interface ChatDeps {
  lookup: (handle: string) => Promise<PublicUser>;
  postMessage: (doc: Signed<MessagePayload>) => Promise<api.Receipt>;
  inbox: (who: api.Signer, since: number) => Promise<api.InboxPage>;
  ack: (who: api.Signer, upto: number) => Promise<unknown>;
  load: (key: string) => Promise<History | undefined>;
  save: (key: string, h: History) => Promise<void>;
  now: () => number;
  trust: TrustDeps;
  loadPins: (me: string) => Promise<Map<string, Pin>>;
  savePins: (me: string, pins: Map<string, Pin>) => Promise<void>;
}

export const browserDeps: ChatDeps = {
  lookup: api.lookup,
  postMessage: api.postMessage,
  inbox: api.inbox,
  ack: api.ack,
  load: (k) => get<History>(k),
  save: (k, h) => set(k, h),
  now: () => Math.floor(Date.now() / 1000),
  trust: { webfinger: api.webfinger, keyLog: (origin, pid, from) => api.keyLog<Signed<KeyPayload>>(origin, pid, from) },
  loadPins,
  savePins,
};

/** What a conversation holds of a peer's messages while their keys are in question, in bytes of ciphertext. */
export const MAX_WITHHELD_BYTES = 8 << 20;

/** Why a peer's keys are in question: changed (the person may accept them) or not what the peer signed. */
export type KeyProblem = KeyChanged | KeyDocumentMismatch;

const isKeyProblem = (e: unknown): e is KeyProblem => e instanceof KeyChanged || e instanceof KeyDocumentMismatch;

const pageVisible = () => typeof document === 'undefined' || document.visibilityState === 'visible';

export class Chat {
  /** Conversations by peer: a Map, since a handle may be any name, "constructor" and "__proto__" too. */
  readonly conversations = new SvelteMap<string, Conversation>();
  status = $state<LinkStatus>('connecting');
  /** The open conversation: its messages are read as they arrive. */
  activePeer = $state<string | null>(null);
  cursor = 0;
  /**
   * Peers whose keys are in question: their messages are held, and none
   * is sent to them, until the person compares safety numbers and accepts
   * the new keys (docs/protocol.md, "Checking keys").
   */
  readonly keyProblems = new SvelteMap<string, KeyProblem>();

  private acked = 0;
  private users = new Map<string, Promise<PublicUser>>();
  private pins = new Map<string, Pin>();
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    readonly me: Identity,
    private readonly deps: ChatDeps = browserDeps,
  ) {}

  get keys(): MessageKeys {
    return { handle: this.me.handle, server: this.me.server, signing: this.me.signing, enc: this.me.enc };
  }

  /** Conversations, the most recent first. */
  get list(): Conversation[] {
    const last = (c: Conversation) => c.messages.at(-1)?.ts ?? 0;
    return [...this.conversations.values()].sort((a, b) => last(b) - last(a) || a.peer.localeCompare(b.peer));
  }

  async load(): Promise<void> {
    this.pins = await this.deps.loadPins(this.me.handle);
    const h = await this.deps.load(historyKey(this.me.handle));
    if (h) {
      this.cursor = this.acked = h.cursor;
      this.conversations.clear();
      for (const [peer, c] of conversationsOf(h)) this.conversations.set(peer, reactive(c));
    }
  }

  private persist(): Promise<void> {
    return this.deps.save(historyKey(this.me.handle), {
      cursor: this.cursor,
      conversations: [...this.conversations.values()].map((c) => $state.snapshot(c) as Conversation),
    });
  }

  /** Runs f after everything queued before it: one ingest or send at a time. */
  private serial<T>(f: () => Promise<T>): Promise<T> {
    const p = this.chain.then(f, f);
    this.chain = p.catch(() => {});
    return p;
  }

  /** The peer's record, its keys checked against its key documents and its pin (once a session). */
  user(handle: string): Promise<PublicUser> {
    let u = this.users.get(handle);
    if (!u) {
      u = this.checkedUser(handle);
      this.users.set(handle, u);
      u.catch(() => this.users.delete(handle));
    }
    return u;
  }

  private async checkedUser(handle: string): Promise<PublicUser> {
    const answered = await this.deps.lookup(handle);
    try {
      const { record, changed } = await checkPeer(answered, this.pins, this.deps.trust);
      if (changed) await this.deps.savePins(this.me.handle, this.pins);
      this.keyProblems.delete(handle);
      return record;
    } catch (e) {
      if (isKeyProblem(e)) this.keyProblems.set(handle, e);
      throw e;
    }
  }

  /**
   * Pins the keys the person compared (the change's new keys) and opens
   * what was held: called only after the safety numbers matched.
   */
  async accept(peer: string): Promise<void> {
    const change = this.keyProblems.get(peer);
    if (!(change instanceof KeyChanged)) return;
    this.pins.set(peer, change.now);
    await this.deps.savePins(this.me.handle, this.pins);
    this.keyProblems.delete(peer);
    this.users.delete(peer);
    await this.user(peer); // the server must still answer what was accepted
    await this.serial(async () => {
      const c = this.conversations.get(peer);
      const held = c?.withheld ?? [];
      if (!c || held.length === 0) return;
      c.withheld = [];
      for (const env of held) await this.open(env);
      await this.persist();
    });
  }

  /**
   * The safety numbers of me and peer: with the keys pinned, and with the
   * new keys when they changed. Both people see the same digits when each
   * has the other's keys.
   */
  async safetyNumbers(peer: string): Promise<{ pinned?: string; proposed?: string }> {
    const problem = this.keyProblems.get(peer);
    if (!this.pins.has(peer) && !problem) await this.user(peer);
    const me = `${this.me.handle}@${this.me.server}`;
    const with_ = (p: Pin) => safetyWith(this.me.signing.alg, this.me.signing.publicKey, me, p, `${peer}@${this.me.server}`);
    const pin = this.pins.get(peer);
    return {
      pinned: pin && (await with_(pin)),
      proposed: problem instanceof KeyChanged ? await with_(problem.now) : undefined,
    };
  }

  conversation(peer: string): Conversation {
    let c = this.conversations.get(peer);
    if (!c) {
      c = reactive({ peer, messages: [], unread: 0 });
      this.conversations.set(peer, c);
    }
    return c;
  }

  markRead(peer: string): void {
    const c = this.conversations.get(peer);
    if (c && c.unread) c.unread = 0;
    void this.serial(() => this.persist());
  }

  /** Decrypts, stores and acknowledges envelopes; safe to call concurrently and with repeats. */
  ingest(envs: Envelope[]): Promise<void> {
    return this.serial(async () => {
      const start = this.cursor;
      for (const env of [...envs].sort((a, b) => a.seq - b.seq)) {
        if (env.seq <= this.cursor) continue;
        if (!(await this.open(env))) break;
        this.cursor = env.seq;
      }
      if (this.cursor === start) return;
      await this.persist();
      await this.acknowledge();
    });
  }

  /**
   * Verifies, opens and files one envelope; false when it should be tried
   * again later (the server could not say who sent it). An envelope from a
   * peer whose keys are in question is held in its conversation, to be
   * opened once the person accepts the new keys.
   */
  private async open(env: Envelope): Promise<boolean> {
    let from: string | undefined;
    try {
      from = claimedSender(env);
      const pt = await openEnvelope(env, this.keys, await this.user(from));
      const c = this.conversation(from);
      const id = env.message.payload.id;
      if (!c.messages.some((m) => !m.mine && m.id === id)) {
        c.messages.push({ id, mine: false, body: pt.body, ts: pt.ts, seq: env.seq, state: 'received' });
        if (this.activePeer !== from || !pageVisible()) c.unread++;
      }
    } catch (e) {
      if (isKeyProblem(e) && from !== undefined) {
        this.withhold(from, env);
        return true;
      }
      // Not being able to ask the server who sent it is worth a retry;
      // a message that does not verify or open never will be.
      if (e instanceof api.ApiError && e.code !== 'unknown_handle') return false;
      console.warn('dropping an envelope that cannot be read:', e instanceof InvalidMessage || e instanceof api.ApiError ? e.message : e);
    }
    return true;
  }

  private withhold(peer: string, env: Envelope): void {
    const c = this.conversation(peer);
    const held = (c.withheld ??= []);
    if (held.some((h) => h.seq === env.seq)) return;
    held.push(env);
    // Bounded in bytes: a server that swaps keys cannot fill the browser's
    // storage through one conversation. The oldest goes first.
    let bytes = held.reduce((n, h) => n + JSON.stringify(h).length, 0);
    while (bytes > MAX_WITHHELD_BYTES && held.length > 1) bytes -= JSON.stringify(held.shift()).length;
  }

  private async acknowledge(): Promise<void> {
    const upto = this.cursor;
    if (upto <= this.acked) return;
    try {
      await this.deps.ack(this.me, upto);
      this.acked = upto;
    } catch {
      // Acknowledged with the next batch; the server keeps what is unacknowledged.
    }
  }

  /** Fetches what waits in the inbox: the backstop for a missed live delivery. */
  poll(): Promise<void> {
    return (async () => {
      for (;;) {
        const page = await this.deps.inbox(this.me, this.cursor);
        if (page.messages.length === 0) return;
        const before = this.cursor;
        await this.ingest(page.messages);
        if (this.cursor === before) return; // a lookup failed: try again later
      }
    })();
  }

  async send(peer: string, body: string): Promise<void> {
    const c = this.conversation(peer);
    const ts = this.deps.now();
    const msg: ChatMessage = { id: newMessageId(), mine: true, body, ts, state: 'pending' };
    c.messages.push(msg);
    await this.deliver(peer, c.messages.length - 1);
  }

  async retry(peer: string, id: string): Promise<void> {
    const c = this.conversations.get(peer);
    const i = c?.messages.findIndex((m) => m.mine && m.id === id) ?? -1;
    if (!c || i < 0 || c.messages[i]!.state !== 'failed') return;
    c.messages[i]!.state = 'pending';
    await this.deliver(peer, i);
  }

  private async deliver(peer: string, index: number): Promise<void> {
    const c = this.conversation(peer);
    const m = c.messages[index]!;
    try {
      // A retry posts the same document: the server answers the original
      // receipt if the first try got through. A document too old to be
      // accepted is signed again under a new id.
      if (!m.doc || this.deps.now() - m.doc.payload.ts > 240) {
        if (m.doc) m.id = newMessageId();
        m.doc = await newMessage(this.keys, await this.user(peer), m.id, m.body, this.deps.now());
      }
      await this.deps.postMessage(m.doc);
      m.state = 'sent';
      delete m.doc;
    } catch (e) {
      m.state = 'failed';
      throw e;
    } finally {
      await this.serial(() => this.persist());
    }
  }
}
