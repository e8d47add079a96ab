// The privacy setting's known list, added to within the server's caps
// (docs/protocol.md, "PUT /v1/privacy/{handle}", "Limits").

import { describe, expect, it } from 'vitest';
import type { Privacy } from '../src/lib/api';
import { MAX_PRIVACY_BYTES, MAX_PRIVACY_KNOWN, normalPrivacy, withKnown } from '../src/lib/privacy';

const people = (n: number, domain = 'x.example') => Array.from({ length: n }, (_, i) => `p${String(i).padStart(4, '0')}@${domain}`);
const bytes = (p: Privacy) => new TextEncoder().encode(JSON.stringify(p)).length;

describe('withKnown', () => {
  it('adds the new addresses once, not those blocked (by address or by domain), and says whether anything changed', () => {
    const p: Privacy = { strangers: 'refuse', known: ['bob@two.example'], blocked: ['eve@two.example', 'spam.example'] };
    const r = withKnown(p, ['bob@two.example', 'carol@two.example', 'eve@two.example', 'x@spam.example', 'carol@two.example']);
    expect(r).toEqual({ privacy: { strangers: 'refuse', known: ['bob@two.example', 'carol@two.example'], blocked: ['eve@two.example', 'spam.example'] }, changed: true, left: [] });
    expect(p.known).toEqual(['bob@two.example']); // p itself is left alone
    expect(withKnown(p, ['bob@two.example', 'eve@two.example']).changed).toBe(false);
  });

  it('at the cap, forgets known people no longer chatted with before leaving out any new one', () => {
    const full = people(MAX_PRIVACY_KNOWN);
    const p: Privacy = { strangers: 'refuse', known: full, blocked: [] };
    const stale = new Set(full.slice(10, 12));
    const r = withKnown(p, ['new1@two.example', 'new2@two.example'], (n) => !stale.has(n));
    expect(r.left).toEqual([]);
    expect(r.privacy.known).toHaveLength(MAX_PRIVACY_KNOWN);
    expect(r.privacy.known).toEqual(expect.arrayContaining(['new1@two.example', 'new2@two.example']));
    for (const s of stale) expect(r.privacy.known).not.toContain(s);
    expect(r.privacy.known).toContain(full[0]);
  });

  it('leaves out the latest additions when every known person is still chatted with', () => {
    const p: Privacy = { strangers: 'refuse', known: people(MAX_PRIVACY_KNOWN - 1), blocked: [] };
    const r = withKnown(p, ['a@two.example', 'b@two.example', 'c@two.example']);
    expect(r.privacy.known).toHaveLength(MAX_PRIVACY_KNOWN);
    expect(r.privacy.known.at(-1)).toBe('a@two.example');
    expect(r.left).toEqual(['b@two.example', 'c@two.example']);
  });

  it('keeps the body within 256 KiB whatever the count', () => {
    const long = 'd'.repeat(60) + '.' + 'e'.repeat(60) + '.' + 'f'.repeat(60) + '.example';
    const p: Privacy = { strangers: 'refuse', known: people(1000, long), blocked: [] };
    expect(bytes(p)).toBeLessThan(MAX_PRIVACY_BYTES);
    const r = withKnown(p, people(1000, 'z' + long));
    expect(r.privacy.known.length).toBeLessThan(2000);
    expect(r.left.length).toBeGreaterThan(0);
    expect(bytes(r.privacy)).toBeLessThanOrEqual(MAX_PRIVACY_BYTES);
    // Nothing more fits: the next addition is left out.
    expect(bytes({ ...r.privacy, known: [...r.privacy.known, r.left[0]!] })).toBeGreaterThan(MAX_PRIVACY_BYTES);
  });

  it('normalPrivacy reads a setting without lists as empty, accepting strangers', () => {
    expect(normalPrivacy({})).toEqual({ strangers: 'accept', known: [], blocked: [] });
    expect(normalPrivacy({ strangers: 'refuse', known: ['a@b.example', 'a@b.example'] })).toEqual({ strangers: 'refuse', known: ['a@b.example'], blocked: [] });
  });
});
