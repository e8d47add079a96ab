// Two people on two servers (docs/protocol.md, "Federation"): each web app
// talks only to its own server for what it sends and reads, and fetches the
// other person's record and keys from the other person's server.

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { artifactsDir, bubble, launchBrowser, newUser, openChat, register, send, startServer, type ChatServer } from './harness';

describe('people on two federated servers, in two browsers', () => {
  let one: ChatServer;
  let two: ChatServer;
  let browser: Browser;
  let alice: Page;
  let bob: Page;
  let aliceAddr: string;
  let bobAddr: string;

  beforeAll(async () => {
    [one, two] = await Promise.all([startServer({ federated: true, sigServer: true }), startServer({ federated: true, sigServer: true })]);
    aliceAddr = `alice@${one.domain}`;
    bobAddr = `bob@${two.domain}`;
    browser = await launchBrowser();
    alice = (await newUser(browser, one)).page;
    bob = (await newUser(browser, two)).page;
    await register(alice, 'alice');
    await register(bob, 'bob');
  });

  afterAll(async () => {
    await browser?.close();
    await Promise.all([one?.stop(), two?.stop()]);
  });

  it('an address of no one on the other server gets a clear message', async () => {
    await alice.getByLabel('Handle to chat with').fill(`nobody@${two.domain}`);
    await alice.getByRole('button', { name: 'Chat', exact: true }).click();
    await expect.poll(() => alice.getByRole('alert').textContent()).toMatch(/No one is called @nobody@127\.0\.0\.1:\d+|Could not reach @nobody/);
  });

  it('alice writes to bob@<the other server>: relayed by her server, delivered, and a request at bob', async () => {
    await openChat(alice, bobAddr);
    await send(alice, 'hello bob, from the other server');
    const mine = bubble(alice, 'hello bob, from the other server');
    await expect.poll(() => mine.getAttribute('data-state')).toBe('sent');
    // Pending while queued in her server's outbox, until bob's server took it.
    await expect.poll(() => mine.getAttribute('data-relay'), { timeout: 20_000 }).toBe('delivered');

    const row = bob.locator(`a[data-peer="${aliceAddr}"]`);
    await row.waitFor({ timeout: 15_000 });
    await expect.poll(() => row.textContent()).toMatch(/hello bob, from the other server/);
    await row.getByTestId('request-badge').waitFor();
    await row.click();
    await bubble(bob, 'hello bob, from the other server').waitFor();
    const request = bob.getByTestId('request');
    await request.waitFor();
    expect(await request.textContent()).toContain(`@${aliceAddr}`);
    await bob.screenshot({ path: artifactsDir() + 'federation-request-desktop.png' });
    // Nothing told alice that bob read it while it was a request.
    expect(await mine.getAttribute('data-tick')).toBe('sent');
    await request.getByRole('button', { name: 'Accept' }).click();
    await request.waitFor({ state: 'detached' });
  });

  it('bob replies; alice reads it, and her message shows delivered and read', async () => {
    await send(bob, 'hi alice, across servers 👋');
    const reply = bubble(bob, 'hi alice, across servers 👋');
    await expect.poll(() => reply.getAttribute('data-relay'), { timeout: 20_000 }).toBe('delivered');

    const row = alice.locator(`a[data-peer="${bobAddr}"]`);
    await expect.poll(() => row.textContent(), { timeout: 15_000 }).toMatch(/hi alice, across servers/);
    await bubble(alice, 'hi alice, across servers 👋').waitFor();
    expect(await bubble(alice, 'hi alice, across servers 👋').getAttribute('data-mine')).toBe('false');
    // bob's receipts came back over the federation as any message.
    await expect.poll(() => bubble(alice, 'hello bob, from the other server').getAttribute('data-tick'), { timeout: 20_000 }).toMatch(/delivered|read/);
    // Her conversation with bob is no request: she wrote first.
    expect(await alice.getByTestId('request').count()).toBe(0);
    await alice.screenshot({ path: artifactsDir() + 'federation-chat-desktop.png' });
  });

  it('both sides show one safety number, made of their addresses', async () => {
    async function safety(page: Page): Promise<string> {
      await page.getByRole('button', { name: 'Safety number' }).click();
      const digits = page.getByTestId('safety-number');
      await digits.waitFor();
      const n = (await digits.textContent())!.replace(/\s+/g, '');
      await page.getByRole('button', { name: 'Done' }).click();
      await digits.waitFor({ state: 'detached' });
      return n;
    }
    const a = await safety(alice);
    expect(a).toMatch(/^\d{60}$/);
    expect(await safety(bob)).toBe(a);
  });

  it("alice's typing reaches bob through both servers, shown by her address", async () => {
    await alice.locator('#composer').pressSequentially('typing across', { delay: 20 });
    await expect.poll(() => bob.getByTestId('typing').textContent(), { timeout: 10_000 }).toBe(`@${aliceAddr} is typing…`);
    await bob.screenshot({ path: artifactsDir() + 'federation-typing-desktop.png' });
    // Cleared: she stopped, and bob sees that at once (well before the 6 s run out).
    await alice.locator('#composer').fill('');
    await expect.poll(() => bob.getByTestId('typing').textContent(), { timeout: 5_000 }).toBe('');
  });

  it('a stranger alice blocks is refused by her server: its sender sees why', async () => {
    const { page: carol, context } = await newUser(browser, two);
    await register(carol, 'carol');
    await openChat(carol, aliceAddr);
    await send(carol, 'buy my stuff');
    await expect.poll(() => bubble(carol, 'buy my stuff').getAttribute('data-relay'), { timeout: 20_000 }).toBe('delivered');

    const row = alice.locator(`a[data-peer="carol@${two.domain}"]`);
    await row.waitFor({ timeout: 15_000 });
    await row.click();
    await alice.getByTestId('request').getByRole('button', { name: `Block @carol@${two.domain}` }).click();
    await alice.getByTestId('blocked').waitFor();

    await send(carol, 'are you there?');
    const refused = bubble(carol, 'are you there?');
    await expect.poll(() => refused.getAttribute('data-relay'), { timeout: 20_000 }).toBe('failed');
    await expect.poll(() => refused.getByTestId('relay').textContent()).toMatch(/they blocked you/);
    await carol.screenshot({ path: artifactsDir() + 'federation-blocked-desktop.png' });
    expect(await bubble(alice, 'are you there?').count()).toBe(0);
    // bob, on the same server as carol, still reaches alice.
    await send(bob, 'still here');
    await expect.poll(() => bubble(bob, 'still here').getAttribute('data-relay'), { timeout: 20_000 }).toBe('delivered');
    await context.close();
  });

  it('with "only people I accepted" on, a new stranger is refused and bob still gets through', async () => {
    await alice.goto('/#/settings');
    const toggle = alice.getByRole('switch', { name: 'Only people I accepted, from other servers' });
    await expect.poll(() => toggle.getAttribute('aria-checked')).toBe('false');
    await toggle.click();
    await expect.poll(() => toggle.getAttribute('aria-checked')).toBe('true');
    await alice.goto('/#/chat');

    const { page: dave, context } = await newUser(browser, two);
    await register(dave, 'dave');
    await openChat(dave, aliceAddr);
    await send(dave, 'hello stranger');
    await expect.poll(() => bubble(dave, 'hello stranger').getAttribute('data-relay'), { timeout: 20_000 }).toBe('failed');
    await expect.poll(() => bubble(dave, 'hello stranger').getByTestId('relay').textContent()).toMatch(/only from people they know/);
    // Those alice chats with are known to her server from then on.
    await send(bob, 'through the wall');
    await expect.poll(() => bubble(bob, 'through the wall').getAttribute('data-relay'), { timeout: 20_000 }).toBe('delivered');
    await context.close();
  });

  it("a file from bob is fetched by alice's app from bob's server, byte-identical", async () => {
    const file = { name: 'notes.bin', mimeType: 'application/octet-stream', buffer: randomBytes(64 * 1024) };
    const fetchedFrom: string[] = [];
    alice.on('response', (r) => {
      if (r.request().method() === 'GET' && r.url().includes('/v1/blobs/') && r.ok()) fetchedFrom.push(new URL(r.url()).host);
    });
    await bob.getByTestId('file-input').setInputFiles([file]);
    await bob.getByRole('list', { name: 'Files to send' }).getByText(file.name).waitFor();
    await bob.locator('#composer').fill('the notes');
    await bob.locator('#composer').press('Enter');
    await expect.poll(() => bubble(bob, 'the notes').getAttribute('data-relay'), { timeout: 20_000 }).toBe('delivered');

    await alice.locator(`a[data-peer="${bobAddr}"]`).click();
    const link = bubble(alice, 'the notes').getByTestId('attachment-download');
    await link.waitFor({ timeout: 15_000 });
    expect(fetchedFrom).toEqual([two.domain]);
    const [download] = await Promise.all([alice.waitForEvent('download'), link.click()]);
    const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
    expect(sha(readFileSync((await download.path())!))).toBe(sha(file.buffer));
  });

  it('a group of people on both servers: alice creates it with bob@<two> and erin of her own server; everyone reads everyone', async () => {
    const { page: erin, context } = await newUser(browser, one);
    await register(erin, 'erin');
    const groupRow = (page: Page) => page.locator('a[data-conv^="g:"]');
    const sendInOpen = async (page: Page, body: string) => {
      await page.locator('#composer').fill(body);
      await page.locator('#composer').press('Enter');
    };
    await alice.getByRole('button', { name: 'New group' }).click();
    await alice.getByLabel('Name').fill('both sides');
    await alice.getByLabel(/^Members/).fill(`${bobAddr}, erin`);
    await alice.getByRole('button', { name: 'Create group' }).click();
    await alice.getByRole('heading', { name: 'both sides' }).waitFor();
    for (const p of [bob, erin]) {
      await groupRow(p).waitFor({ timeout: 20_000 });
      await groupRow(p).click();
      await p.getByRole('heading', { name: 'both sides' }).waitFor();
    }
    // bob reads alice by address, as the state carried her bare.
    await bob.getByTestId('note').filter({ hasText: `alice@${one.domain} created "both sides"` }).waitFor();

    await sendInOpen(bob, 'hello from two');
    await expect.poll(() => bubble(bob, 'hello from two').getAttribute('data-relay'), { timeout: 20_000 }).toBe('delivered');
    await bubble(alice, 'hello from two').waitFor({ timeout: 15_000 });
    await bubble(erin, 'hello from two').waitFor({ timeout: 15_000 });
    expect(await bubble(erin, 'hello from two').textContent()).toContain(`@${bobAddr}`);

    await sendInOpen(erin, 'hello from one');
    await bubble(bob, 'hello from one').waitFor({ timeout: 20_000 });
    await bubble(alice, 'hello from one').waitFor({ timeout: 15_000 });
    await bob.getByRole('button', { name: 'Members' }).click();
    await bob.locator(`li[data-member="alice@${one.domain}"]`).waitFor();
    await bob.locator(`li[data-member="erin@${one.domain}"]`).waitFor();
    await bob.locator('li[data-member="bob"]').waitFor();
    await bob.screenshot({ path: artifactsDir() + 'federation-group-members.png' });
    await bob.getByRole('button', { name: 'Close' }).click();
    await context.close();
  });

  it('interoperates with the Go CLI across the servers, both ways', async () => {
    await one.cli('frank', 'keygen');
    await one.cli('frank', 'register', 'frank');
    await one.cli('frank', 'send', '--insecure-loopback', bobAddr, 'from the terminal on the first server');
    const row = bob.locator(`a[data-peer="frank@${one.domain}"]`);
    await row.waitFor({ timeout: 20_000 });
    await row.click();
    await bubble(bob, 'from the terminal on the first server').waitFor();
    await bob.getByTestId('request').getByRole('button', { name: 'Accept' }).click();
    await send(bob, 'and back to the terminal');
    await expect.poll(() => bubble(bob, 'and back to the terminal').getAttribute('data-relay'), { timeout: 20_000 }).toBe('delivered');
    const { stdout } = await one.cli('frank', 'inbox', '--insecure-loopback');
    expect(stdout).toContain(`${bobAddr}: and back to the terminal`);
    // One safety number, the CLI's and the web app's.
    await bob.getByRole('button', { name: 'Safety number' }).click();
    const digits = (await bob.getByTestId('safety-number').textContent())!.replace(/\s+/g, '');
    await bob.getByRole('button', { name: 'Done' }).click();
    const cli = await one.cli('frank', 'safety-number', '--insecure-loopback', bobAddr);
    expect(cli.stdout.replace(/\D/g, '').slice(-60)).toBe(digits);
  });

  it('keeps screenshots at phone width', async () => {
    await bob.locator(`a[data-peer="${aliceAddr}"]`).click();
    await bubble(bob, 'hi alice, across servers 👋').waitFor();
    // On a phone the chat takes the whole screen.
    await bob.setViewportSize({ width: 390, height: 844 });
    await bob.screenshot({ path: artifactsDir() + 'federation-chat-phone.png' });
    await bob.setViewportSize({ width: 1280, height: 800 });
  });

  let gina: Page;
  const raffle = (page: Page) => page.locator('a[data-conv^="g:"]', { hasText: 'raffle' });
  const sendInOpen = async (page: Page, body: string) => {
    await page.locator('#composer').fill(body);
    await page.locator('#composer').press('Enter');
  };

  it('a group a stranger on the other server adds bob to is a request: accepted, his receipts go', async () => {
    gina = (await newUser(browser, one)).page;
    await register(gina, 'gina');
    await gina.getByRole('button', { name: 'New group' }).click();
    await gina.getByLabel('Name').fill('raffle');
    await gina.getByLabel(/^Members/).fill(`${bobAddr}, alice`);
    await gina.getByRole('button', { name: 'Create group' }).click();
    await gina.getByRole('heading', { name: 'raffle' }).waitFor();
    await sendInOpen(gina, 'win a prize');
    const mine = bubble(gina, 'win a prize');
    await expect.poll(() => mine.getAttribute('data-relay'), { timeout: 20_000 }).toBe('delivered');

    await raffle(bob).waitFor({ timeout: 20_000 });
    await raffle(bob).getByTestId('request-badge').waitFor();
    await raffle(bob).click();
    await bubble(bob, 'win a prize').waitFor();
    const request = bob.getByRole('region', { name: 'Group request' });
    await request.waitFor();
    expect(await request.textContent()).toContain(`@gina@${one.domain}, on the server ${one.domain}, added you to the group “raffle”`);
    await bob.screenshot({ path: artifactsDir() + 'federation-group-request.png' });
    // alice, of gina's own server, is not asked.
    await raffle(alice).waitFor({ timeout: 20_000 });
    expect(await raffle(alice).getByTestId('request-badge').count()).toBe(0);
    // Nothing told gina that bob has it while it was a request.
    expect(await mine.getAttribute('data-tick')).toBe('sent');

    await request.getByRole('button', { name: 'Accept' }).click();
    await request.waitFor({ state: 'detached' });
    await expect.poll(() => mine.getAttribute('data-tick'), { timeout: 20_000 }).toMatch(/delivered|read/);
  });

  it('alice refuses strangers: hank of the other server, whom gina adds later, is known to her server, so his messages reach her', async () => {
    const { page: hank, context } = await newUser(browser, two);
    await register(hank, 'hank');
    await gina.getByRole('button', { name: 'Members' }).click();
    await gina.locator('#group-add').fill(`hank@${two.domain}`);
    await gina.getByRole('button', { name: 'Add', exact: true }).click();
    await gina.locator(`li[data-member="hank@${two.domain}"]`).waitFor();
    await gina.getByRole('button', { name: 'Close' }).click();
    // alice's app reads the change, and tells her server hank is known.
    await raffle(alice).click();
    await alice.getByTestId('note').filter({ hasText: `gina added hank@${two.domain}` }).waitFor({ timeout: 20_000 });

    // gina is a stranger to hank: a request, which answering accepts.
    await raffle(hank).waitFor({ timeout: 20_000 });
    await raffle(hank).click();
    await hank.getByRole('region', { name: 'Group request' }).waitFor();
    await sendInOpen(hank, 'hank here');
    await expect.poll(() => bubble(hank, 'hank here').getAttribute('data-relay'), { timeout: 20_000 }).toBe('delivered');
    await bubble(alice, 'hank here').waitFor({ timeout: 15_000 });
    expect(await bubble(alice, 'hank here').textContent()).toContain(`@hank@${two.domain}`);
    await context.close();
  });

  it("bob's linked phone follows in the outbox what his laptop sends alice: delivered, then failed once she blocks him", async () => {
    const { page: phone, context } = await newUser(browser, two);
    await bob.goto('/#/settings');
    await bob.getByRole('button', { name: 'Link a device' }).click();
    const code = (await bob.getByTestId('link-code').textContent({ timeout: 15_000 }))!.trim();
    await phone.getByText('Join as a linked device').click();
    await phone.getByLabel(/^Link code/).fill(code);
    await phone.getByRole('button', { name: 'Join' }).click();
    await phone.getByTestId('join-check').waitFor({ timeout: 30_000 });
    await bob.getByTestId('link-check').waitFor({ timeout: 30_000 });
    await bob.getByRole('button', { name: 'The codes match: link it' }).click();
    await phone.getByText('Signed in as @bob').waitFor({ timeout: 30_000 });
    await bob.getByText(/now reads and sends as @bob/).waitFor();

    await bob.goto('/#/chat');
    await bob.locator(`a[data-peer="${aliceAddr}"]`).click();
    await send(bob, 'from the laptop, followed on the phone');
    await expect.poll(() => bubble(bob, 'from the laptop, followed on the phone').getAttribute('data-relay'), { timeout: 20_000 }).toBe('delivered');
    await phone.locator(`a[data-peer="${aliceAddr}"]`).click({ timeout: 20_000 });
    const copy = bubble(phone, 'from the laptop, followed on the phone');
    await expect.poll(() => copy.getAttribute('data-mine'), { timeout: 20_000 }).toBe('true');
    await expect.poll(() => copy.getAttribute('data-relay'), { timeout: 20_000 }).toBe('delivered');

    // alice blocks bob: his next message fails at her server, and both his devices say so.
    await alice.locator(`a[data-peer="${bobAddr}"]`).click();
    await alice.getByRole('button', { name: 'Block', exact: true }).click();
    await alice.getByTestId('blocked').waitFor();
    await send(bob, 'are we still talking?');
    await expect.poll(() => bubble(bob, 'are we still talking?').getAttribute('data-relay'), { timeout: 20_000 }).toBe('failed');
    const refused = bubble(phone, 'are we still talking?');
    await expect.poll(() => refused.getAttribute('data-relay'), { timeout: 20_000 }).toBe('failed');
    await expect.poll(() => refused.getByTestId('relay').textContent()).toMatch(/they blocked you/);
    await phone.screenshot({ path: artifactsDir() + 'federation-linked-device-outbox.png' });
    await context.close();
  });
});
