// Sending files: each file (scaled down first when the person asks) and each
// image's thumbnail encrypted here and uploaded with progress, then the
// message naming them sent (docs/protocol.md, "Attachments").

import * as api from './api';
import { encryptAttachment, fitWithin, isInlineImage, renderImage, shouldDownscale, thumbSize, DOWNSCALE_MAX } from './attachments';
import type { Chat, Uploaded } from './chat.svelte';
import type { Attachment, Reply } from './conversation';
import { MAX_ATTACHMENTS } from './conversation';

interface Prepared {
  bytes: Uint8Array<ArrayBuffer>;
  type: string;
  name: string;
  width?: number;
  height?: number;
  thumb?: { bytes: Uint8Array<ArrayBuffer>; width: number; height: number };
}

async function prepare(file: File, downscale: boolean): Promise<Prepared> {
  let bytes = new Uint8Array(await file.arrayBuffer());
  const out: Prepared = { bytes, type: file.type || 'application/octet-stream', name: file.name || 'file' };
  if (!isInlineImage(out.type)) return out;
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    return out; // not an image this browser reads: sent as a file
  }
  try {
    out.width = bitmap.width;
    out.height = bitmap.height;
    if (downscale && shouldDownscale(bitmap.width, bitmap.height, bytes.length)) {
      const size = fitWithin(bitmap.width, bitmap.height, DOWNSCALE_MAX);
      const r = await renderImage(bitmap, size, 0.85);
      bytes = r.bytes;
      Object.assign(out, { bytes, type: r.type, width: size.width, height: size.height });
    }
    const t = thumbSize(bitmap.width, bitmap.height);
    const thumb = await renderImage(bitmap, t, 0.7);
    out.thumb = { bytes: thumb.bytes, width: t.width, height: t.height };
  } finally {
    bitmap.close();
  }
  return out;
}

/**
 * Shows the message at once (with its upload's progress), uploads every
 * file and thumbnail, then sends it. A failed upload marks it not sent,
 * and Retry uploads the files again.
 */
export async function sendWithFiles(chat: Chat, conv: string, text: string, files: File[], opts: { downscale: boolean; reply?: Reply }): Promise<void> {
  if (files.length > MAX_ATTACHMENTS) throw new Error(`At most ${MAX_ATTACHMENTS} files in one message.`);
  const m = await chat.draft(conv, text, opts.reply);
  if (!m) return;
  await chat.upload(m, () => uploadAll(chat, m.mid, files, opts.downscale));
}

/** Prepares, encrypts and uploads every file (and thumbnail), keeping each on this device: what the message names. */
async function uploadAll(chat: Chat, mid: string, files: File[], downscale: boolean): Promise<Uploaded> {
  const prepared = await Promise.all(files.map((f) => prepare(f, downscale)));
  const sealed = await Promise.all(prepared.map(async (p) => ({ p, file: await encryptAttachment(p.bytes), thumb: p.thumb ? await encryptAttachment(p.thumb.bytes) : undefined })));
  const total = sealed.reduce((n, s) => n + s.file.blob.length + (s.thumb?.blob.length ?? 0), 0);
  let done = 0;
  const upload = async (blob: Uint8Array<ArrayBuffer>) => {
    const r = await api.uploadBlob(chat.me, blob, (sent) => chat.progress.set(mid, Math.min(1, (done + sent) / total)));
    done += blob.length;
    chat.progress.set(mid, done / total);
    return r.id;
  };
  const attachments: Attachment[] = [];
  const blobs: string[] = [];
  for (const { p, file, thumb } of sealed) {
    const id = await upload(file.blob);
    await chat.keepFile(id, p.bytes, p.type, p.name);
    const a: Attachment = { blob: id, key: file.key, sha256: file.sha256, size: p.bytes.length, type: p.type, name: p.name };
    blobs.push(id);
    if (p.width && p.height) Object.assign(a, { width: p.width, height: p.height });
    if (thumb && p.thumb) {
      const tid = await upload(thumb.blob);
      await chat.keepFile(tid, p.thumb.bytes, 'image/*');
      a.thumb = { blob: tid, key: thumb.key, sha256: thumb.sha256, size: p.thumb.bytes.length, width: p.thumb.width, height: p.thumb.height };
      blobs.push(tid);
    }
    attachments.push(a);
  }
  return { attachments, blobs };
}
