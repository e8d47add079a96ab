import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { artifactsDir, bubble, launchBrowser, newUser, openChat, register, send, startServer, startSwappingProxy, type ChatServer } from './harness';

describe('two people in two browsers, against the real server', () => {
  let server: ChatServer;
  let browser: Browser;
  let alice: Page;
  let bob: Page;

  beforeAll(async () => {
    server = await startServer();
    browser = await launchBrowser();
    alice = (await newUser(browser, server)).page;
    bob = (await newUser(browser, server)).page;
  });

  afterAll(async () => {
    await browser?.close();
    await server?.stop();
  });

  it('the first-run screen refuses bad, reserved and taken handles', async () => {
    await register(alice, 'alice');
    const { page: other, context } = await newUser(browser, server);
    const handle = other.getByLabel('Pick a handle');
    const create = other.getByRole('button', { name: 'Create identity' });
    await handle.fill('admin');
    await create.click();
    await expect.poll(() => other.getByRole('alert').textContent()).toMatch(/reserved/);
    await handle.fill('Bad Handle');
    await create.click();
    await expect.poll(() => other.getByRole('alert').textContent()).toMatch(/lowercase/);
    await handle.fill('alice');
    await create.click();
    await expect.poll(() => other.getByRole('alert').textContent()).toMatch(/@alice is taken/);
    await context.close();
  });

  it('an unknown handle gets a clear message', async () => {
    await alice.getByLabel('Handle to chat with').fill('nobody');
    await alice.getByRole('button', { name: 'Chat', exact: true }).click();
    await expect.poll(() => alice.getByRole('alert').textContent()).toMatch(/No one is called @nobody/);
  });

  it('messages arrive live both ways, decrypted, with sent states', async () => {
    await register(bob, 'bob');
    await expect.poll(() => bob.locator('[data-status]').getAttribute('data-status'), { timeout: 10_000 }).toBe('live');
    await expect.poll(() => alice.locator('[data-status]').getAttribute('data-status'), { timeout: 10_000 }).toBe('live');

    await openChat(alice, 'bob');
    await send(alice, 'hello bob, this is alice');
    await expect.poll(() => bubble(alice, 'hello bob, this is alice').getAttribute('data-state')).toBe('sent');

    // Bob's list shows the conversation with one unread message; the poll
    // heartbeat is 30 s, so arriving within 10 s means the stream delivered it.
    const row = bob.locator('a[data-peer="alice"]');
    await row.waitFor({ timeout: 10_000 });
    await expect.poll(() => row.textContent()).toMatch(/hello bob, this is alice/);
    await expect.poll(() => row.getByLabel('1 unread').count()).toBe(1);
    await row.click();
    await bubble(bob, 'hello bob, this is alice').waitFor();
    await expect.poll(() => row.getByLabel(/unread/).count()).toBe(0);

    await send(bob, 'hi alice 👋 <b>not bold</b>');
    await bubble(alice, 'hi alice 👋 <b>not bold</b>').waitFor({ timeout: 10_000 });
    expect(await bubble(alice, 'hi alice 👋').getAttribute('data-mine')).toBe('false');
    expect(await bubble(bob, 'hi alice 👋').getAttribute('data-mine')).toBe('true');
  });

  it('a message sent while offline fails, and Retry sends it', async () => {
    await alice.context().setOffline(true);
    try {
      await send(alice, 'sent from a tunnel');
      await expect.poll(() => bubble(alice, 'sent from a tunnel').getAttribute('data-state')).toBe('failed');
    } finally {
      await alice.context().setOffline(false);
    }
    await bubble(alice, 'sent from a tunnel').getByRole('button', { name: 'Retry' }).click();
    await expect.poll(() => bubble(alice, 'sent from a tunnel').getAttribute('data-state')).toBe('sent');
    await bubble(bob, 'sent from a tunnel').waitFor({ timeout: 10_000 });
    expect(await bubble(bob, 'sent from a tunnel').count()).toBe(1);
  });

  it('own and received bubbles sit on opposite sides and shrink to their text', async () => {
    const mine = await bubble(bob, 'hi alice').locator('div').first().boundingBox();
    const theirs = await bubble(bob, 'hello bob, this is alice').locator('div').first().boundingBox();
    const log = await bob.getByRole('log').boundingBox();
    expect(mine && theirs && log).toBeTruthy();
    const center = log!.x + log!.width / 2;
    expect(mine!.x).toBeGreaterThan(center); // right
    expect(theirs!.x + theirs!.width).toBeLessThan(center + log!.width / 4); // left
    expect(mine!.width).toBeLessThan(log!.width * 0.5); // shrink-wrapped, not full width
  });

  it('a reload keeps the identity and the history', async () => {
    await bob.reload();
    await bob.getByText('Signed in as @bob').waitFor();
    await bubble(bob, 'hello bob, this is alice').waitFor();
    await bubble(bob, 'hi alice 👋').waitFor();
  });

  it('keeps its private keys non-extractable, with no raw key in IndexedDB', async () => {
    const kept = await bob.evaluate(
      () =>
        new Promise<{ signing: unknown; enc: unknown; sealed: unknown; rawSigning: boolean; rawEnc: boolean; exportRefused: boolean }>((resolve, reject) => {
          const req = indexedDB.open('keyval-store');
          req.onerror = () => reject(req.error);
          req.onsuccess = () => {
            const get = req.result.transaction('keyval').objectStore('keyval').get('identity');
            get.onsuccess = async () => {
              const id = get.result;
              let exportRefused = false;
              await crypto.subtle.exportKey('jwk', id.signing.cryptoKey).catch(() => (exportRefused = true));
              resolve({
                signing: id.signing.cryptoKey?.extractable,
                enc: id.enc.cryptoKey?.extractable,
                sealed: id.sealed?.key?.extractable,
                rawSigning: 'secret' in id.signing,
                rawEnc: 'secret' in id.enc,
                exportRefused,
              });
            };
          };
        }),
    );
    expect(kept).toEqual({ signing: false, enc: false, sealed: false, rawSigning: false, rawEnc: false, exportRefused: true });
  });

  it('keeps screenshots of the chat at phone and desktop widths', async () => {
    const dir = artifactsDir();
    await bob.setViewportSize({ width: 1280, height: 800 });
    await bob.screenshot({ path: dir + 'chat-desktop.png' });
    await bob.setViewportSize({ width: 390, height: 844 });
    await bubble(bob, 'hi alice 👋').waitFor();
    // On a phone the chat takes the whole screen; the list is one tap back.
    expect(await bob.getByRole('complementary', { name: 'Chats' }).isVisible()).toBe(false);
    await bob.screenshot({ path: dir + 'chat-phone.png' });
    await bob.emulateMedia({ colorScheme: 'dark' });
    await bob.screenshot({ path: dir + 'chat-phone-dark.png' });
    await bob.emulateMedia({ colorScheme: 'light' });
    await bob.setViewportSize({ width: 1280, height: 800 });
  });

  it('interoperates with the Go CLI both ways', async () => {
    await server.cli('carol', 'keygen');
    await server.cli('carol', 'register', 'carol');
    await server.cli('carol', 'send', 'bob', 'from the terminal, with love');
    const row = bob.locator('a[data-peer="carol"]');
    await row.waitFor({ timeout: 10_000 });
    await row.click();
    await bubble(bob, 'from the terminal, with love').waitFor();

    await send(bob, 'and back from the browser');
    await expect.poll(() => bubble(bob, 'and back from the browser').getAttribute('data-state')).toBe('sent');
    const { stdout } = await server.cli('carol', 'inbox');
    expect(stdout).toMatch(/\[\d+\] bob: and back from the browser/);
  });

  it('an exported identity moves to a new browser with its passphrase', async () => {
    await bob.goto('/#/settings');
    await bob.getByLabel('Passphrase (at least 8 characters)').fill('correct horse battery');
    await bob.getByLabel('Passphrase again').fill('correct horse battery');
    await bob.getByRole('button', { name: 'Encrypt export' }).click();
    const [download] = await Promise.all([bob.waitForEvent('download'), bob.getByRole('link', { name: /Download kez-chat-bob\.json/ }).click()]);
    const file = await download.path();

    const { page: laptop, context } = await newUser(browser, server);
    await laptop.getByText('Move an identity from another device').click();
    await laptop.getByLabel('Identity export file').setInputFiles(file);
    await laptop.getByLabel('Passphrase', { exact: true }).fill('wrong passphrase');
    await laptop.getByRole('button', { name: 'Import identity' }).click();
    await expect.poll(() => laptop.getByRole('alert').textContent()).toMatch(/Wrong passphrase/);
    await laptop.getByLabel('Passphrase', { exact: true }).fill('correct horse battery');
    await laptop.getByRole('button', { name: 'Import identity' }).click();
    await laptop.getByText('Signed in as @bob').waitFor();
    // The imported keys are bob's: a message to bob opens on the new device.
    await send(alice, 'for bob on his laptop');
    await laptop.locator('a[data-peer="alice"]').click();
    await bubble(laptop, 'for bob on his laptop').waitFor({ timeout: 10_000 });
    await context.close();
  });

  it('the app shell loads offline from the service worker', async () => {
    await bob.goto('/#/chat/carol');
    await bob.evaluate(() => navigator.serviceWorker.ready);
    await expect.poll(() => bob.evaluate(() => !!navigator.serviceWorker.controller)).toBe(true);
    await bob.context().setOffline(true);
    try {
      await bob.reload();
      await bob.getByText('Signed in as @bob').waitFor();
      // The open chat, from IndexedDB.
      await bubble(bob, 'from the terminal, with love').waitFor();
      await expect.poll(() => bob.locator('[data-status]').getAttribute('data-status')).toBe('reconnecting');
      await openChat(alice, 'bob');
      await send(alice, 'while you were offline');
      await expect.poll(() => bubble(alice, 'while you were offline').getAttribute('data-state')).toBe('sent');
    } finally {
      await bob.context().setOffline(false);
    }
    // Reconnected with fresh auth, the stream resumes after the last seq seen.
    await expect.poll(() => bob.locator('[data-status]').getAttribute('data-status'), { timeout: 20_000 }).toBe('live');
    await expect.poll(() => bob.locator('a[data-peer="alice"]').textContent(), { timeout: 10_000 }).toMatch(/while you were offline/);
  });
});

