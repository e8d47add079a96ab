// The chat history of one identity: an IndexedDB database of its own
// (historyDbName(handle)) with one record per message and one per
// conversation, so a new message costs one small transaction and opening the
// app reads the conversation list and one page, however long the history.
// The page writes it; the service worker reads it to route a notification.
//
// Every exported function is one transaction. Records are plain data
// (structured-cloneable); a handle is never a property name (a person may be
// called "constructor"), so reactions are a list, not an object keyed by handle.

import type { Attachment, ReceiptKind, Reactions, Receipts, Reply } from './conversation';
import type { Envelope, MessagePayload } from './protocol';
import type { Signed } from './signing';

export const HISTORY_VERSION = 1;

/** The IndexedDB database of a handle's history. */
export const historyDbName = (handle: string) => `kez-history:${handle}`;

/** The conversation with one person. */
export const peerConv = (handle: string) => `p:${handle}`;
/** The conversation of a group. */
export const groupConv = (groupId: string) => `g:${groupId}`;
/** The other person of a two-person conversation, or null for a group. */
export const peerOf = (conv: string): string | null => (conv.startsWith('p:') ? conv.slice(2) : null);

export type MessageState = 'pending' | 'sent' | 'failed' | 'received';
/** What a stored message shows: text, or a group change (who joined, the new name). */
export type MessageKind = 'text' | 'group';

/** An attachment as a message carries it (docs/protocol.md, "Attachments"); the bytes are in `files`. */
export type AttachmentMeta = Attachment;

export interface MessageRecord {
  /** The conversation: peerConv(handle) or groupConv(id). */
  conv: string;
  /** This device's order of the message: increasing over every conversation, never reused. With conv, the key. */
  order: number;
  /** The id of the envelope posted or received (a group send's is `<mid>:<to>`). */
  id: string;
  /** The message's id in its conversation, what replies, reactions, receipts and deletions name. */
  mid: string;
  from: string;
  mine: boolean;
  body: string;
  ts: number; // Unix seconds, as the sender wrote it
  /** The inbox seq of a received message (or a sync copy). */
  seq?: number;
  state: MessageState;
  kind: MessageKind;
  /** An own message, kept for retry until sent. */
  doc?: Signed<MessagePayload>;
  /** An own message posted as a group send (group members, sync copy), kept for retry until sent. */
  batch?: Signed<MessagePayload>[];
  reply?: Reply;
  attachments?: AttachmentMeta[];
  /** One reaction per person, the latest. */
  reactions?: Reactions;
  receipts?: Receipts;
  /** A received message: the last receipt this device sent for it. */
  receiptSent?: ReceiptKind;
  /** Deleted by its author: the body and attachments are gone, the place stays. */
  deleted?: boolean;
  /**
   * An own message to people on other servers: its documents queued in this
   * server's outbox, one per such recipient, followed until delivered or
   * failed (docs/protocol.md, "GET /v1/outbox/{handle}").
   */
  relay?: Relay[];
}

/** One document of an own message relayed to another server, as the outbox tells. */
export interface Relay {
  /** The recipient's address. */
  to: string;
  /** The envelope id, which the outbox entry names. */
  id: string;
  state: 'queued' | 'delivered' | 'failed';
  /** Why it failed (the other server's code, or expired), or the last attempt's error while queued. */
  error?: string;
  /**
   * Expected, not seen: a sync copy of a message another of this
   * identity's devices sent names the recipient, and the outbox has not
   * listed a document to it yet (then it never was queued, and is dropped).
   */
  unconfirmed?: boolean;
}

/** A message about to be stored: the order is given by appendMessage. */
export type NewMessage = Omit<MessageRecord, 'order'>;

/** What the conversation list shows of a conversation's latest message. */
export interface MessagePreview {
  from: string;
  mine: boolean;
  body: string; // at most PREVIEW_CHARS
  ts: number;
  order: number;
  kind: MessageKind;
  deleted?: boolean;
  attachments?: number;
}

export interface ConversationRecord {
  conv: string;
  group: boolean;
  /** The other person's handle, or the group's name. */
  title: string;
  /** The other person, in a two-person conversation. */
  peer?: string;
  last?: MessagePreview;
  unread: number;
  /** Envelopes from the peer held while its keys are in question (Chat.keyProblems). */
  withheld?: Envelope[];
  /** A group whose state no longer lists this client: not shown (docs/protocol.md, "Groups"). */
  left?: boolean;
  /** A person of another server who wrote first, or added this identity to a group: shown as a request until accepted or blocked. */
  request?: boolean;
  /** A group's request (or blocked invitation): who of another server added this identity. */
  inviter?: string;
  /** A person (or server) this identity blocked: not shown. */
  blocked?: boolean;
}

