// The chat state of one identity: conversations, history and the inbox
// cursor. Every envelope, from the stream or the poll, goes through ingest(),
// which decrypts it, stores it and then acknowledges it, so the server
// deletes only what is kept here.

import { del, get, set } from 'idb-keyval';
import { SvelteMap } from 'svelte/reactivity';
import * as api from './api';
import type { Identity } from './keys';
import { claimedSender, InvalidMessage, newMessageId, newMessageOf, openEnvelopeRaw, type Envelope, type MessageKeys, type MessagePayload, type PublicUser } from './protocol';
import {
  applyReaction,
  applyReceipt,
  conversationOf,
  deleteAllowed,
  deleteContent,
  envelopeId,
  groupContent,
  InvalidPlaintext,
  parsePlaintext,
  plaintextFor,
  reactionContent,
  receiptContents,
  textContent,
  type Attachment,
  type Content,
  type ConvPlaintext,
  type ReceiptKind,
  type Reply,
} from './conversation';
import { controlRecipients, Groups, newGroup, SnapshotDropped, type GroupState } from './groups';
import { decryptAttachment } from './attachments';
import { openTyping, sealTyping, TYPING_SHOWN_MS, TypingBoard, TypingSender } from './typing';
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
  postBatch: (who: api.Signer, docs: Signed<MessagePayload>[]) => Promise<{ receipts: api.Receipt[] }>;
  postTyping: (who: api.Signer, to: { to: string; ct: string }[]) => Promise<unknown>;
  getBlob: (id: string) => Promise<Uint8Array<ArrayBuffer>>;
  /** Attachments kept on this device, decrypted, by blob id. */
  saveFile: (me: string, blob: string, bytes: Uint8Array<ArrayBuffer>) => Promise<void>;
  deleteFile: (me: string, blob: string) => Promise<void>;
  loadFile: (me: string, blob: string) => Promise<Uint8Array<ArrayBuffer> | undefined>;
  /** Settings kept on this device. */
  loadSetting: (key: string) => Promise<unknown>;
  saveSetting: (key: string, value: unknown) => Promise<void>;
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
  postBatch: api.postBatch,
  postTyping: api.postTyping,
  getBlob: api.getBlob,
  saveFile: (me, blob, bytes) => set(fileKey(me, blob), bytes),
  deleteFile: (me, blob) => del(fileKey(me, blob)),
  loadFile: (me, blob) => get(fileKey(me, blob)),
  loadSetting: (k) => get(k),
  saveSetting: (k, v) => set(k, v),
  inbox: api.inbox,
  ack: api.ack,
  load: (k) => get<History>(k),
  save: (k, h) => set(k, h),
  now: () => Math.floor(Date.now() / 1000),
  trust: { webfinger: api.webfinger, keyLog: (origin, pid, from) => api.keyLog<Signed<KeyPayload>>(origin, pid, from) },
  loadPins,
  savePins,
};

/** The IndexedDB key of an attachment kept on this device, decrypted. */
export const fileKey = (me: string, blob: string) => `file:${me}:${blob}`;

/** The conversation key of a group: handles never hold ':'. */
export const groupKey = (id: string) => 'g:' + id;
export const groupIdOf = (conv: string) => (conv.startsWith('g:') ? conv.slice(2) : undefined);

const OP_WORDS: Record<string, string> = { create: 'created the group', add: 'added', remove: 'removed', leave: 'left', rename: 'renamed the group', promote: 'made admin' };

/** One line for a group change: who did what, from the states before and after. */
export function describeChange(before: GroupState | undefined, after: GroupState): string {
  const added = after.members.filter((m) => !before?.members.includes(m));
  const gone = (before?.members ?? []).filter((m) => !after.members.includes(m));
  const promoted = after.admins.filter((m) => !before?.admins.includes(m));
  switch (after.op) {
    case 'create':
      return `${after.by} created "${after.name}"`;
    case 'add':
      return `${after.by} added ${added.join(', ')}`;
    case 'remove':
      return `${after.by} removed ${gone.join(', ')}`;
    case 'leave':
      return `${after.by} left`;
    case 'rename':
      return `${after.by} renamed the group to "${after.name}"`;
    case 'promote':
      return `${after.by} made ${promoted.join(', ') || 'someone'} admin`;
  }
  return `${after.by} ${OP_WORDS[after.op] ?? 'changed the group'}`;
}

