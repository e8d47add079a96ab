// Linking a device against the real server and sig-server: the existing
// device shows a code, the new one joins with it, both show the same check
// code, and from then on both devices carry the conversation (sync copies).

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { artifactsDir, bubble, launchBrowser, newUser, openChat, register, send, startServer, type ChatServer } from './harness';

describe('a second device of one person, linked, in sync', () => {
  let server: ChatServer;
  let browser: Browser;
  let laptop: Page;
  let phone: Page;
  let bob: Page;
  const shot = (page: Page, name: string) => page.screenshot({ path: artifactsDir() + `link-${name}.png` });

  beforeAll(async () => {
    server = await startServer({ sigServer: true });
    browser = await launchBrowser();
    laptop = (await newUser(browser, server)).page;
    bob = (await newUser(browser, server)).page;
    phone = (await newUser(browser, server, { width: 390, height: 844 })).page;
  });

  afterAll(async () => {
    await browser?.close();
    await server?.stop();
  });

  it('alice and bob talk', async () => {
    await register(laptop, 'alice');
    await register(bob, 'bob');
    await openChat(laptop, 'bob');
    await send(laptop, 'before linking');
    await bob.locator('a[data-peer="alice"]').click();
    await bubble(bob, 'before linking').waitFor({ timeout: 15_000 });
  });

  it('the laptop shows a code, the phone joins with it, both show one check code', async () => {
    await laptop.getByRole('link', { name: 'Settings' }).click();
    await laptop.getByRole('button', { name: 'Link a device' }).click();
    const code = (await laptop.getByTestId('link-code').textContent({ timeout: 15_000 }))!.trim();
    expect(code).toMatch(/^kez-link:1:e2e\.test:alice:/);
    await shot(laptop, 'code');
    await phone.getByText('Join as a linked device').click();
    await phone.getByLabel(/^Link code/).fill(code);
    await phone.getByRole('button', { name: 'Join' }).click();
    const onPhone = await phone.getByTestId('join-check').textContent({ timeout: 30_000 });
    const onLaptop = await laptop.getByTestId('link-check').textContent({ timeout: 30_000 });
    expect(onPhone).toMatch(/^\d{6}$/);
    expect(onLaptop).toBe(onPhone);
    await shot(laptop, 'confirm');
    await laptop.getByRole('button', { name: 'The codes match: link it' }).click();
    await phone.getByText('Signed in as @alice').waitFor({ timeout: 30_000 });
    await laptop.getByText(/now reads and sends as @alice/).waitFor();
    await shot(phone, 'joined');
  });

  it('what one device sends shows on the other as its own, and bob reads both', async () => {
    await laptop.goto('/#/chat/bob');
    await send(laptop, 'from the laptop');
    await phone.locator('a[data-peer="bob"]').click({ timeout: 20_000 });
    await expect.poll(() => bubble(phone, 'from the laptop').getAttribute('data-mine'), { timeout: 20_000 }).toBe('true');
    await send(phone, 'from the phone');
    await bubble(bob, 'from the phone').waitFor({ timeout: 20_000 });
    await expect.poll(() => bubble(laptop, 'from the phone').getAttribute('data-mine'), { timeout: 20_000 }).toBe('true');
    await send(bob, 'hi both');
    await bubble(phone, 'hi both').waitFor({ timeout: 20_000 });
    await bubble(laptop, 'hi both').waitFor({ timeout: 20_000 });
    await shot(phone, 'in-sync');
  });

  it("both devices show bob the one safety number he sees: the identity's, not a device's", async () => {
    const safetyNumber = async (page: Page) => {
      await page.getByRole('button', { name: 'Safety number' }).click();
      const digits = page.getByTestId('safety-number');
      const n = (await digits.textContent({ timeout: 15_000 }))!.replace(/\s+/g, '');
      await page.getByRole('button', { name: 'Done' }).click();
      await digits.waitFor({ state: 'detached' });
      return n;
    };
    await bob.goto('/#/chat/alice');
    const fromBob = await safetyNumber(bob);
    expect(fromBob).toMatch(/^\d{60}$/);
    expect(await safetyNumber(laptop)).toBe(fromBob);
    await phone.goto('/#/chat/bob');
    expect(await safetyNumber(phone)).toBe(fromBob);
  });
});
