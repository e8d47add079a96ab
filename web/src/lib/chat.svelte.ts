// The chat state of one identity: the conversation list, the pages of
// messages on screen and the inbox cursor. The history itself is in
// IndexedDB (./history), one record per message, written as each message
// comes and goes; memory holds only what is shown. Every envelope, from the
// stream or the poll, goes through ingest(), which decrypts it, stores it
// and then acknowledges it, so the server deletes only what is kept here.

import { del, get } from 'idb-keyval';
import { SvelteMap } from 'svelte/reactivity';
import * as api from './api';
import type { Identity } from './keys';
import { claimedSender, InvalidMessage, newMessage, newMessageId, openEnvelope, type Envelope, type MessageKeys, type MessagePayload, type PublicUser } from './protocol';
import type { Signed } from './signing';
import type { LinkStatus } from './stream';
import {
  appendMessage,
  conversations as storedConversations,
  getConversation,
  getMeta,
  lastPage,
  migrateLegacy,
  newConversation,
  openHistory,
  peerConv,
  setMeta,
  updateConversation,
  updateMessage,
  type ConversationRecord,
  type LegacyHistory,
  type LegacyStore,
  type MessageRecord,
  type Stored,
} from './history';
import { checkPeer, KeyChanged, KeyDocumentMismatch, loadPins, safetyWith, savePins, type KeyPayload, type Pin, type TrustDeps } from './trust';

export type { MessageState } from './history';
export { historyKey, peerConv, peerOf } from './history';

export type ChatMessage = MessageRecord;

/** A conversation as the view follows it: its stored record and the pages of its messages loaded. */
export interface Conversation extends ConversationRecord {
  /** The messages loaded, oldest first: the latest page and the pages before it that were asked for. */
  messages: ChatMessage[];
  /** Whether messages ends at the latest message, so that new ones are appended (false until opened). */
  loaded: boolean;
  /** Whether older messages than the first of messages are stored. */
  more: boolean;
}

/** Messages read from the history at a time: what a screen shows and some. */
export const PAGE_SIZE = 50;

/** A conversation the view follows as it changes. */
function reactive(r: ConversationRecord): Conversation {
  const live = $state<Conversation>({ ...r, messages: [], loaded: false, more: true });
  return live;
}

/** What Chat talks to; tests give fakes (and fake-indexeddb). */
export interface ChatDeps {
  lookup: (handle: string) => Promise<PublicUser>;
  postMessage: (doc: Signed<MessagePayload>) => Promise<api.Receipt>;
  inbox: (who: api.Signer, since: number) => Promise<api.InboxPage>;
  ack: (who: api.Signer, upto: number) => Promise<unknown>;
  /** The handle's history database (./history openHistory). */
  openHistory: (handle: string) => Promise<IDBDatabase>;
  /** Where the history was kept before, migrated on first use. */
  legacy: LegacyStore;
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
  openHistory: (handle) => openHistory(handle),
  legacy: { get: (k) => get<LegacyHistory>(k), del: (k) => del(k) },
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
  /** Conversations by conv (peerConv(handle), groupConv(id)): a Map, since a handle may be any name, "constructor" too. */
  readonly conversations = new SvelteMap<string, Conversation>();
  status = $state<LinkStatus>('connecting');
  /** The open conversation (a conv): its messages are read as they arrive. */
  activeConv = $state<string | null>(null);
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
  private history?: Promise<IDBDatabase>;
  /** The rest of a legacy document's import, running in the background, if one started. */
  legacyImport?: Promise<void>;
  /** The mids of own messages this session is posting: any other stored as pending was cut short (a reload) and failed. */
  private sending = new Set<string>();

  constructor(
    readonly me: Identity,
    private readonly deps: ChatDeps = browserDeps,
  ) {}

  get keys(): MessageKeys {
    return { handle: this.me.handle, server: this.me.server, signing: this.me.signing, enc: this.me.enc };
  }

  /** Conversations, the most recent first. */
  get list(): Conversation[] {
    const last = (c: Conversation) => c.last?.ts ?? 0;
    return [...this.conversations.values()].sort((a, b) => last(b) - last(a) || (b.last?.order ?? 0) - (a.last?.order ?? 0) || a.conv.localeCompare(b.conv));
  }

  /** The history database, opened (and the legacy document migrated) on first use. */
  db(): Promise<IDBDatabase> {
    if (!this.history) {
      const opening = (async () => {
        const db = await this.deps.openHistory(this.me.handle);
        // The conversations and their latest messages now, the rest in the background.
        const imported = await migrateLegacy(db, this.me.handle, this.deps.legacy);
        this.legacyImport = imported?.rest.catch((e) => console.warn('moving the old history into the new one (tried again next time):', e));
        return db;
      })();
      opening.catch(() => (this.history = undefined)); // tried again on next use
      this.history = opening;
    }
    return this.history;
  }