/** What a conversation holds of a peer's messages while their keys are in question, in bytes of ciphertext. */
export const MAX_WITHHELD_BYTES = 8 << 20;

/** Why a peer's keys are in question: changed (the person may accept them) or not what the peer signed. */
export type KeyProblem = KeyChanged | KeyDocumentMismatch;

const isKeyProblem = (e: unknown): e is KeyProblem => e instanceof KeyChanged || e instanceof KeyDocumentMismatch;

const pageVisible = () => typeof document === 'undefined' || document.visibilityState === 'visible';

/** A receipt waiting to be sent: to one sender, in one conversation. */
interface PendingReceipt {
  to: string;
  group?: string;
  kind: ReceiptKind;
  mids: string[];
}

export interface SendExtra {
  reply?: Reply;
  attachments?: Attachment[];
  /** Blob ids the message names (attachments and thumbnails). */
  blobs?: string[];
}

export class Chat {
  /** Conversations by peer (or "g:<group id>"): a Map, since a handle may be any name, "constructor" and "__proto__" too. */
  readonly conversations = new SvelteMap<string, Conversation>();
  status = $state<LinkStatus>('connecting');
  /** The open conversation: its messages are read as they arrive. */
  activePeer = $state<string | null>(null);
  /** Whether read receipts are sent and shown (a setting of this device). */
  readReceipts = $state(true);
  /** Who types where, by conversation key (kept current for 6 s after each note). */
  readonly typing = new SvelteMap<string, string[]>();
  cursor = 0;
  /**
   * Peers whose keys are in question: their messages are held, and none
   * is sent to them, until the person compares safety numbers and accepts
   * the new keys (docs/protocol.md, "Checking keys").
   */
  readonly keyProblems = new SvelteMap<string, KeyProblem>();
  groups: Groups;

  private acked = 0;
  private users = new Map<string, Promise<PublicUser>>();
  private pins = new Map<string, Pin>();
  private chain: Promise<unknown> = Promise.resolve();
  private pendingReceipts = new Map<string, PendingReceipt>();
  private typingBoard = new TypingBoard();
  private typingSenders = new Map<string, TypingSender>();
  private ownDevices: { at: number; many: Promise<boolean> } | null = null;

  constructor(
    readonly me: Identity,
    private readonly deps: ChatDeps = browserDeps,
  ) {
    this.groups = new Groups(me.handle);
  }

  get keys(): MessageKeys {
    return { handle: this.me.handle, server: this.me.server, signing: this.me.signing, enc: this.me.enc };
  }

  /** Conversations, the most recent first; groups this client is not in are not shown. */
  get list(): Conversation[] {
    const last = (c: Conversation) => c.messages.at(-1)?.ts ?? 0;
    return [...this.conversations.values()].filter((c) => !c.group || c.group.member).sort((a, b) => last(b) - last(a) || a.peer.localeCompare(b.peer));
  }

  /** The name a conversation is shown under. */
  title(key: string): string {
    const c = this.conversations.get(key);
    return c?.group ? c.group.name : key;
  }

  async load(): Promise<void> {
    this.pins = await this.deps.loadPins(this.me.handle);
    const h = await this.deps.load(historyKey(this.me.handle));
    if (h) {
      this.cursor = this.acked = h.cursor;
      this.conversations.clear();
      for (const [peer, c] of conversationsOf(h)) this.conversations.set(peer, reactive(c));
      this.groups = new Groups(this.me.handle, h.groups ?? []);
    }
    const rr = await this.deps.loadSetting(`settings:${this.me.handle}:read-receipts`).catch(() => undefined);
    this.readReceipts = rr !== false;
  }

  async setReadReceipts(on: boolean): Promise<void> {
    this.readReceipts = on;
    await this.deps.saveSetting(`settings:${this.me.handle}:read-receipts`, on);
  }

