// Groups (docs/protocol.md, "Groups"): a group's state is a snapshot carried
// whole in every control message; a client takes a snapshot by the four
// numbered rules, keeping the versions it took, so that every member
// converges on one state. The same rules as the Go client (client/groups.go),
// checked against the shared vectors (testdata/vectors.json, "groups").

import { qualify, validName } from './address';
import { encodeB64, sha256, utf8 } from './bytes';
import { validGroupId } from './conversation';
import { canonicalize } from './jcs';

export type GroupOp = 'create' | 'add' | 'remove' | 'leave' | 'rename' | 'promote';
const OPS: readonly string[] = ['create', 'add', 'remove', 'leave', 'rename', 'promote'];

export const MAX_GROUP_MEMBERS = 256;
export const MAX_GROUP_NAME = 64; // characters
/** Versions kept per group: only the state and the one before are ever a parent. */
const MAX_VERSIONS = 16;

/** A snapshot, as received: members this client does not know are kept, and hashed. */
export interface GroupState {
  id: string;
  version: number;
  prev: string;
  name: string;
  members: string[];
  admins: string[];
  by: string;
  op: GroupOp;
  [unknown: string]: unknown;
}

/** A snapshot with its hash, as held. */
export interface HeldState {
  state: GroupState;
  hash: string;
}

/** The versions of one group a client took, ascending and consecutive; the last is the state. */
export interface GroupHistory {
  versions: HeldState[];
}

export class SnapshotDropped extends Error {
  override name = 'SnapshotDropped';
}

/** The snapshot's hash: base64url SHA-256 of its JCS canonical JSON (every member, known or not). */
export async function groupHash(s: GroupState): Promise<string> {
  return encodeB64(await sha256(utf8(canonicalize(s))));
}

export const newGroupId = () => encodeB64(crypto.getRandomValues(new Uint8Array(16)));

const sortedSet = (hs: string[]) => [...new Set(hs)].sort();
const isMember = (s: GroupState, h: string) => s.members.includes(h);
const isAdmin = (s: GroupState, h: string) => s.admins.includes(h);
const sameList = (a: string[], b: string[]) => a.length === b.length && a.every((x, i) => x === b[i]);

function checkHandles(what: string, hs: unknown, max: number): asserts hs is string[] {
  if (!Array.isArray(hs) || hs.length < 1 || hs.length > max) throw new SnapshotDropped(`malformed: ${what} are not 1 to ${max}`);
  hs.forEach((h, i) => {
    if (!validName(h)) throw new SnapshotDropped(`malformed: ${what}: ${JSON.stringify(h).slice(0, 40)} is not a handle or address`);
    if (i > 0 && !(hs[i - 1] < h)) throw new SnapshotDropped(`malformed: ${what} are not sorted and distinct`);
  });
}

/** Checks a snapshot on its own (GroupState.Check in the Go client); throws SnapshotDropped. */
export function checkState(raw: unknown): GroupState {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new SnapshotDropped('malformed: not an object');
  const s = raw as Record<string, unknown>;
  if (!validGroupId(s.id)) throw new SnapshotDropped('malformed: the group id is not 16 bytes of base64url');
  const v = s.version;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw new SnapshotDropped('malformed: version out of range');
  if (typeof s.prev !== 'string' || typeof s.op !== 'string' || !OPS.includes(s.op)) throw new SnapshotDropped('malformed: prev or op');
  if (v === 1 && (s.prev !== '' || s.op !== 'create')) throw new SnapshotDropped('malformed: version 1 must be a create with an empty prev');
  if (v > 1 && s.op === 'create') throw new SnapshotDropped(`malformed: version ${v} is a create`);
  if (v > 1 && !/^[A-Za-z0-9_-]{43}$/.test(s.prev)) throw new SnapshotDropped('malformed: prev is not a base64url SHA-256');
  if (typeof s.name !== 'string') throw new SnapshotDropped('malformed: no name');
  const n = [...s.name].length;
  if (n < 1 || n > MAX_GROUP_NAME || /[\ud800-\udfff]/.test(s.name.replace(/[\ud800-\udbff][\udc00-\udfff]/g, ''))) throw new SnapshotDropped(`malformed: the name is not 1 to ${MAX_GROUP_NAME} characters`);
  checkHandles('members', s.members, MAX_GROUP_MEMBERS);
  checkHandles('admins', s.admins, s.members.length);
  for (const a of s.admins) if (!s.members.includes(a)) throw new SnapshotDropped(`malformed: admin ${a} is not a member`);
  if (!validName(s.by)) throw new SnapshotDropped('malformed: by is not a handle or address');
  return s as GroupState;
}

