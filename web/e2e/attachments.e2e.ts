// Attachments between two people in two browsers, against the real server:
// files picked in the composer are encrypted, uploaded with
// POST /v1/blobs/{handle}, named in the message, downloaded, checked and
// decrypted by the recipient; an image shows inline, any other file is
// handed over as a download, byte-identical to what was sent.

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { deflateSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { artifactsDir, bubble, launchBrowser, newUser, openChat, register, startServer, type ChatServer } from './harness';

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

const CRC = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(b: Buffer): number {
  let c = 0xffffffff;
  for (const x of b) c = CRC[(c ^ x) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** An RGB PNG of w×h pixels: a gradient, so a thumbnail of it is not blank. */
function png(w: number, h: number): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(td));
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB, no interlace
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    const row = y * (w * 3 + 1);
    for (let x = 0; x < w; x++) raw.set([(x * 255) / w, (y * 255) / h, 128], row + 1 + x * 3);
  }
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

async function attach(page: Page, files: { name: string; mimeType: string; buffer: Buffer }[], caption: string): Promise<void> {
  await page.getByTestId('file-input').setInputFiles(files);
  for (const f of files) await page.getByRole('list', { name: 'Files to send' }).getByText(f.name).waitFor();
  await page.locator('#composer').fill(caption);
  await page.locator('#composer').press('Enter');
}

/** Waits for an <img> to have decoded, and returns its natural size. */
async function decoded(page: Page, selector: string): Promise<{ w: number; h: number }> {
  const img = await page.waitForFunction(
    (sel) => {
      const el = document.querySelector<HTMLImageElement>(sel);
      return el && el.complete && el.naturalWidth > 0 ? { w: el.naturalWidth, h: el.naturalHeight } : null;
    },
    selector,
    { timeout: 15_000 },
  );
  return (await img.jsonValue())!;
}

describe('attachments between two people, against the real server', () => {
  let server: ChatServer;
  let browser: Browser;
  let alice: Page;
  let bob: Page;
  const shot = (page: Page, name: string) => page.screenshot({ path: artifactsDir() + `attachments-${name}.png` });
  const image = { name: 'gradient.png', mimeType: 'image/png', buffer: png(640, 480) };
  const file = { name: 'random.bin', mimeType: 'application/octet-stream', buffer: randomBytes(300 * 1024) };
  const uploads: { url: string; body: Buffer }[] = [];
  const fetched: Buffer[] = [];

  beforeAll(async () => {
    server = await startServer();
    browser = await launchBrowser();
    alice = (await newUser(browser, server)).page;
    bob = (await newUser(browser, server)).page;
    alice.on('requestfinished', (r) => {
      if (r.method() === 'POST' && r.url().includes('/v1/blobs/'))
        void r.response().then((res) => res?.status() === 201 && uploads.push({ url: r.url(), body: r.postDataBuffer() ?? Buffer.alloc(0) }));
    });
    bob.on('response', (r) => {
      if (r.request().method() === 'GET' && r.url().includes('/v1/blobs/') && r.ok()) void r.body().then((b) => fetched.push(b));
    });
    await register(alice, 'alice');
    await register(bob, 'bob');
    await openChat(alice, 'bob');
  });

  afterAll(async () => {
    await browser?.close();
    await server?.stop();
  });

  it('an image sent is shown inline on the recipient side, thumbnail and full size', async () => {
    await attach(alice, [image], 'a picture for you');
    await expect.poll(() => bubble(alice, 'a picture for you').getAttribute('data-state'), { timeout: 20_000 }).toBe('sent');
    // The sender sees it too, from what it kept.
    await bubble(alice, 'a picture for you').getByTestId('attachment-image').waitFor();
    await shot(alice, 'image-sent');

    const row = bob.locator('a[data-peer="alice"]');
    await row.waitFor({ timeout: 15_000 });
    await row.click();
    const img = bubble(bob, 'a picture for you').getByTestId('attachment-image');
    await img.waitFor({ timeout: 15_000 });
    // The thumbnail: at most 320 pixels on its longer side, the image's aspect.
    const thumb = await decoded(bob, '[data-testid="attachment-image"]');
    expect(thumb).toEqual({ w: 320, h: 240 });
    expect(await img.getAttribute('alt')).toBe('gradient.png');
    await shot(bob, 'image-received');

    // The full image, as sent (640×480), and its bytes are the PNG's.
    await img.click();
    const full = await decoded(bob, '[data-testid="attachment-full"]');
    expect(full).toEqual({ w: 640, h: 480 });
    await shot(bob, 'image-full');
    const dialog = bob.getByRole('dialog', { name: 'gradient.png' });
    const [download] = await Promise.all([bob.waitForEvent('download'), dialog.getByRole('link', { name: 'Download' }).click()]);
    expect(download.suggestedFilename()).toBe('gradient.png');
    expect(sha256(readFileSync((await download.path())!))).toBe(sha256(image.buffer));
    await dialog.getByRole('button', { name: 'Close' }).click();
    await dialog.waitFor({ state: 'detached' });
  });

  it('a file sent is downloaded by the recipient byte-identical', async () => {
    await attach(alice, [file], 'and some random bytes');
    await expect.poll(() => bubble(alice, 'and some random bytes').getAttribute('data-state'), { timeout: 20_000 }).toBe('sent');
    await shot(alice, 'file-sent');

    const received = bubble(bob, 'and some random bytes');
    await received.waitFor({ timeout: 15_000 });
    const card = received.getByTestId('attachment-file');
    expect(await card.textContent()).toMatch(/random\.bin/);
    expect(await card.textContent()).toMatch(/300\.0 KB/);
    const link = received.getByTestId('attachment-download');
    await link.waitFor({ timeout: 15_000 });
    await shot(bob, 'file-received');
    const [download] = await Promise.all([bob.waitForEvent('download'), link.click()]);
    expect(download.suggestedFilename()).toBe('random.bin');
    const got = readFileSync((await download.path())!);
    expect(got.length).toBe(file.buffer.length);
    expect(sha256(got)).toBe(sha256(file.buffer));
  });

  it('a file whose upload failed offline is uploaded and sent by Retry', async () => {
    const again = { name: 'again.bin', mimeType: 'application/octet-stream', buffer: randomBytes(64 * 1024) };
    await alice.context().setOffline(true);
    try {
      await attach(alice, [again], 'sent from a tunnel, with a file');
      await expect.poll(() => bubble(alice, 'sent from a tunnel, with a file').getAttribute('data-state')).toBe('failed');
    } finally {
      await alice.context().setOffline(false);
    }
    await bubble(alice, 'sent from a tunnel, with a file').getByRole('button', { name: 'Retry' }).click();
    await expect.poll(() => bubble(alice, 'sent from a tunnel, with a file').getAttribute('data-state'), { timeout: 20_000 }).toBe('sent');
    const received = bubble(bob, 'sent from a tunnel, with a file');
    await received.waitFor({ timeout: 15_000 });
    await shot(bob, 'retried-received');
    const link = received.getByTestId('attachment-download');
    await link.waitFor({ timeout: 15_000 });
    const [download] = await Promise.all([bob.waitForEvent('download'), link.click()]);
    expect(download.suggestedFilename()).toBe('again.bin');
    expect(sha256(readFileSync((await download.path())!))).toBe(sha256(again.buffer));
  });

  it('the server was handed ciphertext only, and the recipient fetched that', async () => {
    // Each upload names its digest in the query; the file's blob is
    // nonce (12) || AES-GCM(file) with its 16-byte tag, and holds no run of the file.
    expect(uploads.length).toBe(4); // the image, its thumbnail, the file, the retried file (the offline try never reached the server)
    for (const u of uploads) expect(u.url).toMatch(/\/v1\/blobs\/alice\?sha256=[A-Za-z0-9_-]{43}$/);
    const sealed = uploads.find((u) => u.body.length === file.buffer.length + 28);
    expect(sealed).toBeDefined();
    expect(sealed!.body.includes(file.buffer.subarray(1000, 1064))).toBe(false);
    // Bob downloaded exactly what alice uploaded.
    expect(fetched.map(sha256).sort()).toEqual(uploads.map((u) => sha256(u.body)).sort());
  });

  it('bob keeps the files on his device: after a reload they show and download from there', async () => {
    // (The server deletes an acknowledged message's blobs at its next prune, not at once.)
    const before = fetched.length;
    await bob.reload();
    await bob.getByText('Signed in as @bob').waitFor();
    await bubble(bob, 'a picture for you').getByTestId('attachment-image').waitFor();
    expect(await decoded(bob, '[data-testid="attachment-image"]')).toEqual({ w: 320, h: 240 });
    const link = bubble(bob, 'and some random bytes').getByTestId('attachment-download');
    await link.waitFor();
    const [download] = await Promise.all([bob.waitForEvent('download'), link.click()]);
    expect(sha256(readFileSync((await download.path())!))).toBe(sha256(file.buffer));
    await shot(bob, 'after-reload');
    // Shown from IndexedDB: nothing was downloaded again.
    expect(fetched.length).toBe(before);
  });
});