/** One version of a group's state (docs/protocol.md, "Groups"); the state's shape is the groups module's. */
export interface GroupStateRecord<S = unknown> {
  group: string;
  version: number;
  /** The state in this client's form (lib/groups qualifyState). */
  state: S;
  /** The hash of the snapshot as carried, when it was written on another server (then not the state's own). */
  hash?: string;
}

/** The decrypted bytes of an attachment received or sent, by blob id. */
export interface FileRecord {
  id: string;
  data: Blob | ArrayBuffer;
  type: string;
  name?: string;
  size: number;
}

export const PREVIEW_CHARS = 200;

const MESSAGES = 'messages';
const CONVERSATIONS = 'conversations';
const META = 'meta';
const GROUPS = 'groups';
const FILES = 'files';
/** messages index: [conv, from, mid], to find a message by what others name it with. */
const BY_MID = 'mid';
/** messages index: seq, to find who sent inbox message seq (the service worker). */
const BY_SEQ = 'seq';

/** Opens (creating or upgrading) a handle's history. Another tab's newer version closes this one. */
export async function openHistory(handle: string, factory: IDBFactory = indexedDB): Promise<IDBDatabase> {
  const open = factory.open(historyDbName(handle), HISTORY_VERSION);
  open.onupgradeneeded = (e) => {
    const db = open.result;
    if (e.oldVersion < 1) {
      const messages = db.createObjectStore(MESSAGES, { keyPath: ['conv', 'order'] });
      messages.createIndex(BY_MID, ['conv', 'from', 'mid']);
      messages.createIndex(BY_SEQ, 'seq');
      db.createObjectStore(CONVERSATIONS, { keyPath: 'conv' });
      db.createObjectStore(META);
      db.createObjectStore(GROUPS, { keyPath: ['group', 'version'] });
      db.createObjectStore(FILES, { keyPath: 'id' });
    }
  };
  const db = await request(open);
  db.onversionchange = () => db.close();
  return db;
}

function request<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

/** Runs body in one transaction and answers what it returned once the transaction committed. */
async function inTransaction<T>(db: IDBDatabase, stores: string[], mode: IDBTransactionMode, body: (tx: IDBTransaction) => Promise<T>): Promise<T> {
  const tx = db.transaction(stores, mode);
  const committed = new Promise<void>((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new DOMException('transaction aborted', 'AbortError'));
  });
  try {
    const value = await body(tx);
    await committed;
    return value;
  } catch (e) {
    try {
      tx.abort();
    } catch {
      // Already finished.
    }
    await committed.catch(() => {});
    throw e;
  }
}

export function newConversation(conv: string): ConversationRecord {
  const peer = peerOf(conv);
  return peer === null ? { conv, group: true, title: '', unread: 0 } : { conv, group: false, title: peer, peer, unread: 0 };
}

export function previewOf(m: MessageRecord): MessagePreview {
  const p: MessagePreview = { from: m.from, mine: m.mine, body: m.deleted ? '' : m.body.slice(0, PREVIEW_CHARS), ts: m.ts, order: m.order, kind: m.kind };
  if (m.deleted) p.deleted = true;
  if (m.attachments?.length && !m.deleted) p.attachments = m.attachments.length;
  return p;
}

/** A message and its conversation as a write left them. */
export interface Stored {
  message: MessageRecord;
  conversation: ConversationRecord;
}

/**
 * Stores a new message at the end of its conversation (creating the
 * conversation), as the conversation's latest, counted unread when asked.
 * Undefined, and nothing written, when the conversation holds a message
 * with the same from and mid already (a repeat delivery).
 */
export function appendMessage(db: IDBDatabase, m: NewMessage, opts: { unread?: boolean } = {}): Promise<Stored | undefined> {
  return inTransaction(db, [MESSAGES, CONVERSATIONS, META], 'readwrite', async (tx) => {
    const messages = tx.objectStore(MESSAGES);
    const meta = tx.objectStore(META);
    const conversations = tx.objectStore(CONVERSATIONS);
    const [dup, last, c] = await Promise.all([
      request(messages.index(BY_MID).getKey([m.conv, m.from, m.mid])),
      request(meta.get('order')) as Promise<number | undefined>,
      request(conversations.get(m.conv)) as Promise<ConversationRecord | undefined>,
    ]);
    if (dup !== undefined) return undefined;
    const message: MessageRecord = { ...m, order: (last ?? 0) + 1 };
    const conversation = c ?? newConversation(m.conv);
    conversation.last = previewOf(message);
    if (opts.unread) conversation.unread++;
    messages.put(message);
    conversations.put(conversation);
    meta.put(message.order, 'order');
    return { message, conversation };
  });
}

