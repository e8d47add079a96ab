import { describe, expect, it } from 'vitest';
import { encodeB64 } from '../src/lib/bytes';
import { nextKeyDocument } from '../src/lib/keydocs';
import { generateKeys, type Identity } from '../src/lib/keys';
import { primaryId } from '../src/lib/signing';
import { follows, parseKeyDocument } from '../src/lib/trust';

describe('nextKeyDocument', () => {
  it('starts a chain listing the primary key and the device, then appends a version that follows it', async () => {
    const k = await generateKeys();
    const me: Identity = { ...k, handle: 'alice', server: 's', primaryId: await primaryId('ed25519', k.signing.publicKey) };
    const phone = { alg: 'ed25519', key: encodeB64(new Uint8Array(32).fill(1)), label: 'Chrome on Android' };
    const v1 = await nextKeyDocument(me, undefined, phone, 1764000000);
    const d1 = await parseKeyDocument(v1);
    expect(d1.version).toBe(1);
    expect(d1.signingKeys.map((x) => x.key)).toEqual([encodeB64(k.signing.publicKey), phone.key]);
    expect(d1.encKey).toBe(encodeB64(k.enc.publicKey));
    const laptop = { alg: 'ed25519', key: encodeB64(new Uint8Array(32).fill(2)), label: 'Firefox on Linux' };
    const v2 = await nextKeyDocument(me, v1, laptop, 1764000001);
    const d2 = await parseKeyDocument(v2);
    expect(follows(d2, d1)).toBe(true);
    expect(d2.signingKeys).toHaveLength(3);
  });
});
