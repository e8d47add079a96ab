// The chat state of one identity: the conversation list, the pages of
// messages on screen and the inbox cursor. The history itself is in
// IndexedDB (./history), one record per message, written as each message
// comes and goes; memory holds only what is shown. Every envelope, from the
// stream or the poll, goes through ingest(), which decrypts it, stores it
// and then acknowledges it, so the server deletes only what is kept here.

import { del, get } from 'idb-keyval';
import { SvelteMap } from 'svelte/reactivity';
import * as api from './api';
import { primaryKey, saveIdentity, type Identity, type PublicKey } from './keys';
import { claimedSender, fromFor, InvalidMessage, newMessageId, newMessageOf, openEnvelopeRaw, type Envelope, type MessageKeys, type MessagePayload, type PublicUser } from './protocol';
import { baseUrl, domainOf, fullAddress, isRemote, localName, parseName } from './address';
import { remoteTrust, resolveRemote, RemoteRefused, type FetchJSON } from './remote';
import {
  applyReaction,
  applyReceipt,
  conversationOf,
  deleteAllowed,
  deleteContent,
  envelopeIdFor,
  groupContent,
  nameDigest,
  InvalidPlaintext,
  parsePlaintext,
  plaintextFor,
  qualifyPlaintext,
  reactionContent,
  receiptContents,
  textContent,
  type Attachment,
  type Content,
  type ConvPlaintext,
  type ReceiptKind,
  type Reply,
} from './conversation';
import { controlRecipients, groupHash, Groups, SnapshotDropped, type GroupHistory, type GroupState, newGroup } from './groups';
import { decryptAttachment } from './attachments';
import { MAX_TYPING_DOCUMENTS, MAX_TYPING_RECIPIENTS, newTypingDocument, openTyping, sealTyping, TYPING_SHOWN_MS, TypingBoard, TypingSender, type TypingPayload } from './typing';
import { primaryId, signDocument, type Signed } from './signing';
import { decodeB64 } from './bytes';
import type { LinkStatus } from './stream';
import {
  appendMessage,
  conversations as storedConversations,
  deleteFile,
  getConversation,
  getFile,
  getMeta,
  groupConv,
  groupStates,
  historyKey,
  lastPage,
  messageByMid,
  migrateLegacy,
  newConversation,
  openHistory,
  peerConv,
  peerOf,
  putFile,
  putGroupState,
  setMeta,
  updateConversation,
  updateMessage,
  type ConversationRecord,
  type LegacyHistory,
  type LegacyStore,
  type MessageRecord,
  type Relay,
  type Stored,
} from './history';
import { MAX_PRIVACY_KNOWN, normalPrivacy, withKnown } from './privacy';
import { checkPeer, KeyChanged, KeyDocumentMismatch, loadPins, safetyWith, savePins, type KeyPayload, type Pin, type TrustDeps } from './trust';

export type { MessageState } from './history';
export { groupConv, historyKey, peerConv, peerOf } from './history';

/**
 * The conversation a route names (#/chat/<it>): a conversation key ("p:bob",
 * "g:<id>"), or, as links made before groups did and notifications do, a
 * person's name, which may hold a ':' (a loopback test domain's port).
 */
export const convOfRoute = (p: string) => (/^[pg]:/.test(p) ? p : peerConv(p));

/** The group id of a conversation key, or undefined for a two-person one. */
export const groupIdOf = (conv: string) => (conv.startsWith('g:') ? conv.slice(2) : undefined);

/** One line for a group change: who did what, from the states before and after. */
export function describeChange(before: GroupState | undefined, after: GroupState): string {
  const added = after.members.filter((m) => !before?.members.includes(m));
  const gone = (before?.members ?? []).filter((m) => !after.members.includes(m));
  const promoted = after.admins.filter((m) => !before?.admins.includes(m));
  switch (after.op) {
    case 'create':
      return `${after.by} created "${after.name}"`;
    case 'add':
      // Added from a state never received: only that this client is in it is known.
      return before ? `${after.by} added ${added.join(', ')}` : `${after.by} added you to "${after.name}"`;
    case 'remove':
      return `${after.by} removed ${gone.join(', ')}`;
    case 'leave':
      return `${after.by} left`;
    case 'rename':
      return `${after.by} renamed the group to "${after.name}"`;
    case 'promote':
      return `${after.by} made ${promoted.join(', ')} admin`;
  }
  return `${after.by} changed the group`;
}

/** A receipt waiting to be sent: to one sender, in one conversation. */
interface PendingReceipt {
  to: string;
  group?: string;
  kind: ReceiptKind;
  mids: string[];
}

/** A message's attachments, uploaded: what it names, and the blob ids its payload lists. */
export interface Uploaded {
  attachments: Attachment[];
  blobs: string[];
}

export interface SendExtra {
  reply?: Reply;
  attachments?: Attachment[];
  /** Blob ids the message names (attachments and thumbnails). */
  blobs?: string[];
}

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
  postBatch: (who: api.Signer, docs: Signed<MessagePayload>[]) => Promise<{ receipts: api.Receipt[] }>;
  /** Typing notes: to this server's people, and (remote) a signed document per other server. */
  postTyping: (who: api.Signer, to: { to: string; ct: string }[], remote: Signed<TypingPayload>[]) => Promise<unknown>;
  /** A blob's bytes, from this server or (origin) a remote sender's. */
  getBlob: (id: string, origin?: string) => Promise<Uint8Array<ArrayBuffer>>;
  /** GETs another server's WebFinger or record (they answer CORS). */
  getJSON: FetchJSON;
  outbox: (who: api.Signer) => Promise<{ entries: api.OutboxEntry[] }>;
  getPrivacy: (who: api.Signer) => Promise<api.Privacy>;
  putPrivacy: (who: api.Signer, p: api.Privacy) => Promise<api.Privacy>;
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
  postBatch: api.postBatch,
  postTyping: api.postTyping,
  getBlob: api.getBlob,
  getJSON: api.getJSON,
  outbox: api.outbox,
  getPrivacy: api.getPrivacy,
  putPrivacy: api.putPrivacy,
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

/**
 * Why a peer's keys are in question: changed (the person may accept them),
 * not what the peer signed, or (a person of another server) not what its
 * server answers of that address.
 */
export type KeyProblem = KeyChanged | KeyDocumentMismatch | RemoteRefused;

const isKeyProblem = (e: unknown): e is KeyProblem => e instanceof KeyChanged || e instanceof KeyDocumentMismatch || e instanceof RemoteRefused;

/** How often the outbox is asked about own messages queued for other servers: at first, and at most. */
export const OUTBOX_POLL_MS = 2_000;
export const OUTBOX_POLL_MAX_MS = 60_000;
/** When a queued document missing from the outbox is taken as forgotten: its 48 hours of retries and the 24 its outcome shows. */
const RELAY_FORGOTTEN_S = 73 * 3600;
/**
 * When a document a sync copy made expected, still missing from the outbox,
 * is taken as never queued (the other device did not send to that person):
 * the outbox lists it before the sync copy can be read, give or take the
 * devices' clocks.
 */
