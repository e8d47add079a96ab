import { describe, expect, it } from 'vitest';
import { baseUrl, domainOf, fullAddress, handleOf, isLoopbackDomain, linkAllowed, localName, parseName, qualify, validDomain, validName } from '../src/lib/address';

describe('addresses', () => {
  it('parse what people type: bare is local, an address at the own domain is bare, case and @ are forgiven', () => {
    const own = 'one.example';
    expect(parseName(' @Bob ', own)).toEqual({ name: 'bob' });
    expect(parseName('bob@two.example', own)).toEqual({ name: 'bob@two.example' });
    expect(parseName('@Bob@Two.Example', own)).toEqual({ name: 'bob@two.example' });
    expect(parseName('bob@one.example', own)).toEqual({ name: 'bob' });
    for (const bad of ['', 'b@two.example', 'bob@', 'bob@-two.example', 'bob@two..example', 'bob@two_example', 'bob@two.example@x', 'bob@two.example.', 'bob@' + 'a'.repeat(64) + '.example']) {
      expect(parseName(bad, own), bad).toHaveProperty('problem');
    }
  });

  it('take loopback test domains only while the own server is on one', () => {
    expect(parseName('bob@127.0.0.1:7000', 'one.example')).toHaveProperty('problem');
    expect(parseName('bob@127.0.0.1:7000', '127.0.0.1:6000')).toEqual({ name: 'bob@127.0.0.1:7000' });
    expect(parseName('bob@localhost:7000', 'localhost:6000')).toEqual({ name: 'bob@localhost:7000' });
    expect(parseName('bob@127.0.0.1:6000', '127.0.0.1:6000')).toEqual({ name: 'bob' });
    for (const d of ['127.0.0.1:0', '127.0.0.1:65536', '127.0.0.1:080', '127.0.0.2:80', 'localhost', '127.0.0.1']) expect(isLoopbackDomain(d), d).toBe(false);
    for (const d of ['127.0.0.1:1', 'localhost:65535']) expect(isLoopbackDomain(d), d).toBe(true);
  });

  it('validate names as plaintexts and group states carry them', () => {
    expect(validName('bob')).toBe(true);
    expect(validName('bob@two.example')).toBe(true);
    expect(validName('bob@127.0.0.1:7000')).toBe(true);
    expect(validName('Bob@two.example')).toBe(false);
    expect(validName('bob@Two.example')).toBe(false);
    expect(validName('bo')).toBe(false);
    expect(validName(7)).toBe(false);
    expect(validDomain('a'.repeat(63) + '.example')).toBe(true);
    expect(validDomain(('a'.repeat(63) + '.').repeat(4) + 'ab')).toBe(false); // 258 bytes
  });

  it("qualify a writer's names in the reader's form, the same for every reader", () => {
    // carol@three.example wrote: "alice" is hers, "bob@two.example" is bob.
    expect(qualify('alice', 'three.example', 'two.example')).toBe('alice@three.example');
    expect(qualify('bob@two.example', 'three.example', 'two.example')).toBe('bob');
    expect(qualify('dave@four.example', 'three.example', 'two.example')).toBe('dave@four.example');
    // A writer of the reader's own server: names stay as written.
    expect(qualify('alice', 'two.example', 'two.example')).toBe('alice');
    expect(localName('bob@two.example', 'two.example')).toBe('bob');
    expect(localName('bob@three.example', 'two.example')).toBe('bob@three.example');
  });

  it('split names and make addresses and origins', () => {
    expect(handleOf('bob@two.example')).toBe('bob');
    expect(handleOf('bob')).toBe('bob');
    expect(domainOf('bob@two.example', 'one.example')).toBe('two.example');
    expect(domainOf('bob', 'one.example')).toBe('one.example');
    expect(fullAddress('bob', 'one.example')).toBe('bob@one.example');
    expect(fullAddress('bob@two.example', 'one.example')).toBe('bob@two.example');
    expect(baseUrl('two.example')).toBe('https://two.example');
    expect(baseUrl('127.0.0.1:7000')).toBe('http://127.0.0.1:7000');
  });

  it('follow only https links, or http on a loopback test domain', () => {
    expect(linkAllowed('https://two.example/v1/u/bob')).toBe(true);
    expect(linkAllowed('http://127.0.0.1:7000/v1/u/bob')).toBe(true);
    expect(linkAllowed('http://two.example/v1/u/bob')).toBe(false);
    expect(linkAllowed('http://127.0.0.1/v1/u/bob')).toBe(false);
    expect(linkAllowed('https://user:pw@two.example/')).toBe(false);
    expect(linkAllowed('javascript:alert(1)')).toBe(false);
    expect(linkAllowed('/v1/u/bob')).toBe(false);
  });
});
