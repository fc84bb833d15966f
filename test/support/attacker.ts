/**
 * An attacker in its own process (forked by attacker-process.ts), so the load it makes — big
 * frames, floods, sockets that never read — costs the test's event loop nothing and the
 * honest devices' latency measured there is the relay's doing, not the attacker's.
 */
import { parseIdentity } from '@keel/client';
import { PROTOCOL_VERSION, parseRelayFrame, signChallenge } from '@keel/engine';
import { WebSocket } from 'ws';
import type { AttackPlan, AttackReport, FrameSpec, SocketPlan } from './attacker-plan.js';

const report: AttackReport = { opened: 0, authenticated: 0, sent: 0, closes: {}, refused: {}, errors: [] };
const open = new Set<WebSocket>();
let stopping = false;

const text = (spec: FrameSpec): string => (typeof spec === 'string' ? spec : `"${'x'.repeat(Math.max(0, spec.junk - 2))}"`);

const sendNow = (ws: WebSocket, data: string): Promise<boolean> =>
  new Promise((resolve) => {
    if (ws.readyState !== WebSocket.OPEN) return resolve(false);
    ws.send(data, (error) => resolve(!error));
  });

/** hello → challenge → auth → ready, as the device of `serialized`. */
const authenticate = async (ws: WebSocket, serialized: string): Promise<boolean> => {
  const identity = await parseIdentity(serialized);
  const { user, device, cert, chain } = identity;
  const frames: string[] = [];
  let wake: (() => void) | undefined;
  const onMessage = (data: Buffer) => {
    frames.push(data.toString('utf8'));
    wake?.();
  };
  ws.on('message', onMessage);
  const next = async (type: string, timeoutMs = 10_000): Promise<Record<string, unknown> | undefined> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      while (frames.length > 0) {
        const parsed = parseRelayFrame(frames.shift()!, 64 * 1024 * 1024);
        if (parsed.ok && parsed.value.type === type) return parsed.value as unknown as Record<string, unknown>;
      }
      if (Date.now() > deadline || ws.readyState !== WebSocket.OPEN) return undefined;
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, 50);
      });
    }
  };
  try {
    ws.send(JSON.stringify({ type: 'hello', v: PROTOCOL_VERSION, user: user.userId, device: device.deviceId, cert, ...(chain.length > 0 ? { chain } : {}) }));
    const challenge = await next('challenge');
    if (!challenge) return false;
    ws.send(JSON.stringify({ type: 'auth', sig: signChallenge(challenge.relay as string, challenge.nonce as string, user.userId, device.deviceId, device.secretKey) }));
    return (await next('ready')) !== undefined;
  } finally {
    ws.off('message', onMessage);
  }
};

const runSocket = async (url: string, plan: SocketPlan, deadline: number, localAddress: string | undefined): Promise<void> => {
  const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 256 * 1024 * 1024, ...(localAddress ? { localAddress } : {}) });
  ws.on('unexpected-response', (_req, res) => {
    report.refused[res.statusCode ?? 0] = (report.refused[res.statusCode ?? 0] ?? 0) + 1;
    res.resume();
    ws.terminate();
  });
  open.add(ws);
  const closed = new Promise<void>((resolve) => {
    ws.on('close', (code) => {
      report.closes[code] = (report.closes[code] ?? 0) + 1;
      open.delete(ws);
      resolve();
    });
  });
  ws.on('error', (error) => {
    if (report.errors.length < 20) report.errors.push(error.message);
  });
  const opened = await new Promise<boolean>((resolve) => {
    ws.once('open', () => resolve(true));
    ws.once('close', () => resolve(false));
  });
  if (!opened) return;
  report.opened++;
  if (plan.auth) {
    if (!(await authenticate(ws, plan.auth))) {
      ws.terminate();
      return;
    }
    report.authenticated++;
  }
  // A peer that never reads: the relay's replies pile up in its buffers, then TCP's.
  if (plan.read === false) ws.pause();
  const frames = plan.frames.map(text);
  for (let round = 0; round < (plan.rounds ?? 1) && !stopping && Date.now() < deadline; round++) {
    for (const frame of frames) {
      if (stopping || !(await sendNow(ws, frame))) break;
      report.sent++;
    }
    if (plan.gapMs) await new Promise((resolve) => setTimeout(resolve, plan.gapMs));
  }
  if (plan.hold) {
    // Keep the socket as it is until the plan ends, or for a while (or until the relay drops it).
    const holdMs = plan.hold === true ? deadline - Date.now() : Math.min(plan.hold, deadline - Date.now());
    await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, Math.max(0, holdMs)))]);
  }
  if (ws.readyState === WebSocket.OPEN) ws.close(1000);
  await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 1_000))]);
  ws.terminate();
  await closed;
};

const run = async (plan: AttackPlan): Promise<void> => {
  const deadline = Date.now() + plan.durationMs;
  const waves = plan.waves ?? 1;
  for (let wave = 0; wave < waves && !stopping && Date.now() < deadline; wave++) {
    await Promise.all(plan.sockets.map((socket) => runSocket(plan.url, socket, deadline, plan.localAddress)));
  }
};

process.on('message', (message: { type: 'start'; plan: AttackPlan } | { type: 'stop' }) => {
  if (message.type === 'start') {
    run(message.plan)
      .catch((error: unknown) => report.errors.push(error instanceof Error ? error.message : String(error)))
      .finally(() => process.send?.({ type: 'done', report }));
    return;
  }
  stopping = true;
  for (const ws of open) ws.terminate();
});
process.send?.({ type: 'ready' });
