import {
  type AwarenessEnvelope,
  type AwarenessFrame,
  type DeviceId,
  type DocId,
  ErrorCode,
  type KeelError,
  WireLimits,
  b64ByteLength,
  isAwarenessStale,
  openAwareness,
  sealAwareness,
} from '@keel/engine';
import * as decoding from 'lib0/decoding';
import { Awareness, applyAwarenessUpdate, encodeAwarenessUpdate, removeAwarenessStates } from 'y-protocols/awareness';
import type * as Y from 'yjs';
import type { Identity } from '../identity.js';
import type { DocKeys } from './doc-sync.js';

/** Origin of awareness states applied from the relay: never sent back. */
export const RELAY_AWARENESS_ORIGIN = 'keel-relay';

/** At most one awareness frame per document this often while states change (a typing burst). */
const DEFAULT_COALESCE_MS = 80;

/** Client ids one awareness update may carry: a device with a few tabs has a few. */
const MAX_CLIENTS_PER_UPDATE = 256;

/** Timers as a dependency, so tests can drive them. */
export interface AwarenessTimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface AwarenessSyncDeps {
  readonly identity: Identity;
  /** Sends a frame if the link is authenticated; false otherwise (awareness is then dropped: it is ephemeral). */
  readonly send: (frame: AwarenessFrame) => boolean;
  /** The verified key of a LIVE device of the user (revoked devices' cursors are never shown). */
  readonly liveKey: (device: DeviceId) => Uint8Array | undefined;
  readonly now: () => number;
  /**
   * Whether the tier lets anything cross between devices: without it the relay forwards no
   * awareness, so none is sent (the states stay local, for this device's tabs).
   */
  readonly crossDevice: () => boolean;
  readonly onError: (error: KeelError & { readonly doc: DocId }) => void;
  readonly coalesceMs?: number;
  readonly timers?: AwarenessTimers;
}

const GLOBAL_TIMERS: AwarenessTimers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/**
 * Reads the client ids an awareness update names (y-protocols' encoding: a count, then per
 * client its id, clock and JSON state), bounded; undefined when malformed.
 */
const clientIdsOf = (update: Uint8Array): number[] | undefined => {
  try {
    const decoder = decoding.createDecoder(update);
    const count = decoding.readVarUint(decoder);
    if (count > MAX_CLIENTS_PER_UPDATE) return undefined;
    const ids: number[] = [];
    for (let i = 0; i < count; i++) {
      ids.push(decoding.readVarUint(decoder));
      decoding.readVarUint(decoder);
      decoding.readVarString(decoder);
    }
    return ids;
  } catch {
    return undefined;
  }
};

/**
 * One open document's awareness: seals and sends what changes locally (coalesced), applies what
 * the user's other devices send once it verified and opened it, and forgets a device's states
 * when it goes. Never touches the document's sync: nothing here waits on, or holds up, an update.
 */
class DocAwareness {
  readonly awareness: Awareness;
  readonly #docId: DocId;
  readonly #keys: DocKeys;
  readonly #deps: AwarenessSyncDeps;
  readonly #timers: AwarenessTimers;
  readonly #coalesceMs: number;
  /** Client ids whose states came from other devices, with the device each came from. */
  readonly #remote = new Map<number, DeviceId>();
  /** The newest `at` applied from each device: anything not newer is a replay. */
  readonly #lastAt = new Map<DeviceId, number>();
  /** Devices answered with this device's full state since they (re)appeared. */
  readonly #answered = new Set<DeviceId>();
  /** Local client ids changed since the last frame. */
  readonly #dirty = new Set<number>();
  #timer: unknown;
  #lastSentAt = Number.NEGATIVE_INFINITY;
  #lastSealedAt = 0;
  #inUse = false;
  readonly #onUpdate: (change: { added: number[]; updated: number[]; removed: number[] }, origin: unknown) => void;