/**
 * Changes the message of conv that from calls mid (change edits the record
 * in place; it may change id and mid, not conv or order), and the
 * conversation's preview when it is the latest. Undefined when there is no
 * such message or change returns false (nothing written).
 */
export function updateMessage(db: IDBDatabase, conv: string, from: string, mid: string, change: (m: MessageRecord) => void | boolean): Promise<Stored | undefined> {
  return inTransaction(db, [MESSAGES, CONVERSATIONS], 'readwrite', async (tx) => {
    const messages = tx.objectStore(MESSAGES);
    const [message, c] = await Promise.all([
      request(messages.index(BY_MID).get([conv, from, mid])) as Promise<MessageRecord | undefined>,
      request(tx.objectStore(CONVERSATIONS).get(conv)) as Promise<ConversationRecord | undefined>,
    ]);
    if (!message) return undefined;
    const { order } = message;
    if (change(message) === false) return undefined;
    message.conv = conv;
    message.order = order;
    messages.put(message);
    const conversation = c ?? newConversation(conv);
    if (!conversation.last || conversation.last.order === order) {
      conversation.last = previewOf(message);
      tx.objectStore(CONVERSATIONS).put(conversation);
    }
    return { message, conversation };
  });
}

/**
 * The n latest messages of conv, oldest first, before order beforeOrder
 * when given (the page before the one shown); more: whether older ones exist.
 */
export function lastPage(db: IDBDatabase, conv: string, n: number, beforeOrder?: number): Promise<{ messages: MessageRecord[]; more: boolean }> {
  if (!(n >= 1)) return Promise.reject(new RangeError(`a page of ${n} messages`));
  return inTransaction(db, [MESSAGES], 'readonly', async (tx) => {
    const store = tx.objectStore(MESSAGES);
    const upper: [string, number] = [conv, beforeOrder ?? Infinity];
    const range = IDBKeyRange.bound([conv, -Infinity], upper, false, beforeOrder !== undefined);
    // A cursor step is a round trip to the browser's database process: find
    // the page's first key with one key cursor (newest first, then skip n),
    // then read the page with one getAll.
    const cursor = store.openKeyCursor(range, 'prev');
    const bound = await new Promise<IDBValidKey | null>((resolve, reject) => {
      let skipped = false;
      cursor.onerror = () => reject(cursor.error);
      cursor.onsuccess = () => {
        const c = cursor.result;
        if (!c || skipped) return resolve(c ? c.primaryKey : null);
        skipped = true;
        c.advance(n);
      };
    });
    const page = bound === null ? range : IDBKeyRange.bound(bound, upper, true, beforeOrder !== undefined);
    const messages = (await request(store.getAll(page))) as MessageRecord[];
    return { messages, more: bound !== null };
  });
}

/** The message that arrived as inbox message seq, if it is stored. */
export function messageBySeq(db: IDBDatabase, seq: number): Promise<MessageRecord | undefined> {
  return inTransaction(db, [MESSAGES], 'readonly', (tx) => request(tx.objectStore(MESSAGES).index(BY_SEQ).get(seq)));
}

/** The message of conv that from calls mid. */
export function messageByMid(db: IDBDatabase, conv: string, from: string, mid: string): Promise<MessageRecord | undefined> {
  return inTransaction(db, [MESSAGES], 'readonly', (tx) => request(tx.objectStore(MESSAGES).index(BY_MID).get([conv, from, mid])));
}

/** Every conversation, in no particular order. */
export function conversations(db: IDBDatabase): Promise<ConversationRecord[]> {
  return inTransaction(db, [CONVERSATIONS], 'readonly', (tx) => request(tx.objectStore(CONVERSATIONS).getAll()));
}

export function getConversation(db: IDBDatabase, conv: string): Promise<ConversationRecord | undefined> {
  return inTransaction(db, [CONVERSATIONS], 'readonly', (tx) => request(tx.objectStore(CONVERSATIONS).get(conv)));
}

/** Stores c whole, replacing the record of c.conv. */
export function setConversation(db: IDBDatabase, c: ConversationRecord): Promise<void> {
  return inTransaction(db, [CONVERSATIONS], 'readwrite', async (tx) => void tx.objectStore(CONVERSATIONS).put(c));
}