/**
 * A snapshot written at writerDomain in the reader's form (docs/protocol.md,
 * "Conversations across servers"): members, admins and by qualified with
 * the writer's domain, an address at own bare; the lists sorted again.
 * Its hash stays the one of the bytes as carried. An address at own is the
 * bare handle whoever wrote it, a writer of this server included.
 */
export function qualifyState(s: GroupState, writerDomain: string, own: string): GroupState {
  const q = (n: string) => qualify(n, writerDomain, own);
  const members = sortedSet(s.members.map(q));
  const admins = sortedSet(s.admins.map(q));
  if (members.length !== s.members.length || admins.length !== s.admins.length) throw new SnapshotDropped('malformed: members name one person twice');
  const by = q(s.by);
  // A writer of this server changes only where it names this server's people by address.
  if (by === s.by && sameList(members, s.members) && sameList(admins, s.admins)) return s;
  return { ...s, members, admins, by };
}

/** Rule 3: an admin of the parent may change anything; a member who is not may only leave. */
function allowed(parent: GroupState, from: string, t: GroupState): void {
  if (!isMember(parent, from)) throw new SnapshotDropped(`${from} is not a member of version ${parent.version}`);
  if (isAdmin(parent, from)) return;
  const without = parent.members.filter((m) => m !== from);
  if (t.op !== 'leave' || t.name !== parent.name || !sameList(t.admins, parent.admins) || !sameList(t.members, without)) {
    throw new SnapshotDropped(`${from} is not an admin of version ${parent.version} and may only leave`);
  }
}

/** A client's groups: every version it took, by group id. */
export class Groups {
  readonly histories = new Map<string, GroupHistory>();

  /**
   * self: this client's handle; domain: its server's, against which the
   * names of snapshots written elsewhere are qualified.
   */
  constructor(
    readonly self: string,
    histories?: Iterable<[string, GroupHistory]>,
    readonly domain = '',
  ) {
    for (const [id, h] of histories ?? []) if (h.versions.length) this.histories.set(id, h);
  }

  /** The state this client holds (which may no longer list it), or undefined. */
  state(id: string): GroupState | undefined {
    return this.histories.get(id)?.versions.at(-1)?.state;
  }

  /** The state held with its hash (of the snapshot as carried): what the next version's prev names. */
  held(id: string): HeldState | undefined {
    return this.histories.get(id)?.versions.at(-1);
  }

  /** The groups whose state lists this client: it shows nothing of the others. */
  list(): GroupState[] {
    return [...this.histories.values()].map((h) => h.versions.at(-1)!.state).filter((s) => isMember(s, this.self));
  }

  /** Whether a group message from sender is shown: the client and the sender are members. */
  accepts(groupId: string, sender: string): boolean {
    const s = this.state(groupId);
    return !!s && isMember(s, this.self) && isMember(s, sender);
  }

  /**
   * Takes snapshot t received from `from` (a name in this client's form),
   * written at writerDomain (this client's own by default), by rules 1 to
   * 4; throws SnapshotDropped saying why when it is dropped. Returns
   * whether the state changed.
   */
  async take(from: string, raw: unknown, writerDomain = this.domain): Promise<boolean> {
    const carried = checkState(raw);
    const t = qualifyState(carried, writerDomain, this.domain);
    if (t.by !== from) throw new SnapshotDropped(`by ${t.by}, but sent by ${from}`);
    const held: HeldState = { state: t, hash: await groupHash(carried) };
    const h = this.histories.get(t.id);
    if (!h) {
      // Rule 1: a group the client does not know; it was added.
      if (!isMember(t, this.self)) throw new SnapshotDropped(`a group ${this.self} does not know, which does not list it`);
      this.histories.set(t.id, { versions: [held] });
      return true;
    }
    try {
      return takeKnown(h, from, held);
    } catch (e) {
      // A client no longer in its state (removed, or left) takes a later
      // snapshot that lists it, as one that knew nothing would: it was
      // added again from a state it never received (as the Go client).
      const cur = h.versions.at(-1)!.state;
      if (!isMember(cur, this.self) && t.version > cur.version && isMember(t, this.self)) {
        h.versions = [held];
        return true;
      }
      throw e;
    }
  }
}

