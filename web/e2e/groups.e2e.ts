// Three people in one group, in three browsers, against the real server:
// group changes, group sends through POST /v1/batch, receipts, typing,
// replies and reactions, a removed member, a reload and the offline shell.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { artifactsDir, bubble, launchBrowser, newUser, register, startServer, type ChatServer } from './harness';

async function sendInOpen(page: Page, body: string): Promise<void> {
  await page.locator('#composer').fill(body);
  await page.locator('#composer').press('Enter');
}

const groupRow = (page: Page) => page.locator('a[data-conv^="g:"]');

describe('three people in one group, against the real server', () => {
  let server: ChatServer;
  let browser: Browser;
  let alice: Page;
  let bob: Page;
  let carol: Page;
  const shot = (page: Page, name: string) => page.screenshot({ path: artifactsDir() + `group-${name}.png` });

  beforeAll(async () => {
    server = await startServer();
    browser = await launchBrowser();
    alice = (await newUser(browser, server)).page;
    bob = (await newUser(browser, server)).page;
    carol = (await newUser(browser, server)).page;
  });

  afterAll(async () => {
    await browser?.close();
    await server?.stop();
  });

  it('three people sign up, each live', async () => {
    for (const [p, h] of [
      [alice, 'alice'],
      [bob, 'bob'],
      [carol, 'carol'],
    ] as const) {
      await register(p, h);
      await expect.poll(() => p.locator('[data-status]').getAttribute('data-status'), { timeout: 15_000 }).toBe('live');
    }
  });

  it('alice creates a group with bob; bob sees it live', async () => {
    await alice.getByRole('button', { name: 'New group' }).click();
    await alice.getByLabel('Name').fill('team');
    await alice.getByLabel(/^Members/).fill('bob');
    await alice.getByRole('button', { name: 'Create group' }).click();
    await alice.getByRole('heading', { name: 'team' }).waitFor();
    await alice.getByTestId('note').filter({ hasText: 'alice created "team"' }).waitFor();
    await groupRow(bob).waitFor({ timeout: 15_000 });
    await groupRow(bob).click();
    await bob.getByRole('heading', { name: 'team' }).waitFor();
    await shot(alice, 'created');
  });

  it('alice adds carol, who sees the group and its change', async () => {
    await alice.getByRole('button', { name: 'Members' }).click();
    await alice.getByLabel('Handles to add').fill('carol');
    await alice.getByRole('button', { name: 'Add', exact: true }).click();
    await alice.locator('li[data-member="carol"]').waitFor();
    await shot(alice, 'members');
    await alice.getByRole('button', { name: 'Close' }).click();
    await groupRow(carol).waitFor({ timeout: 15_000 });
    await groupRow(carol).click();
    await carol.getByTestId('note').filter({ hasText: 'alice added you to "team"' }).waitFor();
    await alice.getByTestId('note').filter({ hasText: 'alice added carol' }).waitFor();
  });

  it('messages go both ways with delivered and read receipts, "seen by" in the group', async () => {
    await sendInOpen(alice, 'hello team');
    await bubble(bob, 'hello team').waitFor({ timeout: 15_000 });
    await bubble(carol, 'hello team').waitFor({ timeout: 15_000 });
    // Both have the group open and visible: read at once.
    await expect.poll(() => bubble(alice, 'hello team').getAttribute('data-tick'), { timeout: 15_000 }).toBe('read');
    await expect.poll(() => bubble(alice, 'hello team').getByTestId('seen-by').textContent()).toBe('Seen by @bob, @carol');
    await sendInOpen(bob, 'hi alice, bob here');
    await bubble(alice, 'hi alice, bob here').waitFor({ timeout: 15_000 });
    await expect.poll(() => bubble(alice, 'hi alice, bob here').textContent()).toMatch(/@bob/);
    await shot(alice, 'receipts');
  });

  it('typing shows for the others', async () => {
    await bob.locator('#composer').pressSequentially('typing something', { delay: 20 });
    await expect.poll(() => alice.getByTestId('typing').textContent(), { timeout: 10_000 }).toBe('@bob is typing…');
    await shot(alice, 'typing');
    await bob.locator('#composer').fill('');
    await bob.locator('#composer').press('Backspace');
  });

  it('a reply quotes, a reaction shows on everyone', async () => {
    const msg = bubble(bob, 'hello team');
    await msg.getByRole('button', { name: 'Message actions' }).click();
    await msg.getByRole('button', { name: 'Reply' }).click();
    await bob.getByTestId('reply-preview').waitFor();
    await sendInOpen(bob, 'replying to you');
    const reply = bubble(alice, 'replying to you');
    await reply.waitFor({ timeout: 15_000 });
    await expect.poll(() => reply.getByTestId('quote').textContent()).toMatch(/hello team/);

    const onCarol = bubble(carol, 'hello team').first();
    await onCarol.getByRole('button', { name: 'Message actions' }).click();
    await onCarol.getByRole('button', { name: 'React 👍' }).click();
    await expect.poll(() => bubble(alice, 'hello team').first().getByTestId('reactions').textContent(), { timeout: 15_000 }).toMatch(/👍\s*1/);
    await shot(alice, 'reply-reaction');
  });

  it('a removed member learns it and stops receiving', async () => {
    await alice.getByRole('button', { name: 'Members' }).click();
    await alice.locator('li[data-member="carol"]').getByRole('button', { name: 'Remove' }).click();
    await expect.poll(() => alice.locator('li[data-member="carol"]').count()).toBe(0);
    await alice.getByRole('button', { name: 'Close' }).click();
    await expect.poll(() => groupRow(carol).count(), { timeout: 15_000 }).toBe(0);
    await sendInOpen(alice, 'only for bob now');
    await bubble(bob, 'only for bob now').waitFor({ timeout: 15_000 });
    await bob.getByTestId('note').filter({ hasText: 'alice removed carol' }).waitFor();
    // Carol's inbox got nothing of it: the group send went to bob alone.
    await carol.reload();
    await carol.getByText('Signed in as @carol').waitFor();
    await expect.poll(() => carol.getByText('only for bob now').count()).toBe(0);
    await shot(carol, 'removed');
  });

  it('a reload keeps the group, and the offline shell still opens it', async () => {
    await bob.reload();
    await bob.getByText('Signed in as @bob').waitFor();
    await groupRow(bob).click();
    await bubble(bob, 'only for bob now').waitFor();
    await bob.evaluate(() => navigator.serviceWorker.ready);
    await expect.poll(() => bob.evaluate(() => !!navigator.serviceWorker.controller)).toBe(true);
    await bob.context().setOffline(true);
    try {
      await bob.reload();
      await bob.getByText('Signed in as @bob').waitFor();
      await bubble(bob, 'replying to you').waitFor();
      await shot(bob, 'offline');
    } finally {
      await bob.context().setOffline(false);
    }
  });
});