/**
 * Changes conv's record in place (created as newConversation(conv) when
 * absent); change returning false writes nothing. Answers the record.
 */
export function updateConversation(db: IDBDatabase, conv: string, change: (c: ConversationRecord) => void | boolean): Promise<ConversationRecord> {
  return inTransaction(db, [CONVERSATIONS], 'readwrite', async (tx) => {
    const store = tx.objectStore(CONVERSATIONS);
    const c = ((await request(store.get(conv))) as ConversationRecord | undefined) ?? newConversation(conv);
    if (change(c) !== false) {
      c.conv = conv;
      store.put(c);
    }
    return c;
  });
}

/** Deletes a conversation and every message of it. */
export function deleteConversation(db: IDBDatabase, conv: string): Promise<void> {
  return inTransaction(db, [MESSAGES, CONVERSATIONS], 'readwrite', async (tx) => {
    tx.objectStore(MESSAGES).delete(IDBKeyRange.bound([conv, -Infinity], [conv, Infinity]));
    tx.objectStore(CONVERSATIONS).delete(conv);
  });
}

/** The meta keys this module gives a meaning: the inbox cursor, the last order given, the legacy import done. */
export type MetaKey = 'cursor' | 'order' | 'legacyBase' | 'legacyImported' | 'relaying' | `setting:${string}`;

export function getMeta<T>(db: IDBDatabase, key: MetaKey): Promise<T | undefined> {
  return inTransaction(db, [META], 'readonly', (tx) => request(tx.objectStore(META).get(key)));
}

export function setMeta(db: IDBDatabase, key: MetaKey, value: unknown): Promise<void> {
  return inTransaction(db, [META], 'readwrite', async (tx) => void tx.objectStore(META).put(value, key));
}

export function putGroupState<S>(db: IDBDatabase, rec: GroupStateRecord<S>): Promise<void> {
  return inTransaction(db, [GROUPS], 'readwrite', async (tx) => void tx.objectStore(GROUPS).put(rec));
}

/** Every stored state of a group, by version ascending. */
export function groupStates<S>(db: IDBDatabase, group: string): Promise<GroupStateRecord<S>[]> {
  return inTransaction(db, [GROUPS], 'readonly', (tx) => request(tx.objectStore(GROUPS).getAll(IDBKeyRange.bound([group, -Infinity], [group, Infinity]))));
}

/** A group's state of the highest version. */
export async function latestGroupState<S>(db: IDBDatabase, group: string): Promise<GroupStateRecord<S> | undefined> {
  return inTransaction(db, [GROUPS], 'readonly', async (tx) => {
    const c = await request(tx.objectStore(GROUPS).openCursor(IDBKeyRange.bound([group, -Infinity], [group, Infinity]), 'prev'));
    return (c?.value as GroupStateRecord<S> | undefined) ?? undefined;
  });
}

export function putFile(db: IDBDatabase, f: FileRecord): Promise<void> {
  return inTransaction(db, [FILES], 'readwrite', async (tx) => void tx.objectStore(FILES).put(f));
}

export function getFile(db: IDBDatabase, id: string): Promise<FileRecord | undefined> {
  return inTransaction(db, [FILES], 'readonly', (tx) => request(tx.objectStore(FILES).get(id)));
}

export function deleteFile(db: IDBDatabase, id: string): Promise<void> {
  return inTransaction(db, [FILES], 'readwrite', async (tx) => void tx.objectStore(FILES).delete(id));
}

// The layout before: one idb-keyval document per identity, rewritten whole
// on every message. Read once to migrate it, then deleted.

/** A message of the legacy document. */
export interface LegacyMessage {
  id: string;
  mine: boolean;
  body: string;
  ts: number;
  seq?: number;
  state: MessageState;
  doc?: Signed<MessagePayload>;
}

export interface LegacyConversation {
  peer: string;
  messages: LegacyMessage[];
  unread: number;
  withheld?: Envelope[];
}

export interface LegacyHistory {
  cursor: number;
  /** A list; the earliest documents held an object keyed by peer. */
  conversations: LegacyConversation[] | Record<string, LegacyConversation>;
}

/** The idb-keyval key of a handle's legacy document. */
export const historyKey = (handle: string) => `history:${handle}`;

/** Where the legacy document is: idb-keyval's default store in the page, a Map in tests. */
export interface LegacyStore {
  get(key: string): Promise<LegacyHistory | undefined>;
  del(key: string): Promise<void>;
}