  private persist(): Promise<void> {
    return this.deps.save(historyKey(this.me.handle), {
      cursor: this.cursor,
      conversations: [...this.conversations.values()].map((c) => $state.snapshot(c) as Conversation),
      groups: [...this.groups.histories].map(([id, h]) => [id, structuredClone(h)]),
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
    void this.flushReceipts();
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

  /** The handle who wrote a message of conversation c. */
  authorOf(c: Conversation, m: ChatMessage): string {
    return m.from ?? (m.mine ? this.me.handle : c.peer);
  }

  /** Who a conversation's messages go to: the other person, or the group's other members. */
  recipients(conv: string): string[] {
    const gid = groupIdOf(conv);
    if (!gid) return [conv];
    const s = this.groups.state(gid);
    if (!s || !s.members.includes(this.me.handle)) return [];
    return s.members.filter((m) => m !== this.me.handle);
  }

  /** Marks the conversation read here, and tells its senders (when read receipts are on). */
  markRead(peer: string): void {
    const c = this.conversations.get(peer);
    if (c && c.unread) c.unread = 0;
    if (c && this.readReceipts) {
      for (const m of c.messages) {
        if (m.mine || m.kind === 'note' || m.deleted || m.receiptSent === 'read' || m.state !== 'received') continue;
        m.receiptSent = 'read';
        this.queueReceipt(this.authorOf(c, m), c.group?.id, 'read', m.id);
      }
    }
    void this.serial(() => this.persist());
    void this.flushReceipts();
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
      await this.persist();
      await this.acknowledge();
    });
    void this.flushReceipts();
  }

  /**
   * Verifies, opens and files one envelope; false when it should be tried
   * again later (the server could not say who sent it, or an attachment
   * could not be fetched). An envelope from a peer whose keys are in
   * question is held in its conversation, to be opened once the person
   * accepts the new keys.
   */
  private async open(env: Envelope): Promise<boolean> {
    let from: string | undefined;
    try {
      from = claimedSender(env);
      const raw = await openEnvelopeRaw(env, this.keys, await this.user(from));
      const p = env.message.payload;
      const pt = parsePlaintext(raw, { from: p.from, to: p.to, id: p.id });
      return await this.apply(pt, env);
    } catch (e) {
      if (isKeyProblem(e) && from !== undefined) {
        this.withhold(from, env);
        return true;
      }
      // Not being able to ask the server who sent it is worth a retry;
      // a message that does not verify or open never will be.
      if (e instanceof api.ApiError && e.code !== 'unknown_handle' && e.code !== 'unknown_blob') return false;
      console.warn('dropping an envelope that cannot be read:', e instanceof InvalidMessage || e instanceof InvalidPlaintext || e instanceof api.ApiError ? e.message : e);
    }
    return true;
  }

  /** Files one plaintext in its conversation (docs/protocol.md, "Conversations"). */
  private async apply(pt: ConvPlaintext, env: Envelope): Promise<boolean> {
    const me = this.me.handle;
    const mine = pt.from === me;
    if (pt.kind === 'group') {
      const gid = pt.group!.id;
      const before = this.groups.state(gid);
      try {
        if (!(await this.groups.take(pt.from, pt.state))) return true;
      } catch (e) {
        if (e instanceof SnapshotDropped) {
          console.warn(`group snapshot from ${pt.from} dropped: ${e.message}`);
          return true;
        }
        throw e;
      }
      this.showGroupChange(before, this.groups.state(gid)!, pt.mid, pt.ts, mine);
      return true;
    }
    const key = conversationOf(pt, me);
    if (key === null) return true;
    // Group messages only from members, and only in a group this client is in.
    if (pt.group && !this.groups.accepts(pt.group.id, pt.from)) return true;
    const c = this.conversation(key);
    switch (pt.kind) {
      case 'text': {
        if (c.messages.some((m) => m.id === pt.mid && this.authorOf(c, m) === pt.from)) return true;
        // Every attachment is kept here before the message is acknowledged.
        for (const a of pt.attachments ?? []) {
          await this.fetchAttachment(a.blob, a.key, a.sha256);
          if (a.thumb) await this.fetchAttachment(a.thumb.blob, a.thumb.key, a.thumb.sha256);
        }
        const m: ChatMessage = { id: pt.mid, from: pt.from, mine, body: pt.body, ts: pt.ts, seq: env.seq, state: mine ? 'sent' : 'received' };
        if (pt.reply) m.reply = pt.reply;
        if (pt.attachments) m.attachments = pt.attachments;
        c.messages.push(m);
        if (!mine) {
          if (this.activePeer !== key || !pageVisible()) c.unread++;
          m.receiptSent = 'delivered';
          this.queueReceipt(pt.from, pt.group?.id, 'delivered', pt.mid);
          if (this.activePeer === key && pageVisible() && this.readReceipts) {
            m.receiptSent = 'read';
            this.queueReceipt(pt.from, pt.group?.id, 'read', pt.mid);
          }
        }
        return true;
      }
      case 'receipt': {
        if (mine) {
          // Sent by another of this identity's devices: what it read is read here.
          if (pt.receipt === 'read') {
            let read = 0;
            for (const m of c.messages) {
              if (m.mine || !pt.mids!.includes(m.id) || m.receiptSent === 'read') continue;
              m.receiptSent = 'read';
              read++;
            }
            c.unread = Math.max(0, c.unread - read);
          }
          return true;
        }
        for (const m of c.messages) if (m.mine && pt.mids!.includes(m.id)) applyReceipt((m.receipts ??= {}), pt.from, pt.receipt!);
        return true;
      }
      case 'reaction': {
        const m = this.find(c, pt.target!.from, pt.target!.mid);
        if (m && !m.deleted) applyReaction((m.reactions ??= {}), pt.from, pt.emoji!);
        return true;
      }
      case 'delete': {
        if (!deleteAllowed(pt.from, pt.target!)) return true;
        const m = this.find(c, pt.target!.from, pt.target!.mid);
        if (m) await this.markDeleted(m);
        return true;
      }
    }
    return true;
  }

  private find(c: Conversation, from: string, mid: string): ChatMessage | undefined {
    return c.messages.find((m) => m.id === mid && m.kind !== 'note' && this.authorOf(c, m) === from);
  }

  private async markDeleted(m: ChatMessage): Promise<void> {
    for (const a of m.attachments ?? []) {
      await this.deps.deleteFile(this.me.handle, a.blob).catch(() => {});
      if (a.thumb) await this.deps.deleteFile(this.me.handle, a.thumb.blob).catch(() => {});
    }
    m.deleted = true;
    m.body = '';
    delete m.attachments;
    delete m.reply;
    delete m.reactions;
  }

  /** Downloads a blob, checks it, decrypts it and keeps it on this device. */
  private async fetchAttachment(blob: string, key: string, sha256: string): Promise<void> {
    const bytes = await this.deps.getBlob(blob);
    let plain: Uint8Array<ArrayBuffer>;
    try {
      plain = await decryptAttachment(bytes, key, sha256);
    } catch (e) {
      // Altered or not the one named: never shown; the message still is.
      console.warn(`attachment ${blob}: ${(e as Error).message}`);
      return;
    }
    await this.deps.saveFile(this.me.handle, blob, plain);
  }

  private showGroupChange(before: GroupState | undefined, after: GroupState, mid: string, ts: number, mine: boolean): void {
    const c = this.conversation(groupKey(after.id));
    c.group = { id: after.id, name: after.name, member: after.members.includes(this.me.handle) };
    if (!c.messages.some((m) => m.kind === 'note' && m.id === mid)) {
      c.messages.push({ id: mid, from: after.by, mine, kind: 'note', body: describeChange(before, after), ts, state: mine ? 'sent' : 'received' });
    }
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

  // --- sending ---------------------------------------------------------------

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
    const peer = groupIdOf(conv) ? undefined : conv;
    return Promise.all(to.map(async (r) => newMessageOf(this.keys, await this.user(r), envelopeId(c.mid, r, batch), plaintextFor(c, me, r, ts, peer), ts, blobs)));
  }

  /** Posts documents: one message alone, more as one group send. */
  private async post(docs: Signed<MessagePayload>[]): Promise<void> {
    if (docs.length === 0) return;
    if (docs.length === 1 && !docs[0]!.payload.id.includes(':')) await this.deps.postMessage(docs[0]!);
    else await this.deps.postBatch(this.me, docs);
  }

  /** Sends what is not shown as a message of its own (receipts, reactions, deletions, group changes). */
  private async sendControl(conv: string, c: Content, recipients: string[]): Promise<void> {
    await this.post(await this.documents(conv, c, recipients));
  }

  async send(peer: string, body: string, extra: SendExtra = {}): Promise<void> {
    const c = this.conversation(peer);
    const ts = this.deps.now();
    const msg: ChatMessage = { id: newMessageId(), from: this.me.handle, mine: true, body, ts, state: 'pending' };
    if (extra.reply) msg.reply = extra.reply;
    if (extra.attachments?.length) msg.attachments = extra.attachments;
    c.messages.push(msg);
    await this.deliver(peer, c.messages.length - 1, extra.blobs ?? []);
  }

  /** Shows an own message before its attachments are uploaded; finish() sends it. */
  draft(peer: string, body: string, reply?: Reply): ChatMessage {
    const c = this.conversation(peer);
    const msg: ChatMessage = { id: newMessageId(), from: this.me.handle, mine: true, body, ts: this.deps.now(), state: 'pending', progress: 0 };
    if (reply) msg.reply = reply;
    c.messages.push(msg);
    return c.messages.at(-1)!;
  }

  async finish(peer: string, id: string, attachments: Attachment[], blobs: string[]): Promise<void> {
    const c = this.conversation(peer);
    const i = c.messages.findIndex((m) => m.mine && m.id === id);
    if (i < 0) return;
    const m = c.messages[i]!;
    m.attachments = attachments;
    delete m.progress;
    await this.deliver(peer, i, blobs);
  }

  failDraft(peer: string, id: string): void {
    const m = this.conversations.get(peer)?.messages.find((x) => x.mine && x.id === id);
    if (m) {
      m.state = 'failed';
      delete m.progress;
    }
  }

  async retry(peer: string, id: string): Promise<void> {
    const c = this.conversations.get(peer);
    const i = c?.messages.findIndex((m) => m.mine && m.id === id) ?? -1;
    if (!c || i < 0 || c.messages[i]!.state !== 'failed') return;
    const m = c.messages[i]!;
    m.state = 'pending';
    const blobs = (m.attachments ?? []).flatMap((a) => (a.thumb ? [a.blob, a.thumb.blob] : [a.blob]));
    await this.deliver(peer, i, blobs);
  }

  private async deliver(peer: string, index: number, blobs: string[]): Promise<void> {
    const c = this.conversation(peer);
    const m = c.messages[index]!;
    try {
      if (m.doc && !m.docs) m.docs = [m.doc];
      delete m.doc;
      // A retry posts the same documents: the server answers the original
      // receipts if the first try got through. Documents too old to be
      // accepted are signed again under a new id.
      if (!m.docs || this.deps.now() - (m.docs[0]?.payload.ts ?? 0) > 240) {
        if (m.docs) m.id = newMessageId();
        const gid = groupIdOf(peer);
        const recipients = this.recipients(peer);
        if (recipients.length === 0) throw new Error('you are not in this group');
        m.docs = await this.documents(peer, textContent(m.id, m.body, { group: gid, reply: m.reply, attachments: m.attachments }), recipients, blobs);
      }
      await this.post(m.docs);
      m.state = 'sent';
      delete m.docs;
    } catch (e) {
      m.state = 'failed';
      throw e;
    } finally {
      await this.serial(() => this.persist());
    }
  }

  /** An attachment kept on this device (decrypted), or undefined. */
  file(blob: string): Promise<Uint8Array<ArrayBuffer> | undefined> {
    return this.deps.loadFile(this.me.handle, blob);
  }

  /** Keeps a file sent from here, so its own message shows it. */
  keepFile(blob: string, bytes: Uint8Array<ArrayBuffer>): Promise<void> {
    return this.deps.saveFile(this.me.handle, blob, bytes);
  }

  // --- receipts, reactions, deletion ------------------------------------------

  private queueReceipt(to: string, group: string | undefined, kind: ReceiptKind, mid: string): void {
    if (to === this.me.handle) return;
    const k = `${to}\n${group ?? ''}\n${kind}`;
    const p = this.pendingReceipts.get(k) ?? { to, group, kind, mids: [] };
    p.mids.push(mid);
    this.pendingReceipts.set(k, p);
  }

  private receiptChain: Promise<void> = Promise.resolve();

  /** Sends the receipts queued, batching mids per sender, one flush at a time. */
  private flushReceipts(): Promise<void> {
    this.receiptChain = this.receiptChain.then(() => this.sendReceipts());
    return this.receiptChain;
  }

  /** Resolves once the receipts queued so far went out (or failed). */
  receiptsSent(): Promise<void> {
    return this.receiptChain;
  }

  /** A failure is dropped: receipts are a courtesy, not worth holding the inbox for. */
  private async sendReceipts(): Promise<void> {
    const pending = [...this.pendingReceipts.values()];
    this.pendingReceipts.clear();
    for (const p of pending) {
      const conv = p.group ? groupKey(p.group) : p.to;
      for (const c of receiptContents(newMessageId, p.kind, p.mids, p.group)) {
        await this.sendControl(conv, c, [p.to]).catch((e: unknown) => console.warn(`receipt to ${p.to} not sent:`, (e as Error).message));
      }
    }
  }

  /** Reacts to a message with emoji, or takes the reaction back when it is the one given already. */
  async react(conv: string, m: ChatMessage, emoji: string): Promise<void> {
    const c = this.conversation(conv);
    const target = { from: this.authorOf(c, m), mid: m.id };
    const mineNow = m.reactions?.[this.me.handle];
    const next = mineNow === emoji ? '' : emoji;
    applyReaction((m.reactions ??= {}), this.me.handle, next);
    await this.serial(() => this.persist());
    await this.sendControl(conv, reactionContent(newMessageId(), target, next, groupIdOf(conv)), this.recipients(conv));
  }

  /** Deletes an own message for everyone. */
  async deleteForEveryone(conv: string, m: ChatMessage): Promise<void> {
    if (!m.mine) throw new Error('only your own messages can be deleted for everyone');
    await this.sendControl(conv, deleteContent(newMessageId(), { from: this.me.handle, mid: m.id }, groupIdOf(conv)), this.recipients(conv));
    await this.markDeleted(m);
    await this.serial(() => this.persist());
  }

  // --- groups -----------------------------------------------------------------

  /** Creates a group of me and members (checked to exist first), and tells them. */
  async createGroup(name: string, members: string[]): Promise<string> {
    const others = [...new Set(members.map((m) => m.trim().toLowerCase()).filter((m) => m && m !== this.me.handle))];
    await Promise.all(others.map((h) => this.user(h)));
    const state = newGroup(this.me.handle, name.trim(), others);
    await this.changeGroup(undefined, state);
    return groupKey(state.id);
  }

  /**
   * Sends a change made here, in one group send, to the members before and
   * after it, this client included: it takes its own change when it reads
   * it back from its inbox, in the order every member reads it
   * (docs/protocol.md, "Groups").
   */
  async changeGroup(before: GroupState | undefined, next: GroupState): Promise<void> {
    await Promise.all(next.members.filter((m) => m !== this.me.handle).map((h) => this.user(h)));
    await this.sendControl(groupKey(next.id), groupContent(newMessageId(), next), controlRecipients(before, next));
    await this.poll().catch(() => {}); // the stream would bring it too; reading it now shows it at once
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

  private async sendTyping(conv: string, typing: boolean): Promise<void> {
    const gid = groupIdOf(conv);
    try {
      const to = await Promise.all(
        this.recipients(conv).map(async (r) => {
          const u = await this.user(r);
          return { to: r, ct: await sealTyping(u.enc_key, { v: 1, from: this.me.handle, to: r, ts: this.deps.now(), typing, ...(gid ? { group: { id: gid } } : {}) }) };
        }),
      );
      if (to.length) await this.deps.postTyping(this.me, to);
    } catch {
      // A typing note is a hint: one lost is not worth a retry.
    }
  }

  /** A typing event from the stream. */
  async onTyping(e: { from: string; ct: string }): Promise<void> {
    const note = await openTyping({ handle: this.me.handle, enc: this.me.enc }, e);
    if (!note) return;
    const conv = note.group ? groupKey(note.group.id) : note.from;
    if (note.group && !this.groups.accepts(note.group.id, note.from)) return;
    if (!note.group && !this.conversations.has(conv)) return;
    this.typingBoard.note(conv, note.from, note.typing, Date.now());
    this.refreshTyping(conv);
    if (note.typing) setTimeout(() => this.refreshTyping(conv), TYPING_SHOWN_MS + 50);
  }

  private refreshTyping(conv: string): void {
    const who = this.typingBoard.typing(conv, Date.now());
    if (who.length) this.typing.set(conv, who);
    else this.typing.delete(conv);
  }
}
