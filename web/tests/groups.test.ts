import { describe, expect, it } from 'vitest';
import { addMembers, checkState, controlRecipients, groupHash, Groups, leaveGroup, newGroup, promoteMember, removeMember, renameGroup, SnapshotDropped, type GroupState } from '../src/lib/groups';
import { canonicalize } from '../src/lib/jcs';
import { encodeB64, sha256, utf8 } from '../src/lib/bytes';
import { vectors } from './vectors';

async function taken(self: string, ...snaps: GroupState[]): Promise<Groups> {
  const g = new Groups(self);
  for (const s of snaps) await g.take(s.by, s);
  return g;
}

describe('group snapshots', () => {
  it('hashes the JCS canonical JSON, unknown members included', async () => {
    const s = { ...newGroup('alice', 'team', ['bob']), extra: 'x' };
    expect(await groupHash(s)).toBe(encodeB64(await sha256(utf8(canonicalize(s)))));
    expect(await groupHash(s)).not.toBe(await groupHash({ ...s, extra: 'y' }));
  });

  it.each([
    ['an unsorted member list', { members: ['bob', 'alice'] }],
    ['duplicate members', { members: ['alice', 'alice'] }],
    ['an admin who is not a member', { admins: ['carol'] }],
    ['no admin', { admins: [] }],
    ['an empty name', { name: '' }],
    ['a name of 65 characters', { name: 'n'.repeat(65) }],
    ['a version 1 with a prev', { prev: 'x' }],
    ['an unknown op', { op: 'merge' }],
    ['a short id', { id: 'abc' }],
    ['a fractional version', { version: 1.5 }],
  ])('refuses %s', (_, change) => {
    expect(() => checkState({ ...newGroup('alice', 'team', ['bob']), ...change })).toThrow(SnapshotDropped);
  });
});