describe('a server that swaps a key is caught', () => {
  let server: ChatServer;
  let proxy: Awaited<ReturnType<typeof startSwappingProxy>>;
  let browser: Browser;

  beforeAll(async () => {
    server = await startServer();
    proxy = await startSwappingProxy(server.url);
    browser = await launchBrowser();
  });

  afterAll(async () => {
    await browser?.close();
    await proxy?.stop();
    await server?.stop();
  });

  async function safetyNumber(page: Page, button: string): Promise<string> {
    await page.getByRole('button', { name: button }).click();
    const digits = page.getByTestId('safety-number');
    await digits.waitFor();
    await page.getByTestId('safety-qr').waitFor(); // the code is drawn too
    const n = (await digits.textContent())!.replace(/\s+/g, '');
    await page.getByRole('button', { name: 'Done' }).click();
    await digits.waitFor({ state: 'detached' });
    return n;
  }

  it('warns in the conversation, sends nothing to the swapped key, and shows safety numbers both sides can compare', async () => {
    // Alice reaches the server through the proxy; bob directly.
    const alice = (await newUser(browser, { ...server, url: proxy.url })).page;
    const bob = (await newUser(browser, server)).page;
    await register(alice, 'alice');
    await register(bob, 'bob');
    await openChat(alice, 'bob');
    await send(alice, 'first contact pins your keys');
    await expect.poll(() => bubble(alice, 'first contact pins your keys').getAttribute('data-state')).toBe('sent');
    await bob.locator('a[data-peer="alice"]').click();
    await bubble(bob, 'first contact pins your keys').waitFor({ timeout: 10_000 });

    // Both sides show one safety number, and the Go CLI computes the same.
    const fromAlice = await safetyNumber(alice, 'Safety number');
    const fromBob = await safetyNumber(bob, 'Safety number');
    expect(fromAlice).toMatch(/^\d{60}$/);
    expect(fromBob).toBe(fromAlice);
    await server.cli('carol', 'keygen');
    await server.cli('carol', 'register', 'carol');
    await openChat(bob, 'carol');
    const { stdout } = await server.cli('carol', 'safety-number', 'bob');
    expect(stdout.replace(/\D/g, '')).toBe(await safetyNumber(bob, 'Safety number'));

    // The server now answers carol's keys under bob's handle.
    const carol = await (await fetch(`${server.url}/v1/u/carol`)).json();
    proxy.swap('bob', { ...carol, handle: 'bob' });
    await alice.reload();
    await alice.getByText('Signed in as @alice').waitFor();
    await alice.locator('a[data-peer="bob"]').click();
    const warning = alice.getByTestId('key-warning');
    await warning.waitFor({ timeout: 10_000 });
    expect(await warning.textContent()).toMatch(/The keys of @bob changed/);
    await alice.screenshot({ path: artifactsDir() + 'key-warning-desktop.png' });

    const before = proxy.posted();
    await send(alice, 'this must not reach the swapped key');
    await expect.poll(() => bubble(alice, 'this must not reach the swapped key').getAttribute('data-state')).toBe('failed');
    expect(proxy.posted()).toBe(before);

    // The new number is not the one bob shows: comparing catches the swap.
    await alice.getByRole('button', { name: 'Compare safety numbers' }).click();
    await alice.getByTestId('safety-qr').waitFor();
    await alice.screenshot({ path: artifactsDir() + 'safety-number-desktop.png' });
    await alice.getByRole('button', { name: 'Done' }).click();
    const proposed = await safetyNumber(alice, 'Compare safety numbers');
    expect(proposed).toMatch(/^\d{60}$/);
    expect(proposed).not.toBe(fromBob);

    // Accepting (here, wrongly) is the person's choice: the warning goes,
    // and the conversation's safety number is the accepted one.
    await alice.getByRole('button', { name: 'Accept the new keys' }).click();
    await warning.waitFor({ state: 'detached' });
    expect(await safetyNumber(alice, 'Safety number')).toBe(proposed);
  });
});
