// The shared test vectors: testdata/vectors.json (checked by the Go tests in
// web/vectors_test.go too) and the official JCS and BIP-340 vectors kept in
// server/signing/testdata.
import { readFileSync, readdirSync } from 'node:fs';
import type { Envelope, Plaintext, PublicUser } from '../src/lib/protocol';

const here = new URL('.', import.meta.url).pathname;
export const signingTestdata = here + '../../server/signing/testdata/';

export interface Vectors {
  primary_id: { alg: string; public_key_hex: string; primary_id: string }[];
  signatures: { alg: string; private_key: string; public_key: string; payload: Record<string, unknown>; canonical: string; sig: string }[];
  request_auth: { alg: string; private_key: string; server: string; method: string; path: string; bindings: string[]; ts: number; string: string; auth: string }[];
  messages: { name: string; recipient_enc_private: string; recipient: PublicUser; sender: PublicUser; envelope: Envelope; plaintext: Plaintext }[];
  handles: { handle: string; skeleton: string; reserved: boolean }[];
  safety_numbers: { alg_a: string; key_a: string; address_a: string; alg_b: string; key_b: string; address_b: string; number: string }[];
  key_chains: { primary_id: string; documents: Record<string, unknown>[]; hashes: string[]; enc_keys: string[] }[];
  groups: {
    name: string;
    client: string;
    inputs: { from: string; state: Record<string, unknown>; canonical: string; hash: string; taken: boolean }[];
    final: Record<string, unknown> | null;
    final_hash?: string;
    member: boolean;
  }[];
}

export const vectors = JSON.parse(readFileSync(here + '../testdata/vectors.json', 'utf8')) as Vectors;

export function jcsVectors(): { name: string; input: string; output: string }[] {
  const dir = signingTestdata + 'jcs/';
  return readdirSync(dir + 'input').map((name) => ({
    name,
    input: readFileSync(dir + 'input/' + name, 'utf8'),
    output: readFileSync(dir + 'output/' + name, 'utf8'),
  }));
}

export function bip340Vectors(): { index: string; publicKey: string; message: string; signature: string; valid: boolean }[] {
  const lines = readFileSync(signingTestdata + 'bip340/test-vectors.csv', 'utf8').trim().split(/\r?\n/).slice(1);
  return lines.map((l) => {
    const [index, , publicKey, , message, signature, result] = l.split(',');
    return { index: index!, publicKey: publicKey!, message: message!, signature: signature!, valid: result === 'TRUE' };
  });
}
