import { afterEach, describe, expect, it, vi } from 'vitest';
import * as api from '../src/lib/api';
import { encodeB64 } from '../src/lib/bytes';
import type { PublicUser } from '../src/lib/protocol';
import { remoteTrust, resolveRemote, RemoteRefused, type JRD } from '../src/lib/remote';
import type { Signed } from '../src/lib/signing';
import { checkPeer, KeyChanged, type KeyPayload, type Pin } from '../src/lib/trust';
import { vectors } from './vectors';

const chain = vectors.key_chains[0]!;
const docs = chain.documents as unknown as Signed<KeyPayload>[];
const primary = (docs[0] as unknown as Signed<unknown>).signature;

/** bob's record as two.example answers it: the chain's primary key, its enc_key at version v. */
const bobRecord = (v: 1 | 2 = 1, server = 'two.example'): PublicUser => ({
  handle: 'bob',
  server,
  primary_id: chain.primary_id,
  alg: primary.alg,
  key: primary.key,
  enc_key: chain.enc_keys[v - 1]!,
  created_at: 1,
});

const jrd = (address: string, origin: string, keys?: string): JRD => ({
  subject: `acct:${address}`,
  links: [
    { rel: 'self', href: `${origin}/v1/u/${address.split('@')[0]}` },
    ...(keys ? [{ rel: 'https://kez.lat/rel/keys', href: `${keys}/v1/keys/${chain.primary_id}` }] : []),
  ],
});

/**
 * The network as the browser's fetch sees it: answers by URL, JSON with
 * the CORS header the servers send; anything else 404s. Records the URLs asked.
 */
function fakeNetwork(routes: Record<string, unknown>) {
  const asked: string[] = [];
  vi.stubGlobal('fetch', async (input: string | URL | Request) => {
    const url = String(input instanceof Request ? input.url : input);
    asked.push(url);
    if (!(url in routes)) return new Response(JSON.stringify({ error: { code: 'unknown_handle', message: 'no such user' } }), { status: 404 });
    return new Response(JSON.stringify(routes[url]), { status: 200, headers: { 'Content-Type': 'application/json', 'Access-Control-Allow-Origin': '*' } });
  });
  return asked;
}

const wf = (origin: string, address: string) => `${origin}/.well-known/webfinger?resource=${encodeURIComponent('acct:' + address)}`;

afterEach(() => void vi.unstubAllGlobals());

describe('a person on another server', () => {
  it("is resolved from that person's domain: WebFinger, then the record it links", async () => {
    const asked = fakeNetwork({
      [wf('https://two.example', 'bob@two.example')]: jrd('bob@two.example', 'https://two.example'),
      'https://two.example/v1/u/bob': bobRecord(),
    });
    const p = await resolveRemote('bob@two.example', api.getJSON);
    expect(p.record).toEqual(bobRecord());
    expect(asked).toEqual([wf('https://two.example', 'bob@two.example'), 'https://two.example/v1/u/bob']);
  });

  it('on a loopback test domain, over plain http', async () => {
    const origin = 'http://127.0.0.1:7000';
    fakeNetwork({ [wf(origin, 'bob@127.0.0.1:7000')]: jrd('bob@127.0.0.1:7000', origin), [`${origin}/v1/u/bob`]: bobRecord(1, '127.0.0.1:7000') });
    expect((await resolveRemote('bob@127.0.0.1:7000', api.getJSON)).record.server).toBe('127.0.0.1:7000');
  });

  it("is refused when the domain's answers are not that address's", async () => {
    const address = 'bob@two.example';
    const cases: [string, Record<string, unknown>][] = [
      ['another subject', { [wf('https://two.example', address)]: jrd('carol@two.example', 'https://two.example') }],
      ['a record over http', { [wf('https://two.example', address)]: jrd(address, 'http://two.example'), 'http://two.example/v1/u/bob': bobRecord() }],
      ['a record of another server', { [wf('https://two.example', address)]: jrd(address, 'https://two.example'), 'https://two.example/v1/u/bob': bobRecord(1, 'one.example') }],
      ['a record of another handle', { [wf('https://two.example', address)]: jrd(address, 'https://two.example'), 'https://two.example/v1/u/bob': { ...bobRecord(), handle: 'carol' } }],
      [
        'a primary_id not of its key',
        { [wf('https://two.example', address)]: jrd(address, 'https://two.example'), 'https://two.example/v1/u/bob': { ...bobRecord(), key: encodeB64(new Uint8Array(32).fill(7)) } },
      ],
    ];
    for (const [why, routes] of cases) {
      fakeNetwork(routes);
      await expect(resolveRemote(address, api.getJSON), why).rejects.toBeInstanceOf(RemoteRefused);
    }
  });

  it('unknown there is the protocol code, as for a local handle', async () => {
    fakeNetwork({});
    await expect(resolveRemote('nobody@two.example', api.getJSON)).rejects.toMatchObject({ code: 'unknown_handle', status: 404 });
  });

  it('is checked against the key documents its domain links, and pinned by address', async () => {
    const address = 'bob@two.example';
    fakeNetwork({
      [wf('https://two.example', address)]: jrd(address, 'https://two.example', 'https://keys.two.example'),
      'https://two.example/v1/u/bob': bobRecord(2),
    });
    const logs: string[] = [];
    const keyLog = async (base: string, _pid: string, from: number) => {
      logs.push(base);
      return { documents: docs.slice(from - 1), next: 0 };
    };
    const pins = new Map<string, Pin>([['bob', { primary_id: 'x', alg: 'ed25519', key: 'local-bob', enc_key: 'e', keys_version: 0 }]]);
    const p = await resolveRemote(address, api.getJSON);
    const { record, changed } = await checkPeer(p.record, pins, remoteTrust(p, keyLog), address);
    expect(changed).toBe(true);
    expect(logs).toEqual(['https://keys.two.example']);
    expect(record.enc_key).toBe(chain.enc_keys[1]);
    expect(pins.get(address)).toMatchObject({ primary_id: chain.primary_id, keys_version: 2 });
    // The local bob's pin is another person's, untouched.
    expect(pins.get('bob')?.key).toBe('local-bob');

    // The domain later answers another primary key for the address: a key change, named by address.
    const swapped = { ...p, record: { ...p.record, key: encodeB64(new Uint8Array(32).fill(9)) } };
    const err = await checkPeer(swapped.record, pins, remoteTrust(swapped, keyLog), address).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KeyChanged);
    expect((err as KeyChanged).handle).toBe(address);
  });

  it('reads its key documents over https only', async () => {
    const p = { record: bobRecord(2), jrd: jrd('bob@two.example', 'https://two.example', 'http://keys.two.example') };
    const keyLog = vi.fn(async () => ({ documents: docs, next: 0 }));
    // Not followed: the enc_key then stands on nothing, and a new one is refused.
    const pins = new Map<string, Pin>();
    await checkPeer(bobRecord(1), pins, remoteTrust({ ...p, record: bobRecord(1) }, keyLog), 'bob@two.example');
    await expect(checkPeer(p.record, pins, remoteTrust(p, keyLog), 'bob@two.example')).rejects.toBeInstanceOf(KeyChanged);
    expect(keyLog).not.toHaveBeenCalled();
  });
});