describe('Groups.take', () => {
  it('rule 1: takes an unknown group that lists it, drops one that does not', async () => {
    const v1 = newGroup('alice', 'team', ['bob']);
    expect(await (await taken('bob', v1)).state(v1.id)).toEqual(v1);
    await expect(new Groups('carol').take('alice', v1)).rejects.toThrow(/does not list/);
  });

  it('drops a snapshot whose by is not its sender', async () => {
    const v1 = newGroup('alice', 'team', ['bob']);
    await expect(new Groups('bob').take('mallory', v1)).rejects.toThrow(SnapshotDropped);
  });

  it('rule 2: drops a snapshot that does not build on a version held', async () => {
    const v1 = newGroup('alice', 'team', ['bob']);
    const g = await taken('bob', v1);
    const v2 = await addMembers(v1, 'alice', ['carol']);
    await expect(g.take('alice', { ...v2, prev: encodeB64(new Uint8Array(32)) })).rejects.toThrow(/does not build/);
    const v3 = await renameGroup(v2, 'alice', 'x');
    await expect(g.take('alice', v3)).rejects.toThrow(/does not build/);
    expect(await g.take('alice', v2)).toBe(true);
    expect(await g.take('alice', v3)).toBe(true);
    expect(g.state(v1.id)!.name).toBe('x');
  });

  it('rule 3: a member who is not an admin may only leave', async () => {
    const v1 = newGroup('alice', 'team', ['bob', 'carol']);
    const g = await taken('carol', v1);
    const rename = { ...(await renameGroup(v1, 'alice', 'mine')), by: 'bob' };
    await expect(g.take('bob', rename)).rejects.toThrow(/may only leave/);
    const leave = await leaveGroup(v1, 'bob');
    expect(await g.take('bob', leave)).toBe(true);
    expect(g.state(v1.id)!.members).toEqual(['alice', 'carol']);
    await expect(nextLeaveChangingName(v1)).rejects.toThrow(/may only leave/);
  });

  it('rule 3: a leaving last admin names another admin', async () => {
    const v1 = newGroup('alice', 'team', ['bob', 'carol']);
    const v2 = await leaveGroup(v1, 'alice', 'carol');
    expect(v2.admins).toEqual(['carol']);
    expect(v2.members).toEqual(['bob', 'carol']);
    const g = await taken('bob', v1, v2);
    expect(g.state(v1.id)!.admins).toEqual(['carol']);
  });

  it('rule 4: of two snapshots of one version the smaller hash wins, whichever came first', async () => {
    const v1 = newGroup('alice', 'team', ['bob', 'carol']);
    const v2 = await promoteMember(v1, 'alice', 'bob');
    // bob and alice remove each other at once.
    const a = await removeMember(v2, 'alice', 'bob');
    const b = await removeMember(v2, 'bob', 'alice');
    const [win, lose] = (await groupHash(a)) < (await groupHash(b)) ? [a, b] : [b, a];
    for (const order of [
      [a, b],
      [b, a],
    ]) {
      const g = await taken('carol', v1, v2);
      for (const s of order) await g.take(s.by, s).catch((e) => expect(e).toBeInstanceOf(SnapshotDropped));
      expect(g.state(v1.id)).toEqual(win);
    }
    // What builds on the loser is dropped.
    const g = await taken('carol', v1, v2, win);
    const onLoser = await renameGroup(lose, lose.by, 'x');
    await expect(g.take(onLoser.by, onLoser)).rejects.toThrow(SnapshotDropped);
  });

  it('drops a snapshot older than the state', async () => {
    const v1 = newGroup('alice', 'team', ['bob']);
    const v2 = await renameGroup(v1, 'alice', 'a');
    const v3 = await renameGroup(v2, 'alice', 'b');
    const g = await taken('bob', v1, v2, v3);
    const oldFork = await renameGroup(v1, 'alice', 'c');
    await expect(g.take('alice', oldFork)).rejects.toThrow(/older/);
  });

  it('shows nothing of a group it was removed from, and accepts messages only from members', async () => {
    const v1 = newGroup('alice', 'team', ['bob', 'carol']);
    const v2 = await removeMember(v1, 'alice', 'carol');
    const g = await taken('carol', v1);
    expect(g.accepts(v1.id, 'bob')).toBe(true);
    await g.take('alice', v2);
    expect(g.list()).toEqual([]);
    expect(g.accepts(v1.id, 'bob')).toBe(false);
    const bob = await taken('bob', v1, v2);
    expect(bob.accepts(v1.id, 'carol')).toBe(false);
    expect(controlRecipients(v1, v2)).toEqual(['alice', 'bob', 'carol']);
  });

  it('refuses to make a change its author may not make', async () => {
    const v1 = newGroup('alice', 'team', ['bob']);
    await expect(addMembers(v1, 'bob', ['carol'])).rejects.toThrow(SnapshotDropped);
    await expect(removeMember(v1, 'alice', 'alice')).rejects.toThrow(SnapshotDropped);
  });
});

async function nextLeaveChangingName(v1: GroupState) {
  const g = await taken('alice', v1);
  const leave = { ...(await leaveGroup(v1, 'carol')), name: 'other' };
  return g.take('carol', leave);
}

describe('group vectors (testdata/vectors.json, shared with the Go client)', () => {
  it.each(vectors.groups.map((c) => [c.name, c] as const))('%s', async (_, c) => {
    const g = new Groups(c.client);
    for (const [i, input] of c.inputs.entries()) {
      expect(canonicalize(input.state), `input ${i} canonical`).toBe(input.canonical);
      expect(await groupHash(input.state as GroupState), `input ${i} hash`).toBe(input.hash);
      const taken = await g.take(input.from, structuredClone(input.state)).then(
        () => true,
        (e: unknown) => {
          expect(e).toBeInstanceOf(SnapshotDropped);
          return false;
        },
      );
      expect(taken, `input ${i} taken`).toBe(input.taken);
    }
    const id = (c.inputs[0]!.state as { id: string }).id;
    if (c.final === null) {
      expect(g.state(id)).toBeUndefined();
    } else {
      expect(g.state(id)).toEqual(c.final);
      expect(await groupHash(g.state(id)!)).toBe(c.final_hash);
    }
    expect(g.list().some((s) => s.id === id)).toBe(c.member);
  });
});