function legacyConversations(h: LegacyHistory): LegacyConversation[] {
  return Array.isArray(h.conversations) ? h.conversations : Object.values(h.conversations);
}

/** Adds m unless its key is taken (a record written since counts): no error, no abort. */
function addIfAbsent(store: IDBObjectStore, m: MessageRecord): void {
  const r = store.add(m);
  r.onerror = (e) => {
    e.preventDefault(); // a ConstraintError would abort the transaction
    e.stopPropagation();
  };
}

/** The import of a legacy document: started when the first part is stored; rest settles when it is all in and the document deleted. */
export interface LegacyImport {
  rest: Promise<void>;
}

/**
 * Moves me's legacy document, if any, into db, then deletes it. The first
 * transaction stores the conversations, the cursor and the recent latest
 * messages of each conversation, and reserves an order for every message,
 * so the app can show them at once; the rest follows in transactions of
 * chunk messages (rest). Every message's order is fixed by the reservation
 * (meta legacyBase), and a message is added only where its key is free, so
 * an import cut short (a closed tab) runs again from the start without
 * duplicating or overwriting anything, until meta legacyImported is set;
 * after that the document is only deleted. Undefined when there is no
 * document.
 */
export async function migrateLegacy(db: IDBDatabase, me: string, legacy: LegacyStore, opts: { recent?: number; chunk?: number } = {}): Promise<LegacyImport | undefined> {
  const key = historyKey(me);
  const old = await legacy.get(key);
  if (!old) return undefined;
  const recent = opts.recent ?? 50;
  const chunk = opts.chunk ?? 2000;
  // Conversation by conversation, in the document's order: message i gets order base + 1 + i.
  const all: MessageRecord[] = [];
  const convs: ConversationRecord[] = [];
  const ends: number[] = []; // where each conversation's messages end in all
  for (const lc of legacyConversations(old)) {
    if (typeof lc?.peer !== 'string') continue;
    const conv = peerConv(lc.peer);
    const c: ConversationRecord = { ...newConversation(conv), unread: lc.unread ?? 0 };
    if (lc.withheld?.length) c.withheld = lc.withheld;
    for (const lm of lc.messages ?? []) {
      const m: MessageRecord = { conv, order: all.length + 1, id: lm.id, mid: lm.id, from: lm.mine ? me : lc.peer, mine: lm.mine, body: lm.body, ts: lm.ts, state: lm.state, kind: 'text' };
      if (lm.seq !== undefined) m.seq = lm.seq;
      if (lm.doc) m.doc = lm.doc;
      all.push(m);
    }
    convs.push(c);
    ends.push(all.length);
  }
  const first = await inTransaction(db, [MESSAGES, CONVERSATIONS, META], 'readwrite', async (tx) => {
    const meta = tx.objectStore(META);
    const [done, reserved, lastOrder, cursor] = await Promise.all([
      request(meta.get('legacyImported')),
      request(meta.get('legacyBase')) as Promise<number | undefined>,
      request(meta.get('order')) as Promise<number | undefined>,
      request(meta.get('cursor')) as Promise<number | undefined>,
    ]);
    if (done) return { done: true, base: 0 };
    const base = reserved ?? lastOrder ?? 0;
    for (const m of all) m.order += base;
    convs.forEach((c, i) => {
      const last = ends[i]! > (ends[i - 1] ?? 0) ? all[ends[i]! - 1] : undefined;
      if (last) c.last = previewOf(last);
    });
    if (reserved === undefined) {
      meta.put(base, 'legacyBase');
      meta.put(base + all.length, 'order');
      meta.put(Math.max(old.cursor ?? 0, cursor ?? 0), 'cursor');
      const store = tx.objectStore(CONVERSATIONS);
      for (const c of convs) store.put(c);
    }
    const messages = tx.objectStore(MESSAGES);
    // The latest of each conversation: the page the app shows first.
    ends.forEach((end, i) => {
      for (let j = Math.max(ends[i - 1] ?? 0, end - recent); j < end; j++) addIfAbsent(messages, all[j]!);
    });
    return { done: false, base };
  });
  const rest = (async () => {
    if (!first.done) {
      for (let i = 0; i < all.length; i += chunk) {
        await inTransaction(db, [MESSAGES], 'readwrite', async (tx) => {
          const messages = tx.objectStore(MESSAGES);
          for (const m of all.slice(i, i + chunk)) addIfAbsent(messages, m);
        });
      }
      await setMeta(db, 'legacyImported', true);
    }
    await legacy.del(key);
  })();
  return { rest };
}