export const RELAY_UNCONFIRMED_S = 300;
/** The outbox lists a handle's latest entries, at most this many: one missing from a full list may be further down. */
const OUTBOX_LIST_MAX = 1000;

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
  /** Whether read receipts are sent and shown (a setting of this device). */
  readReceipts = $state(true);
  /** Who types where, by conv (kept current for 6 s after each note). */
  readonly typing = new SvelteMap<string, string[]>();
  /** The upload progress (0 to 1) of own messages whose attachments upload, by mid. */
  readonly progress = new SvelteMap<string, number>();
  /** The groups' versions this client took (docs/protocol.md, "Groups"). */
  groups: Groups;

  private pendingReceipts = new Map<string, PendingReceipt>();
  private receiptChain: Promise<void> = Promise.resolve();
  private typingBoard = new TypingBoard();
  private typingSenders = new Map<string, TypingSender>();
  private ownDevices: { at: number; many: Promise<boolean> } | null = null;
  private acked = 0;
  private users = new Map<string, Promise<PublicUser>>();
  private pins = new Map<string, Pin>();
  private chain: Promise<unknown> = Promise.resolve();
  private history?: Promise<IDBDatabase>;
  /** The rest of a legacy document's import, running in the background, if one started. */
  legacyImport?: Promise<void>;
  /** The mids of own messages this session is posting: any other stored as pending was cut short (a reload) and failed. */
  private sending = new Set<string>();
  /** The uploads of own messages whose attachments did not upload, by mid: Retry runs them again. */
  private uploads = new Map<string, () => Promise<Uploaded>>();
  /** Own messages with documents queued for other servers, followed in the outbox until each is delivered or failed. */
  private relaying: { conv: string; mid: string }[] = [];

  constructor(
    readonly me: Identity,
    private readonly deps: ChatDeps = browserDeps,
  ) {
    this.groups = new Groups(me.handle, [], me.server);
  }

  /** This identity's server's domain: its people are named bare, everyone else by address. */
  get domain(): string {
    return this.me.server;
  }

  /** What a person typed into a box that takes people, as a name (bare, or an address elsewhere); throws saying what is wrong. */
  nameOf(input: string): string {
    const r = parseName(input, this.domain);
    if ('problem' in r) throw new Error(r.problem);
    return r.name;
  }

  get keys(): MessageKeys {
    return { handle: this.me.handle, server: this.me.server, signing: this.me.signing, enc: this.me.enc };
  }

  /** Conversations, the most recent first. */
  get list(): Conversation[] {
    const last = (c: Conversation) => c.last?.ts ?? 0;
    return [...this.conversations.values()].filter((c) => !c.left).sort((a, b) => last(b) - last(a) || (b.last?.order ?? 0) - (a.last?.order ?? 0) || a.conv.localeCompare(b.conv));
  }

  /** The history database, opened (and the legacy document migrated) on first use. */
  db(): Promise<IDBDatabase> {
    if (!this.history) {
      const opening = (async () => {
        // The legacy document is looked for while the database opens, not after.
        const legacy = this.deps.legacy;
        const old = legacy.get(historyKey(this.me.handle));
        old.catch(() => {}); // answered through migrateLegacy, when the database opened
        const db = await this.deps.openHistory(this.me.handle);
        // The conversations and their latest messages now, the rest in the background.
        const imported = await migrateLegacy(db, this.me.handle, { get: () => old, del: (k) => legacy.del(k) });
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
    const [records, cursor, page, readReceipts, relaying] = await Promise.all([
      storedConversations(db),
      getMeta<number>(db, 'cursor'),
      conv === undefined ? undefined : lastPage(db, conv, PAGE_SIZE),
      getMeta<boolean>(db, 'setting:read-receipts'),
      getMeta<{ conv: string; mid: string }[]>(db, 'relaying'),
    ]);
    this.relaying = relaying ?? [];
    this.cursor = this.acked = cursor ?? 0;
    this.conversations.clear();
    for (const r of records) this.conversations.set(r.conv, reactive(r));
    const c = conv === undefined ? undefined : this.conversations.get(conv);
    if (c && page) {
      c.messages = await this.failCutShort(page.messages);
      c.more = page.more;
      c.loaded = true;
    }
    // Every group's states at once, not one group after another.
    const groupIds = records.map((r) => groupIdOf(r.conv)).filter((id): id is string => !!id);
    const histories = await Promise.all(
      groupIds.map(async (id): Promise<[string, GroupHistory]> => {
        const versions = (await groupStates<GroupState>(db, id)).sort((a, b) => a.version - b.version).slice(-16);
        return [id, { versions: await Promise.all(versions.map(async (v) => ({ state: v.state, hash: v.hash ?? (await groupHash(v.state)) }))) }];
      }),
    );
    this.groups = new Groups(this.me.handle, histories, this.me.server);
    this.readReceipts = readReceipts !== false;
  }

  async setReadReceipts(on: boolean): Promise<void> {
    this.readReceipts = on;
    await setMeta(await this.db(), 'setting:read-receipts', on);
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
    c.left = r.left;
    c.request = r.request;
    c.inviter = r.inviter;
    c.blocked = r.blocked;
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

  /**
   * The peer's record, its keys checked against its key documents and its
   * pin (once a session). handle is a name: a bare handle of this server, or
   * the address of a person elsewhere, learnt from that person's server.
   */
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
    try {
      let answered: PublicUser;
      let trust = this.deps.trust;
      if (isRemote(handle)) {
        const p = await resolveRemote(handle, this.deps.getJSON);
        answered = p.record;
        trust = remoteTrust(p, this.deps.trust.keyLog);
      } else {
        answered = await this.deps.lookup(handle);
      }
      const { record, changed } = await checkPeer(answered, this.pins, trust, handle);
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
    const mine = await this.primaryKey(); // a linked device's own key is not what the peer pins
    const with_ = (p: Pin) => safetyWith(mine.alg, mine.publicKey, me, p, fullAddress(peer, this.me.server));
    const pin = this.pins.get(peer);
    return {
      pinned: pin && (await with_(pin)),
      proposed: problem instanceof KeyChanged ? await with_(problem.now) : undefined,
    };
  }

  #primary?: PublicKey;

  /**
   * My identity's primary public key. A device linked before identities
   * kept it learns it once from its own record, and keeps it: the primary
   * id is that key's hash, so the server cannot answer another.
   */
  private async primaryKey(): Promise<PublicKey> {
    if (this.#primary) return this.#primary;
    const me = this.me;
    if (me.primary || (await primaryId(me.signing.alg, me.signing.publicKey)) === me.primaryId) return (this.#primary = primaryKey(me));
    const rec = await this.deps.lookup(me.handle);
    const key = decodeB64(rec.key);
    if (rec.primary_id !== me.primaryId || (await primaryId(rec.alg, key)) !== me.primaryId) throw new Error('the server answers a primary key that is not this identity’s');
    this.#primary = { alg: rec.alg, publicKey: key };
    await saveIdentity({ ...me, primary: this.#primary });
    return this.#primary;
  }

  /** The conversation with peer, kept (empty) from now on, as a new chat is. */
  conversation(peer: string): Conversation {
    const conv = peerConv(peer);
    let c = this.conversations.get(conv);
    if (!c) {
      c = reactive(newConversation(conv));
      this.conversations.set(conv, c);
      if (isRemote(peer)) void this.knowPeer(peer).catch((e: unknown) => console.warn(`telling the server ${peer} is known:`, (e as Error).message));
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

  /** Marks conv read here, and tells its senders which messages were shown (when read receipts are on). */
  markRead(conv: string): void {
    const c = this.conversations.get(conv);
    if (!c) return;
    const unread = c.unread;
    if (unread) c.unread = 0;
    // A request (or a blocked person) learns nothing of what was read until accepted.
    const shownNow = this.readReceipts && !c.request && !c.blocked ? (c.messages ?? []).filter((m) => !m.mine && m.kind === 'text' && !m.deleted && m.state === 'received' && m.receiptSent !== 'read') : [];
    if (!unread && shownNow.length === 0) return;
    void this.serial(async () => {
      const db = await this.db();
      if (unread) this.mirrorConversation(await updateConversation(db, conv, (r) => (r.unread ? void (r.unread = 0) : false)));
      for (const m of shownNow) {
        const s = await updateMessage(db, conv, m.from, m.mid, (r) => (r.receiptSent === 'read' ? false : void (r.receiptSent = 'read')));
        if (!s) continue;
        this.mirror(s);
        this.queueReceipt(m.from, groupIdOf(conv), 'read', m.mid);
      }
    })
      .then(() => this.flushReceipts())
      .catch((e) => console.warn('marking a conversation read:', e));
  }

  /** Decrypts, stores and acknowledges envelopes; safe to call concurrently and with repeats. */
  async ingest(envs: Envelope[]): Promise<void> {
    await this.serial(async () => {
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
    void this.flushReceipts();
  }

  /**
   * Verifies, opens and stores one envelope; false when it should be tried
   * again later (the server could not say who sent it, an attachment could
   * not be fetched, or the history could not be written). An envelope from
   * a peer whose keys are in question is held in its conversation, to be
   * opened once the person accepts the new keys.
   */
  private async open(env: Envelope): Promise<boolean> {
    let from: string | undefined;
    try {
      // A sender of another server signs as its address; one of this server bare.
      from = localName(claimedSender(env), this.domain);
      let sender = await this.user(from);
      const sig = env.message.signature;
      if (sig?.key !== sender.key && !sender.signing_keys?.some((k) => k.key === sig?.key)) {
        // Signed by a key the record read this session does not list: a
        // device linked since. Its record is read (and checked) again once.
        this.users.delete(from);
        sender = await this.user(from);
      }
      const raw = await openEnvelopeRaw(env, this.keys, sender);
      const p = env.message.payload;
      // Names inside are the writer's: qualified with its domain.
      const writer = domainOf(from, this.domain);
      await this.apply(qualifyPlaintext(parsePlaintext(raw, { from: p.from, to: p.to, id: p.id }), writer, this.domain), env, writer);
    } catch (e) {
      // A sender elsewhere whose server cannot be asked now (down, or not
      // answering this browser) must not hold up the inbox: its message
      // waits in its conversation and is tried again at the next poll.
      const unreachable = from !== undefined && isRemote(from) && e instanceof api.ApiError && (e.status === 0 || e.status === 429 || e.status >= 500);
      if ((isKeyProblem(e) || unreachable) && from !== undefined) {
        return this.withhold(from, env).then(
          () => true,
          (err) => (console.warn('holding a message (tried again later):', err), false),
        );
      }
      // Not being able to ask the server who sent it (or to store it) is
      // worth a retry; a message that does not verify or open never will be.
      if ((e instanceof api.ApiError && e.code !== 'unknown_handle' && e.code !== 'unknown_blob') || e instanceof DOMException) return false;
      console.warn('dropping an envelope that cannot be read:', e instanceof InvalidMessage || e instanceof InvalidPlaintext || e instanceof api.ApiError ? e.message : e);
    }
    return true;
  }

  /** Stores one plaintext, written at writer's domain, in its conversation (docs/protocol.md, "Conversations"). */
  private async apply(pt: ConvPlaintext, env: Envelope, writer = this.domain): Promise<void> {
    const me = this.me.handle;
    const mine = pt.from === me;
    const db = await this.db();
    if (pt.kind === 'group') {
      const gid = pt.group!.id;
      const conv = groupConv(gid);
      const before = this.groups.state(gid);
      const rec = await getConversation(db, conv);
      // An invitation from a person blocked here is not taken, whatever the server let through before.
      if (!rec && !mine && this.conversations.get(peerConv(pt.from))?.blocked) return;
      try {
        if (!(await this.groups.take(pt.from, pt.state, writer))) return;
      } catch (e) {
        if (e instanceof SnapshotDropped) return void console.warn(`group snapshot from ${pt.from} dropped: ${e.message}`);
        throw e;
      }
      const held = this.groups.held(gid)!;
      const after = held.state;
      await putGroupState(db, { group: gid, version: after.version, state: after, hash: held.hash });
      const left = !after.members.includes(me);
      // A person of another server this identity does not chat with who
      // adds it to a group is a request, as a stranger's first message is:
      // nothing tells the members what arrived or was read until it is
      // accepted. A blocked invitation keeps its states (to follow the
      // group should it be unblocked) and shows nothing.
      const request = !left && (rec ? !!rec.request : !mine && isRemote(pt.from) && !this.knows(pt.from));
      if (!rec?.blocked) {
        const s = await appendMessage(db, { conv, id: env.message.payload.id, mid: pt.mid, from: pt.from, mine, body: describeChange(before, after), ts: pt.ts, seq: env.seq, state: mine ? 'sent' : 'received', kind: 'group' });
        if (s) this.mirror(s);
      }
      this.mirrorConversation(
        await updateConversation(db, conv, (c) => {
          c.title = after.name;
          c.group = true;
          if (left) c.left = true;
          else delete c.left;
          if (request && !c.request && !c.blocked) {
            c.request = true;
            c.inviter = pt.from;
          }
        }),
      );
      // The people elsewhere who join a group this identity is in (by
      // anyone's change, its own included) are known to its server from
      // then on, should it refuse strangers; all of them when it joins.
      if (!left && !request && !rec?.blocked) {
        const wasIn = !!before?.members.includes(me);
        this.knowLater(after.members.filter((m) => isRemote(m) && (!wasIn || !before!.members.includes(m))));
      }
      return;
    }
    const where = conversationOf(pt, me);
    if (where === null) return;
    // Group messages only from members, and only in a group this client is in.
    if (pt.group && !this.groups.accepts(pt.group.id, pt.from)) return;
    const conv = pt.group ? groupConv(pt.group.id) : peerConv(where);
    const gid = pt.group?.id;
    // Nothing from a person (or server) blocked here, or of a group invitation blocked, is kept, whatever the server let through before.
    const known = await getConversation(db, conv);
    if (known?.blocked) return;
    switch (pt.kind) {
      case 'text': {
        // Every attachment is kept here before the message is acknowledged;
        // a sender elsewhere's blobs are on its own server.
        const origin = !mine && isRemote(pt.from) ? baseUrl(domainOf(pt.from, this.domain)) : undefined;
        for (const a of pt.attachments ?? []) {
          await this.fetchAttachment(a.blob, a.key, a.sha256, a.type, a.name, origin);
          if (a.thumb) await this.fetchAttachment(a.thumb.blob, a.thumb.key, a.thumb.sha256, 'image/*', undefined, origin);
        }
        // A person of another server writing first is a request: nothing
        // tells them it arrived or was read until it is accepted; so is
        // every message of a group such a person added this identity to.
        // (A conversation with no message yet is one only held or looked up so far.)
        const request = !mine && (pt.group ? !!known?.request : isRemote(pt.from) && (!known || !!known.request || !known.last));
        const active = this.activeConv === conv && pageVisible();
        const rec = { conv, id: env.message.payload.id, mid: pt.mid, from: pt.from, mine, body: pt.body, ts: pt.ts, seq: env.seq, state: mine ? 'sent' : 'received', kind: 'text' } as const;
        // A sync copy of what another device sent to people elsewhere: its
        // documents to them wait in the same outbox, followed here too.
        const relay = mine ? await this.expectedRelays(where, pt.mid, gid) : [];
        const s = await appendMessage(
          db,
          {
            ...rec,
            ...(pt.reply ? { reply: pt.reply } : {}),
            ...(pt.attachments ? { attachments: pt.attachments } : {}),
            ...(mine || request ? {} : { receiptSent: active && this.readReceipts ? 'read' : 'delivered' }),
            ...(relay.length ? { relay } : {}),
          },
          { unread: !mine && !active },
        );
        if (!s) {
          // Sent again by another device to those it failed to reach (a retry's sync copy, <mid>:r<time>:<digest>): followed again.
          if (mine && isRetryId(env.message.payload.id, pt.mid)) await this.refollow(db, conv, pt.mid);
          return;
        }
        this.mirror(s);
        if (relay.length) await this.followRelay(db, conv, pt.mid);
        if (request && !known?.request) this.mirrorConversation(await updateConversation(db, conv, (c) => void (c.request = true)));
        if (request) return;
        if (!mine) {
          this.queueReceipt(pt.from, gid, 'delivered', pt.mid);
          if (s.message.receiptSent === 'read') this.queueReceipt(pt.from, gid, 'read', pt.mid);
        }
        return;
      }
      case 'receipt': {
        for (const mid of pt.mids!) {
          const s = mine
            ? // Sent by another of this identity's devices: what it read is read here.
              pt.receipt === 'read'
              ? await updateMessage(db, conv, conv.startsWith('p:') ? peerOf(conv)! : '', mid, (m) => (m.receiptSent === 'read' ? false : void (m.receiptSent = 'read')))
              : undefined
            : await updateMessage(db, conv, me, mid, (m) => applyReceipt((m.receipts ??= { delivered: [], read: [] }), pt.from, pt.receipt!));
          if (s) this.mirror(s);
        }
        return;
      }
      case 'reaction': {
        const t = pt.target!;
        const s = await updateMessage(db, conv, t.from, t.mid, (m) => !m.deleted && applyReaction((m.reactions ??= []), pt.from, pt.emoji!));
        if (s) this.mirror(s);
        return;
      }
      case 'delete': {
        if (!deleteAllowed(pt.from, pt.target!)) return;
        await this.markDeleted(conv, pt.target!.from, pt.target!.mid);
        return;
      }
    }
  }

  private async markDeleted(conv: string, from: string, mid: string): Promise<void> {
    const db = await this.db();
    let blobs: string[] = [];
    const s = await updateMessage(db, conv, from, mid, (m) => {
      if (m.deleted) return false;
      blobs = (m.attachments ?? []).flatMap((a) => (a.thumb ? [a.blob, a.thumb.blob] : [a.blob]));
      m.deleted = true;
      m.body = '';
      delete m.attachments;
      delete m.reply;
      delete m.reactions;
    });
    if (s) this.mirror(s);
    for (const b of blobs) await deleteFile(db, b).catch(() => {});
  }

  /** Downloads a blob (from origin, a remote sender's server, when given), checks it, decrypts it and keeps it on this device. */
  private async fetchAttachment(blob: string, key: string, sha256: string, type: string, name?: string, origin?: string): Promise<void> {
    const db = await this.db();
    if (await getFile(db, blob)) return;
    const bytes = await this.deps.getBlob(blob, origin);
    let plain: Uint8Array<ArrayBuffer>;
    try {
      plain = await decryptAttachment(bytes, key, sha256);
    } catch (e) {
      // Altered, or not the one named: never shown; the message still is.
      console.warn(`attachment ${blob}: ${(e as Error).message}`);
      return;
    }
    await putFile(db, { id: blob, data: plain.buffer, type, size: plain.length, ...(name ? { name } : {}) });
  }

  /** An attachment kept on this device (decrypted), or undefined. */
  async file(blob: string): Promise<Uint8Array<ArrayBuffer> | undefined> {
    const f = await getFile(await this.db(), blob);
    if (!f) return undefined;
    return f.data instanceof Blob ? new Uint8Array(await f.data.arrayBuffer()) : new Uint8Array(f.data);
  }

  /** Keeps a file sent from here, so its own message shows it. */
  async keepFile(blob: string, bytes: Uint8Array<ArrayBuffer>, type: string, name?: string): Promise<void> {
    await putFile(await this.db(), { id: blob, data: bytes.slice().buffer, type, size: bytes.length, ...(name ? { name } : {}) });
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
        if (page.messages.length === 0) break;
        const before = this.cursor;
        await this.ingest(page.messages);
        if (this.cursor === before) break; // a lookup failed: try again later
      }
      await this.reopenWithheld();
      void this.flushKnown();
    })();
  }

  /** Opens again what was held from people elsewhere whose servers could not be asked (not what waits on a key problem). */
  private async reopenWithheld(): Promise<void> {
    const waiting = [...this.conversations.values()].filter((c) => c.peer && isRemote(c.peer) && c.withheld?.length && !this.keyProblems.has(c.peer));
    for (const c of waiting) {
      await this.serial(async () => {
        const db = await this.db();
        const held = (await getConversation(db, c.conv))?.withheld ?? [];
        if (held.length === 0) return;
        this.mirrorConversation(await updateConversation(db, c.conv, (r) => void (r.withheld = [])));
        for (const env of held) if (!(await this.open(env))) await this.withhold(c.peer!, env);
      });
    }
    void this.flushReceipts();
  }

  // --- sending ---------------------------------------------------------------

  /**
   * Whether this identity lists more than one signing key: then everything
   * sent goes to its own inbox too, a sync copy for its other devices.
   * Asked again after a minute (a device may have been linked meanwhile).
   */
  private hasOtherDevices(): Promise<boolean> {
    const now = Date.now();
    if (!this.ownDevices || now - this.ownDevices.at > 60_000) {
      const many = this.deps
        .lookup(this.me.handle)
        .then((u) => (u.signing_keys?.length ?? 0) > 1)
        .catch(() => false);
      this.ownDevices = { at: now, many };
    }
    return this.ownDevices.many;
  }

  /** Forgets what was learnt of this identity's devices (after linking one). */
  devicesChanged(): void {
    this.ownDevices = null;
    this.users.delete(this.me.handle);
  }

  /** Who conv's messages go to: the other person, or the group's other members (none once out of it). */
  recipients(conv: string): string[] {
    const gid = groupIdOf(conv);
    if (!gid) return [peerOf(conv)!];
    const s = this.groups.state(gid);
    if (!s || !s.members.includes(this.me.handle)) return [];
    return s.members.filter((m) => m !== this.me.handle);
  }

  /**
   * The documents of one content to recipients, and to this identity's
   * own inbox when it has other devices: one per recipient, sealed to each.
   */
  private async documents(conv: string, c: Content, recipients: string[], blobs: string[] = []): Promise<Signed<MessagePayload>[]> {
    const me = this.me.handle;
    const to = [...new Set(recipients)];
    if (!to.includes(me) && (await this.hasOtherDevices())) to.push(me);
    const batch = to.length > 1 || !!c.group;
    const ts = this.deps.now();
    const peer = peerOf(conv) ?? undefined;
    // A document to a person elsewhere is for that person's server, from
    // this identity's address, to the handle there.
    return Promise.all(
      to.map(async (r) => {
        const u = await this.user(r);
        const from = fromFor(this.me, u.server);
        return newMessageOf(this.keys, u, await envelopeIdFor(c.mid, r, batch), plaintextFor(c, from, u.handle, ts, peer), ts, blobs);
      }),
    );
  }

  /** Posts documents: one message alone, more (or any group's) as one group send. */
  private async post(docs: Signed<MessagePayload>[]): Promise<void> {
    if (docs.length === 0) return;
    if (docs.length === 1 && !docs[0]!.payload.id.includes(':')) await this.deps.postMessage(docs[0]!);
    else await this.deps.postBatch(this.me, docs);
  }

  /** Sends what is not shown as a message of its own (receipts, reactions, deletions, group changes). */
  private async sendControl(conv: string, c: Content, recipients: string[]): Promise<void> {
    await this.post(await this.documents(conv, c, recipients));
  }

  /** Stores an own message as pending: shown at once, sent by deliver. */
  private async appendOwn(conv: string, body: string, extra: SendExtra = {}): Promise<ChatMessage | undefined> {
    if (peerOf(conv)) this.conversation(peerOf(conv)!);
    await this.openConversation(conv);
    const id = newMessageId();
    const stored = await this.serial(async () => {
      const m = { conv, id, mid: id, from: this.me.handle, mine: true, body, ts: this.deps.now(), state: 'pending', kind: 'text' } as const;
      const s = await appendMessage(await this.db(), { ...m, ...(extra.reply ? { reply: extra.reply } : {}), ...(extra.attachments?.length ? { attachments: extra.attachments } : {}) });
      if (s) this.mirror(s);
      return s;
    });
    return stored?.message;
  }

  /** Sends a text to peer (a handle). */
  send(peer: string, body: string, extra: SendExtra = {}): Promise<void> {
    return this.sendIn(peerConv(peer), body, extra);
  }

  /** Sends a text in conv (a person's or a group's). */
  async sendIn(conv: string, body: string, extra: SendExtra = {}): Promise<void> {
    // Answering a request (a person's, or a group's) accepts it.
    const peer = peerOf(conv);
    if (this.conversations.get(conv)?.request) {
      await (peer ? this.acceptRequest(peer) : this.acceptGroupRequest(conv)).catch((e: unknown) => console.warn(`accepting ${peer ?? 'a group'}:`, (e as Error).message));
    }
    const m = await this.appendOwn(conv, body, extra);
    if (!m) return;
    this.sending.add(m.mid);
    try {
      await this.deliver(m, extra.blobs ?? []);
    } finally {
      this.sending.delete(m.mid);
    }
  }

  /** Shows an own message while its attachments upload; finish() sends it, failDraft() marks it not sent. */
  async draft(conv: string, body: string, reply?: Reply): Promise<ChatMessage | undefined> {
    const m = await this.appendOwn(conv, body, { reply });
    if (m) {
      this.sending.add(m.mid);
      this.progress.set(m.mid, 0);
    }
    return m;
  }

  /**
   * Uploads a draft's attachments with run, then sends it; a failed upload
   * marks it not sent, and a Retry in this session runs the upload again
   * (its files are kept in memory only: a reload forgets them).
   */
  async upload(m: ChatMessage, run: () => Promise<Uploaded>): Promise<void> {
    this.uploads.set(m.mid, run);
    let done: Uploaded;
    try {
      this.sending.add(m.mid);
      this.progress.set(m.mid, 0);
      done = await run();
    } catch (e) {
      await this.failDraft(m);
      throw e;
    }
    this.uploads.delete(m.mid);
    await this.finish(m, done.attachments, done.blobs);
  }

  async finish(m: ChatMessage, attachments: Attachment[], blobs: string[]): Promise<void> {
    try {
      const s = await this.serial(async () => updateMessage(await this.db(), m.conv, m.from, m.mid, (r) => void (r.attachments = attachments)));
      if (s) this.mirror(s);
      this.progress.delete(m.mid);
      if (s) await this.deliver(s.message, blobs);
    } finally {
      this.sending.delete(m.mid);
    }
  }

  async failDraft(m: ChatMessage): Promise<void> {
    this.progress.delete(m.mid);
    this.sending.delete(m.mid);
    const s = await this.serial(async () => updateMessage(await this.db(), m.conv, m.from, m.mid, (r) => void (r.state = 'failed')));
    if (s) this.mirror(s);
  }

  /** Sends a failed message of mine (by mid) to peer again. */
  retry(peer: string, mid: string): Promise<void> {
    return this.retryIn(peerConv(peer), mid);
  }

  async retryIn(conv: string, mid: string): Promise<void> {
    this.sending.add(mid);
    try {
      const stored = await this.serial(async () => {
        const s = await updateMessage(await this.db(), conv, this.me.handle, mid, (m) => (m.mine && m.state === 'failed' ? void (m.state = 'pending') : false));
        if (s) this.mirror(s);
        return s;
      });
      if (!stored) return;
      const upload = this.uploads.get(mid);
      if (upload && !stored.message.attachments) return await this.upload(stored.message, upload);
      await this.deliver(stored.message, (stored.message.attachments ?? []).flatMap((a) => (a.thumb ? [a.blob, a.thumb.blob] : [a.blob])));
    } finally {
      this.sending.delete(mid);
    }
  }

  private async deliver(m: ChatMessage, blobs: string[]): Promise<void> {
    let docs = m.batch ?? (m.doc ? [m.doc] : undefined);
    let id = m.id;
    let mid = m.mid;
    let failure: { error: unknown } | undefined;
    try {
      // A retry posts the same documents: the server answers the original
      // receipts if the first try got through. Documents too old to be
      // accepted are signed again under a new mid.
      if (!docs || this.deps.now() - (docs[0]?.payload.ts ?? 0) > 240) {
        if (docs) mid = newMessageId();
        const recipients = this.recipients(m.conv);
        if (recipients.length === 0) throw new Error('you are not in this group');
        docs = await this.documents(m.conv, textContent(mid, m.body, { group: groupIdOf(m.conv), reply: m.reply, attachments: m.attachments }), recipients, blobs);
        id = docs[0]!.payload.id;
      }
      await this.post(docs);
    } catch (error) {
      failure = { error };
    }
    const kept = docs;
    const relay = failure ? [] : relaysOf(docs ?? [], this.domain);
    await this.serial(async () => {
      const db = await this.db();
      const s = await updateMessage(db, m.conv, m.from, m.mid, (r) => {
        r.id = id;
        r.mid = mid;
        r.state = failure ? 'failed' : 'sent';
        delete r.doc;
        if (failure && kept) r.batch = kept;
        else delete r.batch;
        if (relay.length) r.relay = relay;
        else delete r.relay;
      });
      if (s) this.mirror(s);
      if (relay.length) await this.followRelay(db, m.conv, mid);
    });
    if (failure) throw failure.error;
  }

  // --- other servers: the outbox, requests, blocking --------------------------

  private async followRelay(db: IDBDatabase, conv: string, mid: string): Promise<void> {
    this.outboxWait = OUTBOX_POLL_MS;
    this.outboxNext = 0;
    if (this.relaying.some((r) => r.conv === conv && r.mid === mid)) return;
    this.relaying = [...this.relaying, { conv, mid }];
    await setMeta(db, 'relaying', this.relaying);
  }

  /**
   * The documents another device of this identity queued for people
   * elsewhere with a message whose sync copy arrived here: one to each
   * recipient on another server (the peer, or the group's other members as
   * this client holds them), under the id a group send gives it. Expected
   * until the outbox lists them.
   */
  private async expectedRelays(where: string, mid: string, gid?: string): Promise<Relay[]> {
    const me = this.me.handle;
    const to = gid ? (this.groups.state(gid)?.members ?? []).filter((m) => m !== me) : [where];
    return Promise.all(to.filter(isRemote).map(async (r) => ({ to: r, id: await envelopeIdFor(mid, r, true), state: 'queued' as const, unconfirmed: true })));
  }

  /** Follows an own message again (another device sent it again): its documents take the state of the latest in the outbox. */
  private async refollow(db: IDBDatabase, conv: string, mid: string): Promise<void> {
    const m = await messageByMid(db, conv, this.me.handle, mid);
    if (m?.relay?.some((r) => r.state === 'failed')) await this.followRelay(db, conv, mid);
  }

  /** Whether own messages wait in the outbox for other servers (then checkOutbox has something to do). */
  get relayingAny(): boolean {
    return this.relaying.length > 0;
  }

  /**
   * Asks the outbox how the documents of own messages queued for other
   * servers fared, and shows it: queued (pending), delivered, or failed
   * with the reason. A message stops being followed once each of its
   * documents is delivered or failed.
   */
  async checkOutbox(): Promise<void> {
    if (this.relaying.length === 0) return;
    const { entries } = await this.deps.outbox(this.me);
    const whole = entries.length < OUTBOX_LIST_MAX;
    const now = this.deps.now();
    let changedAny = false;
    await this.serial(async () => {
      const db = await this.db();
      const still: { conv: string; mid: string }[] = [];
      for (const f of this.relaying) {
        let open = false;
        const s = await updateMessage(db, f.conv, this.me.handle, f.mid, (m) => {
          let changed = false;
          const kept: Relay[] = [];
          for (const r of m.relay ?? []) {
            // The latest document of this message to r.to (the outbox lists
            // the newest first): its own, or a retry's (<mid>:r..., sent
            // again from this device or another).
            const e = entries.find((x) => x.to === r.to && (x.id === r.id || x.id.startsWith(`${m.mid}:`)));
            if (e) {
              if (e.id !== r.id || e.state !== r.state || e.error?.code !== r.error || r.unconfirmed) {
                r.id = e.id;
                r.state = e.state;
                if (e.error?.code) r.error = e.error.code;
                else delete r.error;
                delete r.unconfirmed;
                changed = true;
              }
            } else if (r.unconfirmed) {
              // Expected from a sync copy, never listed: the other device
              // did not queue one to this person.
              if (whole && now - m.ts > RELAY_UNCONFIRMED_S) {
                changed = true;
                continue;
              }
            } else if (r.state === 'queued' && now - m.ts > RELAY_FORGOTTEN_S) {
              // Gone from the outbox (it keeps an outcome 24 hours, a queued
              // document 48): what became of it is no longer known.
              r.state = 'failed';
              r.error = 'unknown';
              changed = true;
            }
            kept.push(r);
            if (r.state === 'queued') open = true;
          }
          if (!changed) return false;
          if (kept.length) m.relay = kept;
          else delete m.relay;
        });
        if (s) this.mirror(s);
        if (s) changedAny = true;
        if (open) still.push(f);
      }
      if (still.length !== this.relaying.length) {
        this.relaying = still;
        await setMeta(db, 'relaying', still);
      }
    });
    // Asked less often while nothing moves (a server down for hours), at once again after a send.
    this.outboxWait = changedAny ? OUTBOX_POLL_MS : Math.min(this.outboxWait * 2, OUTBOX_POLL_MAX_MS);
    this.outboxNext = Date.now() + this.outboxWait;
  }

  private outboxWait = OUTBOX_POLL_MS;
  private outboxNext = 0;

  /** What the timer runs every OUTBOX_POLL_MS: checkOutbox when something is followed and its backoff has passed. */
  async outboxTick(nowMs = Date.now()): Promise<void> {
    if (this.relaying.length === 0 || nowMs < this.outboxNext) return;
    this.outboxNext = nowMs + this.outboxWait; // one check at a time
    await this.checkOutbox();
  }

  /** Sends the message again to those of its recipients elsewhere it failed to reach, under the same mid. */
  async retryRelay(conv: string, mid: string): Promise<void> {
    const c = await this.openConversation(conv);
    const m = c.messages.find((x) => x.mine && x.mid === mid);
    const failed = (m?.relay ?? []).filter((r) => r.state === 'failed');
    if (!m || failed.length === 0) return;
    const blobs = (m.attachments ?? []).flatMap((a) => (a.thumb ? [a.blob, a.thumb.blob] : [a.blob]));
    const docs = await this.documents(conv, textContent(mid, m.body, { group: groupIdOf(conv), reply: m.reply, attachments: m.attachments }), failed.map((r) => r.to), blobs);
    // New envelope ids: the outbox answers a retried (from, id) with its first fate.
    const n = this.deps.now().toString(36);
    const again = await Promise.all(docs.map(async (d) => this.resign(d, `${mid}:r${n}:${await nameDigest(`${d.payload.to}@${d.payload.server}`)}`)));
    await this.post(again);
    const fresh = relaysOf(again, this.domain);
    await this.serial(async () => {
      const db = await this.db();
      const s = await updateMessage(db, conv, this.me.handle, mid, (r) => {
        r.relay = [...(r.relay ?? []).filter((x) => !fresh.some((f) => f.to === x.to)), ...fresh];
      });
      if (s) this.mirror(s);
      await this.followRelay(db, conv, mid);
    });
  }

  /** A document signed again under another envelope id. */
  private async resign(d: Signed<MessagePayload>, id: string): Promise<Signed<MessagePayload>> {
    return signDocument(this.me.signing, { ...d.payload, id });
  }

  /**
   * Accepts a request from a person of another server: the server is told
   * they are known (so a "refuse strangers" setting lets them write), and
   * they learn what was received and read.
   */
  async acceptRequest(peer: string): Promise<void> {
    if (isRemote(peer)) await this.changePrivacy((p) => this.addKnown(p, [peer]));
    await this.accepted(peerConv(peer));
  }

  /**
   * Accepts a group a person of another server added this identity to: its
   * members elsewhere become known to the own server (when it refuses
   * strangers), and they learn what was received and read.
   */
  async acceptGroupRequest(conv: string): Promise<void> {
    const gid = groupIdOf(conv);
    const state = gid ? this.groups.state(gid) : undefined;
    if (!state) return;
    await this.knowPeople(state.members);
    await this.accepted(conv);
  }

  /** A request accepted: no longer one, and the receipts it held back are sent. */
  private async accepted(conv: string): Promise<void> {
    const c = await this.openConversation(conv);
    const gid = groupIdOf(conv);
    await this.serial(async () => {
      const db = await this.db();
      this.mirrorConversation(await updateConversation(db, conv, (r) => ((r.request || r.inviter) && !r.blocked ? (delete r.request, void delete r.inviter) : false)));
      for (const m of c.messages) {
        if (m.mine || m.kind !== 'text' || m.deleted || m.receiptSent) continue;
        const s = await updateMessage(db, conv, m.from, m.mid, (r) => void (r.receiptSent = 'delivered'));
        if (s) this.mirror(s);
        this.queueReceipt(m.from, gid, 'delivered', m.mid);
      }
    });
    await this.flushReceipts();
    this.markRead(conv);
  }

  /**
   * Blocks a person, or with domain every person of its server: a person's
   * server elsewhere is told (it refuses their messages from now on), and
   * this client keeps none. The conversation stays, marked, to unblock.
   */
  async block(peer: string, domain = false): Promise<void> {
    const entry = domain && isRemote(peer) ? domainOf(peer, this.domain) : peer;
    // The server's setting names people and servers elsewhere; one of this
    // server is blocked here alone.
    if (isRemote(peer)) {
      await this.changePrivacy((p) => {
        p.blocked = [...new Set([...p.blocked, entry])];
        p.known = p.known.filter((k) => k !== peer);
      });
    }
    const conv = peerConv(peer);
    // The person's conversation, or with domain everyone's of its server, and the groups they invited this identity to that it did not accept.
    const hit = (name: string | undefined) => !!name && (name === peer || (domain && isRemote(name) && domainOf(name, this.domain) === entry));
    await this.serial(async () => {
      const db = await this.db();
      for (const c of [...this.conversations.values()]) {
        if (c.group ? !(c.request && hit(c.inviter)) : c.conv !== conv && !(domain && hit(c.peer))) continue;
        this.mirrorConversation(await updateConversation(db, c.conv, (r) => ((r.blocked = true), void delete r.request)));
      }
      if (!this.conversations.has(conv)) this.mirrorConversation(await updateConversation(db, conv, (r) => ((r.blocked = true), void delete r.request)));
    });
  }

  /** Unblocks a person (and its server, if it was blocked whole); a group invitation of theirs is a request again. */
  async unblock(peer: string): Promise<void> {
    const d = isRemote(peer) ? domainOf(peer, this.domain) : undefined;
    if (d) await this.changePrivacy((p) => void (p.blocked = p.blocked.filter((b) => b !== peer && b !== d)));
    const hit = (name: string | undefined) => !!name && (name === peer || (!!d && isRemote(name) && domainOf(name, this.domain) === d));
    await this.serial(async () => {
      const db = await this.db();
      for (const c of [...this.conversations.values()]) {
        if (!c.blocked || !hit(c.group ? c.inviter : c.peer)) continue;
        this.mirrorConversation(await updateConversation(db, c.conv, (r) => (delete r.blocked, r.inviter ? void (r.request = true) : undefined)));
      }
    });
  }

  private privacyChain: Promise<unknown> = Promise.resolve();

  /**
   * The privacy setting, read, changed by change and written back whole
   * (unless change answers false), one change at a time: two changes at
   * once would each write back what the other did not see.
   */
  private changePrivacy(change: (p: api.Privacy) => void | false): Promise<api.Privacy> {
    const run = async () => {
      const p = normalPrivacy(await this.deps.getPrivacy(this.me));
      if (change(p) === false) return p;
      return this.deps.putPrivacy(this.me, p);
    };
    const done = this.privacyChain.then(run, run);
    this.privacyChain = done.catch(() => {});
    return done;
  }

  /**
   * The people elsewhere this identity chats with: of its conversations
   * (not requests, not blocked) and of the groups it is in and accepted.
   */
  private kept(): Set<string> {
    const people = new Set<string>();
    for (const c of this.conversations.values()) {
      if (c.peer && isRemote(c.peer) && !c.request && !c.blocked) people.add(c.peer);
    }
    for (const g of this.groups.list()) {
      const c = this.conversations.get(groupConv(g.id));
      if (c?.request || c?.blocked) continue;
      for (const m of g.members) if (isRemote(m)) people.add(m);
    }
    return people;
  }

  /**
   * Whether a person elsewhere is someone this identity chats with: a
   * conversation with them it wrote or accepted, or a group they are in
   * that it accepted.
   */
  private knows(name: string): boolean {
    const c = this.conversations.get(peerConv(name));
    if (c && !c.request && !c.blocked && c.last) return true;
    return this.groups.list().some((g) => {
      const gc = this.conversations.get(groupConv(g.id));
      return !!gc && !gc.request && !gc.blocked && g.members.includes(name);
    });
  }

  /**
   * Adds people elsewhere to p's known, within the server's caps (making
   * room by forgetting those this identity no longer chats with); false
   * when nothing changes.
   */
  private addKnown(p: api.Privacy, add: Iterable<string>): void | false {
    const keep = this.kept();
    const { privacy, changed, left } = withKnown(p, add, (n) => keep.has(n));
    if (left.length) console.warn(`not known to the server (it keeps ${MAX_PRIVACY_KNOWN} people at most): ${left.join(', ')}`);
    if (!changed) return false;
    p.known = privacy.known;
  }

  /**
   * Makes people elsewhere known to the own server when it refuses
   * strangers (otherwise there is nothing to do: refusing them later makes
   * everyone this identity chats with known).
   */
  private knowPeople(names: string[]): Promise<unknown> {
    const add = names.filter(isRemote);
    if (add.length === 0) return Promise.resolve();
    return this.changePrivacy((p) => (p.strangers === 'refuse' ? this.addKnown(p, add) : false));
  }

  /** People elsewhere to make known (knowPeople), not yet told to the server: tried again at each poll. */
  private unknownYet = new Set<string>();
  private knowing?: Promise<void>;

  /** Makes people elsewhere known in the background (they joined a group while its messages are read). */
  private knowLater(names: string[]): void {
    for (const n of names) if (isRemote(n)) this.unknownYet.add(n);
    void this.flushKnown();
  }

  /** Tells the own server of the people knowLater was given, one setting change for all that wait; a failure waits for the next poll. */
  flushKnown(): Promise<void> {
    if (this.knowing || this.unknownYet.size === 0) return this.knowing ?? Promise.resolve();
    const knowing = (async () => {
      try {
        while (this.unknownYet.size) {
          const names = [...this.unknownYet];
          await this.knowPeople(names);
          for (const n of names) this.unknownYet.delete(n);
        }
      } catch (e) {
        console.warn('telling the server who is known (tried again later):', (e as Error).message);
      } finally {
        this.knowing = undefined;
      }
    })();
    this.knowing = knowing;
    return knowing;
  }

  /** Whether people of other servers this identity did not accept may write (the server's strangers setting). */
  async strangers(): Promise<'accept' | 'refuse'> {
    return (await this.deps.getPrivacy(this.me)).strangers ?? 'accept';
  }

  /**
   * Refusing strangers keeps the people this identity chats with: every
   * person elsewhere of a conversation (not a request, not blocked) or of a
   * group it is in (and accepted) becomes known, as far as the server's cap
   * allows.
   */
  async setStrangers(v: 'accept' | 'refuse'): Promise<void> {
    await this.changePrivacy((p) => {
      p.strangers = v;
      if (v === 'refuse') this.addKnown(p, this.kept());
    });
  }

  /** A person elsewhere this identity starts a chat with is known to its server, when it refuses strangers. */
  private async knowPeer(peer: string): Promise<void> {
    await this.knowPeople([peer]);
  }

  // --- receipts, reactions, deletion ------------------------------------------

  private queueReceipt(to: string, group: string | undefined, kind: ReceiptKind, mid: string): void {
    if (to === this.me.handle) return;
    const k = `${to}\n${group ?? ''}\n${kind}`;
    const p = this.pendingReceipts.get(k) ?? { to, group, kind, mids: [] };
    p.mids.push(mid);
    this.pendingReceipts.set(k, p);
  }

  /** Sends the receipts queued, batching mids per sender, one flush at a time. */
  private flushReceipts(): Promise<void> {
    this.receiptChain = this.receiptChain.then(() => this.sendReceipts());
    return this.receiptChain;
  }

  /** Resolves once the receipts queued so far went out (or failed). */
  receiptsSent(): Promise<void> {
    return this.serial(async () => {}).then(() => this.receiptChain);
  }

  /** A failure is dropped: receipts are a courtesy, not worth holding the inbox for. */
  private async sendReceipts(): Promise<void> {
    const pending = [...this.pendingReceipts.values()];
    this.pendingReceipts.clear();
    for (const p of pending) {
      const conv = p.group ? groupConv(p.group) : peerConv(p.to);
      for (const c of receiptContents(newMessageId, p.kind, p.mids, p.group)) {
        await this.sendControl(conv, c, [p.to]).catch((e: unknown) => console.warn(`receipt to ${p.to} not sent:`, (e as Error).message));
      }
    }
  }

  /** Reacts to a message with emoji, or takes the reaction back when it is the one given already. */
  async react(m: ChatMessage, emoji: string): Promise<void> {
    const next = m.reactions?.find((r) => r.from === this.me.handle)?.emoji === emoji ? '' : emoji;
    const s = await this.serial(async () => updateMessage(await this.db(), m.conv, m.from, m.mid, (r) => applyReaction((r.reactions ??= []), this.me.handle, next)));
    if (s) this.mirror(s);
    await this.sendControl(m.conv, reactionContent(newMessageId(), { from: m.from, mid: m.mid }, next, groupIdOf(m.conv)), this.recipients(m.conv));
  }

  /** Deletes an own message for everyone. */
  async deleteForEveryone(m: ChatMessage): Promise<void> {
    if (!m.mine) throw new Error('only your own messages can be deleted for everyone');
    await this.sendControl(m.conv, deleteContent(newMessageId(), { from: this.me.handle, mid: m.mid }, groupIdOf(m.conv)), this.recipients(m.conv));
    await this.serial(() => this.markDeleted(m.conv, m.from, m.mid));
  }

  // --- groups -----------------------------------------------------------------

  /** Creates a group of me and members (checked to exist first), and tells them; answers its conv. */
  async createGroup(name: string, members: string[]): Promise<string> {
    const others = [...new Set(members.filter((m) => m.trim()).map((m) => this.nameOf(m)))].filter((m) => m !== this.me.handle);
    await Promise.all(others.map((h) => this.user(h)));
    const state = newGroup(this.me.handle, name.trim(), others);
    await this.changeGroup(undefined, state);
    return groupConv(state.id);
  }

  /**
   * Sends a change made here, in one group send, to the members before and
   * after it, this client included: it takes its own change when it reads
   * it back from its inbox, in the order every member reads it
   * (docs/protocol.md, "Groups").
   */
  async changeGroup(before: GroupState | undefined, next: GroupState): Promise<void> {
    await Promise.all(next.members.filter((m) => m !== this.me.handle).map((h) => this.user(h)));
    await this.sendControl(groupConv(next.id), groupContent(newMessageId(), next), controlRecipients(before, next));
    await this.poll().catch(() => {}); // the stream brings it too; reading it now shows it at once
  }

  // --- typing -----------------------------------------------------------------

  /** A keystroke in conv's composer: tells the others at most every 3 s. */
  typed(conv: string): void {
    let s = this.typingSenders.get(conv);
    if (!s) this.typingSenders.set(conv, (s = new TypingSender()));
    if (s.keystroke(Date.now())) void this.sendTyping(conv, true);
  }

  /** The composer was sent or cleared: tells the others once. */
  stoppedTyping(conv: string): void {
    if (this.typingSenders.get(conv)?.stop()) void this.sendTyping(conv, false);
  }

  /**
   * Tells conv's other members: those of this server by handle, those of
   * each other server in one signed document for it (docs/protocol.md,
   * "Typing across servers"), all in one request. Nobody of a conversation
   * that is a request or blocked is told.
   */
  private async sendTyping(conv: string, typing: boolean): Promise<void> {
    const c = this.conversations.get(conv);
    if (c?.request || c?.blocked) return;
    const gid = groupIdOf(conv);
    try {
      const ts = this.deps.now();
      // A recipient whose record cannot be read now is left out: a typing note is a hint.
      const sealed = (
        await Promise.all(
          this.recipients(conv).map(async (r) => {
            try {
              const u = await this.user(r);
              const from = fromFor(this.me, u.server);
              return { server: u.server, from, to: u.handle, ct: await sealTyping(u.enc_key, { v: 1, from, to: u.handle, ts, typing, ...(gid ? { group: { id: gid } } : {}) }) };
            } catch {
              return null;
            }
          }),
        )
      ).filter((x) => x !== null);
      const to = sealed.filter((x) => x.server === this.domain).map(({ to, ct }) => ({ to, ct }));
      const byServer = new Map<string, { to: string; ct: string }[]>();
      for (const x of sealed) if (x.server !== this.domain) byServer.set(x.server, [...(byServer.get(x.server) ?? []), { to: x.to, ct: x.ct }]);
      const remote = await Promise.all(
        [...byServer]
          .slice(0, MAX_TYPING_DOCUMENTS)
          .map(([server, list]) => newTypingDocument(this.keys.signing, server, fromFor(this.me, server), ts, list.slice(0, MAX_TYPING_RECIPIENTS))),
      );
      if (to.length || remote.length) await this.deps.postTyping(this.me, to, remote);
    } catch {
      // A typing note is a hint: one lost is not worth a retry.
    }
  }

  /**
   * A typing event from the stream: shown for 6 s in its conversation. One
   * from a person elsewhere names them by address (relayed by their
   * server); a blocked person's is not shown.
   */
  async onTyping(e: { from: string; ct: string }): Promise<void> {
    const note = await openTyping({ handle: this.me.handle, enc: this.me.enc }, e);
    if (!note) return;
    const from = localName(note.from, this.domain);
    if (from === this.me.handle) return;
    if (this.conversations.get(peerConv(from))?.blocked) return;
    if (note.group && !this.groups.accepts(note.group.id, from)) return;
    const conv = note.group ? groupConv(note.group.id) : peerConv(from);
    const c = this.conversations.get(conv);
    if (!c || c.blocked) return;
    this.typingBoard.note(conv, from, note.typing, Date.now());
    this.refreshTyping(conv);
    if (note.typing) setTimeout(() => this.refreshTyping(conv), TYPING_SHOWN_MS + 50);
  }

  private refreshTyping(conv: string): void {
    const who = this.typingBoard.typing(conv, Date.now());
    if (who.length) this.typing.set(conv, who);
    else this.typing.delete(conv);
  }
}

/** Whether id is the envelope id retryRelay gives a document of message mid sent again: <mid>:r<base36 time>:<22 characters of a digest>. */
const isRetryId = (id: string, mid: string) => id.startsWith(`${mid}:r`) && /^r[0-9a-z]+:[A-Za-z0-9_-]{22}$/.test(id.slice(mid.length + 1));

/** The documents of docs for other servers, as relays queued in the outbox. */
function relaysOf(docs: Signed<MessagePayload>[], own: string): Relay[] {
  return docs.filter((d) => d.payload.server !== own).map((d) => ({ to: `${d.payload.to}@${d.payload.server}`, id: d.payload.id, state: 'queued' as const }));
}