describe('groups across servers', () => {
  it('a snapshot written elsewhere is read in the reader\'s form, hashed as carried, and every member chains the same versions', async () => {
    // alice is on one.example, bob on two.example. alice creates the group
    // naming bob by address; bob reads it with alice qualified by her domain.
    const v1 = newGroup('alice', 'team', ['bob@two.example']);
    const atAlice = new Groups('alice', [], 'one.example');
    const atBob = new Groups('bob', [], 'two.example');
    expect(await atAlice.take('alice', v1)).toBe(true);
    expect(await atBob.take('alice@one.example', v1, 'one.example')).toBe(true);
    expect(atBob.state(v1.id)).toMatchObject({ members: ['alice@one.example', 'bob'], admins: ['alice@one.example'], by: 'alice@one.example' });
    expect(atBob.held(v1.id)!.hash).toBe(await groupHash(v1));
    expect(atAlice.held(v1.id)!.hash).toBe(await groupHash(v1));

    // alice makes bob an admin; bob then renames, naming alice by address,
    // on the hash of version 2 as carried (not of his own form of it).
    const v2 = await promoteMember(atAlice.state(v1.id)!, 'alice', 'bob@two.example', atAlice.held(v1.id)!.hash);
    await atAlice.take('alice', v2);
    await atBob.take('alice@one.example', v2, 'one.example');
    const held = atBob.held(v1.id)!;
    expect(held.state.admins).toEqual(['alice@one.example', 'bob']);
    expect(held.hash).not.toBe(await groupHash(held.state));
    const v3 = await renameGroup(held.state, 'bob', 'team two', held.hash);
    expect(v3).toMatchObject({ members: ['alice@one.example', 'bob'], by: 'bob', prev: await groupHash(v2) });
    expect(await atBob.take('bob', v3)).toBe(true);
    expect(await atAlice.take('bob@two.example', v3, 'two.example')).toBe(true);
    expect(atAlice.state(v1.id)).toMatchObject({ name: 'team two', members: ['alice', 'bob@two.example'], by: 'bob@two.example', version: 3 });
    expect(atAlice.held(v1.id)!.hash).toBe(atBob.held(v1.id)!.hash);
  });

  it("reads a writer of its own server's address for a local person as the bare handle, the hash as carried", async () => {
    const v1 = newGroup('alice', 'team', ['bob@two.example']);
    const atBob = new Groups('bob', [], 'two.example');
    // carol of two.example wrote the state naming bob by address.
    const odd = { ...newGroup('carol', 'odd', ['bob@two.example']) };
    expect(await atBob.take('carol', odd, 'two.example')).toBe(true);
    expect(atBob.state(odd.id)).toMatchObject({ members: ['bob', 'carol'] });
    expect(atBob.held(odd.id)!.hash).toBe(await groupHash(odd));
    expect(v1.members).toEqual(['alice', 'bob@two.example']);
  });

  it('drops a snapshot whose author is not its sender once qualified, or that names one person twice', async () => {
    const v1 = newGroup('alice', 'team', ['bob@two.example']);
    // Sent by alice of three.example: not the alice who wrote it.
    await expect(new Groups('bob', [], 'two.example').take('alice@three.example', v1, 'one.example')).rejects.toThrow(/by alice@one.example/);
    const twice = { ...newGroup('alice', 'team', ['bob', 'bob@two.example']) };
    await expect(new Groups('bob', [], 'two.example').take('alice@two.example', twice, 'two.example')).rejects.toThrow(SnapshotDropped);
  });
});
