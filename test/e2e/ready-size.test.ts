import { createIdentity, linkNewDevice } from '@keel/client';
import { WireLimits, createEpochRecord, encodeFrame, generateEpochSecret } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { connectDevice } from '../support/devices.js';
import { connectRawDevice } from '../support/raw-device.js';
import { useTestScope } from '../support/scope.js';

/**
 * A device reads at most 1 MiB before `ready` (a stranger's server could send anything). So the
 * relay keeps every `ready` under that, whatever the user has: with 120 devices, 64 key epochs
 * sealed to all of them are ~2 MiB of records, and only the newest that fit are sent.
 */

const scope = useTestScope();

describe('the size of ready', () => {
  it('a user with 120 devices and 64 epochs sealed to all of them still gets a ready under 1 MiB, newest epochs first, and a client connects', async () => {
    const relay = await scope.relay({ env: { KEEL_RELAY_MAX_DEVICES_PER_USER: '200' } });
    const first = await createIdentity();
    const owner = await connectRawDevice(relay.url, first);
    scope.defer(() => owner.close());
    const linked = [];
    for (let i = 0; i < 119; i++) {
      const identity = await linkNewDevice(first);
      const raw = await connectRawDevice(relay.url, identity);
      await raw.close();
      linked.push(identity);
    }
    const recipients = new Map([first, ...linked].map((d) => [d.device.deviceId, d.device.publicKey] as const));
    let bytes = 0;
    for (let epoch = 1; epoch <= 64; epoch++) {
      const record = createEpochRecord(first.user.userId, epoch, first.device, generateEpochSecret(), recipients, Date.now(), first.recoveryKey);
      bytes += JSON.stringify(record).length;
      owner.sendFrame({ type: 'epoch', record });
      expect((await owner.next((f) => (f.type === 'epoch' && f.record.epoch === epoch) || f.type === 'error')).type).toBe('epoch');
    }
    expect(bytes).toBeGreaterThan(WireLimits.defaultMaxFrameBytes);

    const again = await connectRawDevice(relay.url, linked[0]!);
    scope.defer(() => again.close());
    const ready = again.received.find((f) => f.type === 'ready')!;
    expect(encodeFrame(ready).length).toBeLessThan(WireLimits.defaultMaxFrameBytes);
    expect(ready.type === 'ready' && ready.epochs?.at(-1)?.epoch).toBe(64);
    expect(ready.type === 'ready' && ready.certs).toHaveLength(120);

    const device = await connectDevice(relay.url, linked[1]!);
    scope.defer(() => device.client.close());
    await device.client.open({ class: 'safety_plan', name: 'main' });
    await device.client.whenSynced();
    expect(device.errors).toEqual([]);
  }, 60_000);
});