  /**
   * Reads the conversation list and the cursor, and the latest page of
   * conv when given (the conversation the app opens at, read alongside the
   * list rather than after it); other messages are read as conversations open.
   */
  async load(conv?: string): Promise<void> {
    const [pins, db] = await Promise.all([this.deps.loadPins(this.me.handle), this.db()]);
    this.pins = pins;
    const [records, cursor, page] = await Promise.all([
      storedConversations(db),
      getMeta<number>(db, 'cursor'),
      conv === undefined ? undefined : lastPage(db, conv, PAGE_SIZE),
    ]);
    this.cursor = this.acked = cursor ?? 0;
    this.conversations.clear();
    for (const r of records) this.conversations.set(r.conv, reactive(r));
    const c = conv === undefined ? undefined : this.conversations.get(conv);
    if (c && page) {
      c.messages = await this.failCutShort(page.messages);
      c.more = page.more;
      c.loaded = true;
    }
  }

  /** Runs f after everything queued before it: one ingest or history write at a time. */
  private serial<T>(f: () => Promise<T>): Promise<T> {
    const p = this.chain.then(f, f);
    this.chain = p.catch(() => {});
    return p;
  }

  /** Brings the in-memory conversation up to its stored record. */
  private mirrorConversation(r: ConversationRecord): Conversation {
    const c = this.conversations.get(r.conv);
    if (!c) {
      const fresh = reactive(r);
      this.conversations.set(r.conv, fresh);
      return fresh;
    }
    c.group = r.group;
    c.title = r.title;
    c.peer = r.peer;
    c.last = r.last;
    c.unread = r.unread;
    c.withheld = r.withheld;
    return c;
  }

