import type { IncomingMessage, ServerResponse } from 'node:http';

export const sendJson = (res: ServerResponse, status: number, body: unknown): void => {
  const text = JSON.stringify(body);
  const headers: Record<string, string | number> = {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  };
  // Answered before the request body was read (too large, say): close the connection rather
  // than let Node drain a body of any size to keep it alive.
  if (!res.req.complete) headers.connection = 'close';
  res.writeHead(status, headers);
  res.end(text);
};

/** Reads a request body up to `limit` bytes; resolves undefined as soon as it is larger (the rest is not read). */
export const readBody = (req: IncomingMessage, limit: number): Promise<Buffer | undefined> =>
  new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.off('data', onData);
        req.pause();
        resolve(undefined);
        return;
      }
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