/** Rules 2 to 4 for a group the client knows. */
function takeKnown(h: GroupHistory, from: string, t: HeldState): boolean {
  const cur = h.versions.at(-1)!;
  const n = cur.state.version;
  const first = h.versions[0]!.state.version;
  // Rule 2: t builds on the version before it, as this client took it.
  const parent = h.versions[t.state.version - 1 - first];
  if (!parent || parent.hash !== t.state.prev) throw new SnapshotDropped(`version ${t.state.version} does not build on a version held (the state is version ${n})`);
  // Rule 3.
  allowed(parent.state, from, t.state);
  // Rule 4.
  if (t.state.version === n + 1) {
    h.versions.push(t);
    if (h.versions.length > MAX_VERSIONS) h.versions.splice(0, h.versions.length - MAX_VERSIONS);
    return true;
  }
  if (t.state.version === n) {
    if (t.hash === cur.hash) return false;
    // The smaller hash wins, whichever arrived first; nothing is held above
    // n, so nothing built on the loser is.
    if (t.hash < cur.hash) {
      h.versions[h.versions.length - 1] = t;
      return true;
    }
    throw new SnapshotDropped(`version ${n} lost to the state's smaller hash`);
  }
  throw new SnapshotDropped(`version ${t.state.version} is older than the state, version ${n}`);
}

// --- making changes ---------------------------------------------------------

/** Version 1 of a new group: the author its only admin. */
export function newGroup(author: string, name: string, others: string[]): GroupState {
  return checkState({ id: newGroupId(), version: 1, prev: '', name, members: sortedSet([author, ...others]), admins: [author], by: author, op: 'create' });
}

/**
 * The version after s by author, checked as a member would check it (so an
 * author cannot send what its members would drop). prev is the hash of s as
 * it was carried (Groups.held), which differs from s's own when s was
 * written on another server; by default s's.
 */
export async function nextState(s: GroupState, author: string, op: Exclude<GroupOp, 'create'>, change: (next: { name: string; members: string[]; admins: string[] }) => void, prev?: string): Promise<GroupState> {
  const fields = { name: s.name, members: [...s.members], admins: [...s.admins] };
  change(fields);
  const next = checkState({
    id: s.id,
    version: s.version + 1,
    prev: prev ?? (await groupHash(s)),
    name: fields.name,
    members: sortedSet(fields.members),
    admins: sortedSet(fields.admins),
    by: author,
    op,
  });
  allowed(s, author, next);
  return next;
}

export const addMembers = (s: GroupState, by: string, handles: string[], prev?: string) => nextState(s, by, 'add', (n) => n.members.push(...handles), prev);
export const removeMember = (s: GroupState, by: string, handle: string, prev?: string) =>
  nextState(
    s,
    by,
    'remove',
    (n) => {
      n.members = n.members.filter((m) => m !== handle);
      n.admins = n.admins.filter((m) => m !== handle);
    },
    prev,
  );
export const renameGroup = (s: GroupState, by: string, name: string, prev?: string) => nextState(s, by, 'rename', (n) => void (n.name = name), prev);
export const promoteMember = (s: GroupState, by: string, handle: string, prev?: string) => nextState(s, by, 'promote', (n) => n.admins.push(handle), prev);

/** Leaving: a member who is not an admin only leaves; the last admin names a successor in the same snapshot. */
export function leaveGroup(s: GroupState, me: string, successor?: string, prev?: string): Promise<GroupState> {
  return nextState(
    s,
    me,
    'leave',
    (n) => {
      n.members = n.members.filter((m) => m !== me);
      if (!isAdmin(s, me)) return;
      n.admins = n.admins.filter((m) => m !== me);
      if (n.admins.length === 0) {
        const next = successor ?? n.members[0];
        if (next) n.admins.push(next);
      }
    },
    prev,
  );
}

/** Who a control message goes to: the members before and after it (the author's sync copy is added by the sender). */
export const controlRecipients = (before: GroupState | undefined, after: GroupState) => sortedSet([...(before?.members ?? []), ...after.members]);