  constructor(docId: DocId, doc: Y.Doc, keys: DocKeys, deps: AwarenessSyncDeps) {
    this.awareness = new Awareness(doc);
    this.#docId = docId;
    this.#keys = keys;
    this.#deps = deps;
    this.#timers = deps.timers ?? GLOBAL_TIMERS;
    this.#coalesceMs = deps.coalesceMs ?? DEFAULT_COALESCE_MS;
    this.#onUpdate = ({ added, updated, removed }, origin) => {
      // Other devices' clients are never ours to send, whatever the origin (y-protocols times
      // them out itself, origin 'timeout'); a removed one is forgotten.
      const ours = [...added, ...updated, ...removed].filter((id) => !this.#remote.has(id));
      for (const id of removed) this.#remote.delete(id);
      // What the relay brought is never sent back; every other origin (this tab, other tabs of
      // this device, y-protocols' renewals and timeouts of this device's clients) is ours to send.
      if (origin === RELAY_AWARENESS_ORIGIN) return;
      for (const id of ours) this.#dirty.add(id);
      if (this.#dirty.size > 0) this.#schedule();
    };
    this.awareness.on('update', this.#onUpdate);
  }

  #schedule(): void {
    if (this.#timer !== undefined) return;
    const wait = Math.max(0, this.#lastSentAt + this.#coalesceMs - this.#deps.now());
    this.#timer = this.#timers.setTimeout(() => {
      this.#timer = undefined;
      this.flush();
    }, wait);
  }

  /** Sends the changed local states now. */
  flush(): void {
    const ids = [...this.#dirty];
    this.#dirty.clear();
    this.#send(ids);
  }

  /** Sends every local state this device holds (its own and its other tabs'): on subscribe, and to a newly seen device. */
  sendAll(): void {
    // Not the empty state every Awareness starts with (clock 0): y-protocols never applies it
    // elsewhere, and a client with a hundred documents open would spend its rate on nothing.
    const ids = [...this.awareness.states.keys()].filter((id) => !this.#remote.has(id) && (this.awareness.meta.get(id)?.clock ?? 0) > 0);
    this.#send(ids);
  }

  /**
   * The app uses this awareness (a provider handed it out): from now on this device announces
   * itself on every subscribe, even with nothing set yet, so the other devices answer with
   * their cursors at once. Documents nobody shows cursors for (crisis mode, assessments) never do.
   */
  use(): Awareness {
    if (!this.#inUse) {
      this.#inUse = true;
      this.announce();
    }
    return this.awareness;
  }

  /** Subscribed (again): documents in use announce every local state, the empty one included; others send only what is set. */
  announce(): void {
    if (!this.#inUse) return this.sendAll();
    this.#send([...this.awareness.states.keys()].filter((id) => !this.#remote.has(id)));
  }

  #send(ids: readonly number[]): void {
    if (!this.#deps.crossDevice()) return;
    const known = ids.filter((id) => this.awareness.meta.has(id));
    if (known.length === 0) return;
    const current = this.#keys.current();
    // No clean key epoch right now (a rotation is on its way): presence waits for the next change or renewal.
    if (!current) return;
    const update = encodeAwarenessUpdate(this.awareness, known);
    const now = this.#deps.now();
    // Strictly increasing per device, so a receiver can refuse anything not newer than what it applied.
    const at = Math.max(now, this.#lastSealedAt + 1);
    const aw = sealAwareness({ doc: this.#docId, epoch: current.epoch, device: this.#deps.identity.device.deviceId, at }, update, {
      key: current.key,
      signingKey: this.#deps.identity.device.secretKey,
    });
    if (b64ByteLength(aw.ct.length) > WireLimits.maxAwarenessBytes + 16) {
      this.#deps.onError({ code: ErrorCode.LIMIT_EXCEEDED, message: `awareness state of ${update.length} bytes is above ${WireLimits.maxAwarenessBytes}; not sent`, doc: this.#docId });
      return;
    }
    this.#lastSealedAt = at;
    this.#lastSentAt = now;
    this.#deps.send({ type: 'awareness', aw });
  }

  /** An awareness envelope for this document from the relay: applied only if it verifies, opens and is fresh. */
  receive(aw: AwarenessEnvelope): void {
    // From a device not live here (revoked, or linked a moment ago and its certificate not here
    // yet), or under an epoch not adopted yet: dropped without an error. Those are races of
    // ephemeral frames around a revocation or a rotation, not tampering; the device's next
    // frame (a change, or the renewal within 15 s) shows it once it is known.
    if (!this.#deps.liveKey(aw.device) || !this.#keys.get(aw.epoch)) return;
    const refused = this.#refusal(aw);
    if (refused) return this.#deps.onError({ ...refused, doc: this.#docId });
    const authorKey = this.#deps.liveKey(aw.device)!;
    const key = this.#keys.get(aw.epoch)!;
    const opened = openAwareness(aw, { key, authorPublicKey: authorKey });
    if (!opened.ok) return this.#deps.onError({ ...opened.error, doc: this.#docId });
    const ids = clientIdsOf(opened.value);
    if (!ids) return this.#deps.onError({ code: ErrorCode.BAD_PAYLOAD, message: `awareness of ${aw.device} is not an awareness update`, doc: this.#docId });
    // A device may speak only for its own clients, never for this device's.
    if (ids.some((id) => id === this.awareness.clientID || (this.#remote.has(id) && this.#remote.get(id) !== aw.device) || (!this.#remote.has(id) && this.#isLocal(id)))) {
      return this.#deps.onError({ code: ErrorCode.NOT_AUTHORIZED, message: `awareness of ${aw.device} names clients of another device`, doc: this.#docId });
    }
    this.#lastAt.set(aw.device, aw.at);
    for (const id of ids) this.#remote.set(id, aw.device);
    try {
      applyAwarenessUpdate(this.awareness, opened.value, RELAY_AWARENESS_ORIGIN);
    } catch {
      return this.#deps.onError({ code: ErrorCode.BAD_PAYLOAD, message: `awareness of ${aw.device} holds a state that does not parse`, doc: this.#docId });
    }
    // A device seen for the first time since it (or this device) came online gets our states at once.
    if (!this.#answered.has(aw.device)) {
      this.#answered.add(aw.device);
      this.sendAll();
    }
  }

  /** A state this device holds for a client not from the relay: its own or another tab's. */
  #isLocal(id: number): boolean {
    return this.awareness.states.has(id);
  }

  #refusal(aw: AwarenessEnvelope): KeelError | undefined {
    if (aw.device === this.#deps.identity.device.deviceId) return { code: ErrorCode.NOT_AUTHORIZED, message: 'the relay sent this device its own awareness' };
    if (isAwarenessStale(aw.at, this.#deps.now())) return { code: ErrorCode.STALE, message: `awareness of ${aw.device} sealed at ${aw.at} is outside ${WireLimits.awarenessMaxAgeMs} ms of now` };
    const last = this.#lastAt.get(aw.device);
    if (last !== undefined && aw.at <= last) return { code: ErrorCode.STALE, message: `awareness of ${aw.device} is not newer than the last applied (a replay)` };
    return undefined;
  }

  /** Removes every state a device sent (it went offline), and answers it again when it returns. */
  forget(device: DeviceId): void {
    this.#answered.delete(device);
    const ids = [...this.#remote].filter(([, from]) => from === device).map(([id]) => id);
    for (const id of ids) this.#remote.delete(id);
    this.#drop(ids);
  }

  /**
   * Removes other devices' clients entirely: their states and their clocks. y-protocols keeps a
   * removed client's clock, and would then ignore the same state announced again when the device
   * (or this one) reconnects. Replays stay refused by the timestamp check, not by the clock.
   */
  #drop(ids: number[]): void {
    if (ids.length > 0) removeAwarenessStates(this.awareness, ids, RELAY_AWARENESS_ORIGIN);
    for (const id of ids) this.awareness.meta.delete(id);
  }

  /** The link went down: other devices' states are not current any more; they come back with the next frames. */
  forgetAll(): void {
    this.#answered.clear();
    const ids = [...this.#remote.keys()];
    this.#remote.clear();
    this.#drop(ids);
  }

  /** The document closes: other devices are told this device's states are gone, then nothing more is sent. */
  close(): void {
    const local = [...this.awareness.states.keys()].filter((id) => !this.#remote.has(id));
    // Removing them schedules a frame like any change; it goes now instead, the last one.
    if (local.length > 0) removeAwarenessStates(this.awareness, local, 'keel-close');
    this.#timers.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#dirty.clear();
    this.#send(local);
    this.awareness.off('update', this.#onUpdate);
    this.awareness.destroy();
  }
}

/**
 * Awareness of every open document (one y-protocols `Awareness` each, created with the doc):
 * routes frames from the relay to their document, sends full states after each subscribe, and
 * forgets the states of devices that went away.
 */
export class AwarenessSync {
  readonly #deps: AwarenessSyncDeps;
  readonly #docs = new Map<DocId, DocAwareness>();

  constructor(deps: AwarenessSyncDeps) {
    this.#deps = deps;
  }

  /** Creates the awareness of a document just opened. */
  attach(docId: DocId, doc: Y.Doc, keys: DocKeys): Awareness {
    const existing = this.#docs.get(docId);
    if (existing) return existing.awareness;
    const entry = new DocAwareness(docId, doc, keys, this.#deps);
    this.#docs.set(docId, entry);
    return entry.awareness;
  }

  /** The awareness of an open document for the app (a provider): see DocAwareness.use. */
  use(docId: DocId): Awareness | undefined {
    return this.#docs.get(docId)?.use();
  }

  /** The document closes: its states leave the other devices, and its awareness is destroyed. */
  detach(docId: DocId): void {
    const entry = this.#docs.get(docId);
    if (!entry) return;
    this.#docs.delete(docId);
    entry.close();
  }

  /** Subscribed to these documents (after connecting, or on opening one): send our full states. */
  subscribed(docIds: readonly DocId[]): void {
    for (const docId of docIds) this.#docs.get(docId)?.announce();
  }

  receive(aw: AwarenessEnvelope): void {
    // A document not open here: nothing to show it in.
    this.#docs.get(aw.doc)?.receive(aw);
  }

  /** The relay says a device's last connection closed. Only a hint: it removes cursors, nothing more. */
  gone(device: DeviceId): void {
    for (const entry of this.#docs.values()) entry.forget(device);
  }

  onLinkDown(): void {
    for (const entry of this.#docs.values()) entry.forgetAll();
  }

  close(): void {
    for (const docId of this.#docs.keys()) this.detach(docId);
  }
}
