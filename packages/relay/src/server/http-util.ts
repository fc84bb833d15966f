import type { IncomingMessage, ServerResponse } from 'node:http';

/** Sends `body` as uncached JSON; closes the connection when the request's body was not read to its end. */
export const sendJson = (res: ServerResponse, status: number, body: unknown, extraHeaders: Readonly<Record<string, string>> = {}): void => {
  const text = JSON.stringify(body);
  const headers: Record<string, string | number> = {
    ...extraHeaders,
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  };
  // Answered before the request body was read (too large, too slow, say): rather than let Node
  // drain a body of any size, at any pace, to keep the connection alive.
  if (!res.req.complete) headers.connection = 'close';
  res.writeHead(status, headers);
  res.end(text);
};

export type BodyRead =
  | { readonly ok: true; readonly body: Buffer }
  /**
   * `too_large`: over the limit (the rest is not read). `timeout`: not complete within the time
   * allowed (a slow-loris body). `aborted`: the client went away; nobody is left to answer.
   */
  | { readonly ok: false; readonly reason: 'too_large' | 'timeout' | 'aborted' };

/**
 * Reads a request body of at most `limit` bytes within `timeoutMs` of the call. Never rejects;
 * on any outcome but success it stops reading (and pauses the request), so the caller answers
 * and the connection closes.
 */
export const readBody = (req: IncomingMessage, limit: number, timeoutMs: number): Promise<BodyRead> =>
  new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const settle = (result: BodyRead) => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onAborted);
      req.off('close', onAborted);
      if (!result.ok) req.pause();
      resolve(result);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) return settle({ ok: false, reason: 'too_large' });
      chunks.push(chunk);
    };
    const onEnd = () => settle({ ok: true, body: Buffer.concat(chunks) });
    // 'error' (ECONNRESET "aborted") or 'close' before 'end': the peer closed mid-body.
    const onAborted = () => settle({ ok: false, reason: 'aborted' });
    const timer = setTimeout(() => settle({ ok: false, reason: 'timeout' }), timeoutMs);
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onAborted);
    req.on('close', onAborted);
  });