  /** Brings memory up to a write: the conversation, and the message when its page is loaded. */
  private mirror(s: Stored): Conversation {
    const c = this.mirrorConversation(s.conversation);
    if (c.loaded) {
      const i = c.messages.findIndex((m) => m.order === s.message.order);
      if (i >= 0) c.messages[i] = s.message;
      else if (s.message.order > (c.messages.at(-1)?.order ?? 0)) c.messages.push(s.message);
    }
    return c;
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
      const db = await this.db();
      const conv = peerConv(peer);
      const held = (await getConversation(db, conv))?.withheld ?? [];
      if (held.length === 0) return;
      this.mirrorConversation(await updateConversation(db, conv, (c) => void (c.withheld = [])));
      for (const env of held) await this.open(env);
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

  /** The conversation with peer, kept (empty) from now on, as a new chat is. */
  conversation(peer: string): Conversation {
    const conv = peerConv(peer);
    let c = this.conversations.get(conv);
    if (!c) {
      c = reactive(newConversation(conv));
      this.conversations.set(conv, c);
      // Writes nothing over a stored record: answers it, so memory catches up.
      void this.serial(async () => this.mirrorConversation(await updateConversation(await this.db(), conv, () => {}))).catch((e) =>
        console.warn('storing a new conversation:', e),
      );
    }
    return c;
  }

  /** Reads the latest page of conv's messages, once: from then on arrivals are appended. */
  openConversation(conv: string): Promise<Conversation> {
    return this.serial(async () => {
      const c = this.conversations.get(conv) ?? this.mirrorConversation(newConversation(conv));
      if (c.loaded) return c;
      const page = await lastPage(await this.db(), conv, PAGE_SIZE);
      c.messages = await this.failCutShort(page.messages);
      c.more = page.more;
      c.loaded = true;
      return c;
    });
  }

  /** Reads the page before the first loaded message of conv. */
  loadEarlier(conv: string): Promise<void> {
    return this.serial(async () => {
      const c = this.conversations.get(conv);
      if (!c?.loaded || !c.more) return;
      const page = await lastPage(await this.db(), conv, PAGE_SIZE, c.messages[0]?.order);
      c.messages = [...(await this.failCutShort(page.messages)), ...c.messages];
      c.more = page.more;
    });
  }

  /** Own messages stored as pending that no one is posting (the page closed mid-send) are failed: Retry shows. */
  private async failCutShort(messages: ChatMessage[]): Promise<ChatMessage[]> {
    const db = await this.db();
    for (const [i, m] of messages.entries()) {
      if (!m.mine || m.state !== 'pending' || this.sending.has(m.mid)) continue;
      const s = await updateMessage(db, m.conv, m.from, m.mid, (r) => (r.state === 'pending' ? void (r.state = 'failed') : false));
      if (s) messages[i] = s.message;
    }
    return messages;
  }

  markRead(conv: string): void {
    const c = this.conversations.get(conv);
    if (!c || !c.unread) return;
    c.unread = 0;
    void this.serial(async () => {
      const r = await updateConversation(await this.db(), conv, (r) => (r.unread ? void (r.unread = 0) : false));
      this.mirrorConversation(r);
    }).catch((e) => console.warn('marking a conversation read:', e));
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
      await setMeta(await this.db(), 'cursor', this.cursor);
      await this.acknowledge();
    });
  }

  /**
   * Verifies, opens and stores one envelope; false when it should be tried
   * again later (the server could not say who sent it). An envelope from a
   * peer whose keys are in question is held in its conversation, to be
   * opened once the person accepts the new keys.
   */
  private async open(env: Envelope): Promise<boolean> {
    let from: string | undefined;
    try {
      from = claimedSender(env);
      const pt = await openEnvelope(env, this.keys, await this.user(from));
      const conv = peerConv(from);
      const id = env.message.payload.id;
      let stored: Stored | undefined;
      try {
        stored = await appendMessage(
          await this.db(),
          { conv, id, mid: id, from, mine: false, body: pt.body, ts: pt.ts, seq: env.seq, state: 'received', kind: 'text' },
          { unread: this.activeConv !== conv || !pageVisible() },
        );
      } catch (e) {
        // Not kept, so not acknowledged: the inbox holds it until a write works.
        console.warn('storing a message (tried again later):', e);
        return false;
      }
      if (stored) this.mirror(stored);
    } catch (e) {
      if (isKeyProblem(e) && from !== undefined) {
        return this.withhold(from, env).then(
          () => true,
          (err) => (console.warn('holding a message (tried again later):', err), false),
        );
      }
      // Not being able to ask the server who sent it is worth a retry; a
      // message that does not verify or open never will be.
      if (e instanceof api.ApiError && e.code !== 'unknown_handle') return false;
      console.warn('dropping an envelope that cannot be read:', e instanceof InvalidMessage || e instanceof api.ApiError ? e.message : e);
    }
    return true;
  }

  private async withhold(peer: string, env: Envelope): Promise<void> {
    const r = await updateConversation(await this.db(), peerConv(peer), (c) => {
      const held = (c.withheld ??= []);
      if (held.some((h) => h.seq === env.seq)) return false;
      held.push(env);
      // Bounded in bytes: a server that swaps keys cannot fill the browser's
      // storage through one conversation. The oldest goes first.
      let bytes = held.reduce((n, h) => n + JSON.stringify(h).length, 0);
      while (bytes > MAX_WITHHELD_BYTES && held.length > 1) bytes -= JSON.stringify(held.shift()).length;
    });
    this.mirrorConversation(r);
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
    const conv = peerConv(peer);
    this.conversation(peer);
    await this.openConversation(conv);
    const id = newMessageId();
    this.sending.add(id);
    try {
      const stored = await this.serial(async () => {
        const s = await appendMessage(await this.db(), { conv, id, mid: id, from: this.me.handle, mine: true, body, ts: this.deps.now(), state: 'pending', kind: 'text' });
        if (s) this.mirror(s);
        return s;
      });
      if (stored) await this.deliver(peer, stored.message);
    } finally {
      this.sending.delete(id);
    }
  }

  /** Sends a failed message of mine (by mid) again. */
  async retry(peer: string, mid: string): Promise<void> {
    const conv = peerConv(peer);
    this.sending.add(mid);
    try {
      const stored = await this.serial(async () => {
        const s = await updateMessage(await this.db(), conv, this.me.handle, mid, (m) => (m.mine && m.state === 'failed' ? void (m.state = 'pending') : false));
        if (s) this.mirror(s);
        return s;
      });
      if (stored) await this.deliver(peer, stored.message);
    } finally {
      this.sending.delete(mid);
    }
  }

  private async deliver(peer: string, m: ChatMessage): Promise<void> {
    let doc = m.doc;
    let id = m.id;
    let failure: { error: unknown } | undefined;
    try {
      // A retry posts the same document: the server answers the original
      // receipt if the first try got through. A document too old to be
      // accepted is signed again under a new id (a message to one person
      // names no mid, so its mid is its id and changes too).
      if (!doc || this.deps.now() - doc.payload.ts > 240) {
        const fresh = doc ? newMessageId() : id;
        doc = await newMessage(this.keys, await this.user(peer), fresh, m.body, this.deps.now());
        id = fresh;
      }
      await this.deps.postMessage(doc);
    } catch (error) {
      failure = { error };
    }
    const kept = doc;
    await this.serial(async () => {
      const s = await updateMessage(await this.db(), m.conv, m.from, m.mid, (r) => {
        r.id = r.mid = id;
        r.state = failure ? 'failed' : 'sent';
        if (failure && kept) r.doc = kept;
        else delete r.doc;
      });
      if (s) this.mirror(s);
    });
    if (failure) throw failure.error;
  }
}
