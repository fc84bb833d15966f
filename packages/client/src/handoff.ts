// Device presence and cross-device session handoff, on top of the client's public API only (KeelClientApi: any tab).
import {
  type DeviceId,
  type ErrorCode,
  type KeelError,
  PRESENCE_STALE_AFTER_MS,
  type PresenceRecord,
  PresenceRecordSchema,
  type PresenceSessionKind,
  type RestoredAssessmentSession,
  type RestoredBreathingSession,
  type SessionRecord,
  type SessionRecordOf,
  type SessionState,
  captureSession as captureSessionRecord,
  isPresenceLive,
  parsePresenceRecord,
  parseSessionRecord,
  rankDevices,
  resolveActiveSession,
  restoreSession as restoreSessionRecord,
} from '@keel/engine';
import { ObservableV2 } from 'lib0/observable';
import type * as Y from 'yjs';
import type { DocSpec, KeelClientApi } from './client-api.js';

/**
 * Presence lives in its own document: each device writes only its own entry of one Y.Map,
 * keyed by its device id, so two devices never write the same key. The devices of a user share
 * the root key and trust each other; the map does not (and need not) stop one from writing
 * another's entry, but readers drop entries whose key and `device` disagree.
 */
export const PRESENCE_DOC: DocSpec = { class: 'presence', name: 'devices' };
const PRESENCE_MAP = 'presence';
/** Sessions live in their own class's document, under this map, at one key (see `captureSession`). */
const HANDOFF_MAP = 'handoff';
const CURRENT_KEY = 'current';

/** Where a session is kept: breathing exercises in a breathing_session document, questionnaires in an assessment one. */
export type SessionDocSpec =
  | { readonly class: 'breathing_session'; readonly name: string }
  | { readonly class: 'assessment'; readonly name: string };

const CLASS_OF_KIND = { breathing: 'breathing_session', assessment: 'assessment' } as const;

/** What `restoreSession` gives for a document of class `S['class']`. */
export type RestoredSessionOf<S extends SessionDocSpec> = S['class'] extends 'breathing_session' ? RestoredBreathingSession : RestoredAssessmentSession;

/** What `announce` changes in this device's presence entry; what it leaves out stays as it was. */
export interface PresenceUpdate {
  /** The app is in use here (foreground). A first announcement defaults to true. */
  readonly active?: boolean;
  /** The session this device holds; `null` releases it. */
  readonly session?: { readonly sessionId: string; readonly kind: PresenceSessionKind } | null;
  readonly primary?: boolean;
  readonly subscriptionHolder?: boolean;
}

export interface SessionHandoffOptions {
  /** Wall clock, ms since the epoch; default `Date.now`. Every device must use real time (see `restoreSession`). */
  readonly now?: () => number;
  /** A device that said it is active renews `lastActiveAt` this often; 0 turns it off. Default a third of `staleAfterMs`. */
  readonly heartbeatMs?: number;
  /** An active claim not renewed for this long lapses. Default {@link PRESENCE_STALE_AFTER_MS}. */
  readonly staleAfterMs?: number;
}

export type SessionHandoffEvents = {
  /** The user's devices changed (this one or another): every valid entry, best-ranked first. */
  presence: (presences: readonly PresenceRecord[]) => void;
  /** A watched session document's handoff record changed; `undefined` when the session ended. */
  session: (spec: SessionDocSpec, record: SessionRecord | undefined) => void;
  /** A record another device wrote failed validation (it is ignored), or sending failed. */
  error: (error: KeelError) => void;
};

interface Watched {
  readonly spec: SessionDocSpec;
  readonly map: Y.Map<unknown>;
  readonly observer: () => void;
}

/**
 * Presence and handoff for one client (one device). Create it with {@link createSessionHandoff};
 * `close()` it before closing the client.
 */
export class SessionHandoff extends ObservableV2<SessionHandoffEvents> {
  readonly #client: KeelClientApi;
  readonly #now: () => number;
  readonly #staleAfterMs: number;
  readonly #presence: Y.Map<unknown>;
  readonly #watched = new Map<string, Watched>();
  #presences: PresenceRecord[] = [];
  #heartbeat: ReturnType<typeof setInterval> | undefined;
  #closed = false;
  readonly #onPresenceChange = (event: Y.YMapEvent<unknown>) => this.#readPresence(event.keysChanged);
  readonly #onCrisis = (active: boolean) => {
    const own = this.#own();
    if (own && own.crisisMode !== active) this.#writePresence({ ...own, crisisMode: active });
  };

  /** @internal Use {@link createSessionHandoff}. */
  constructor(client: KeelClientApi, presenceDoc: Y.Doc, options: SessionHandoffOptions = {}) {
    super();
    this.#client = client;
    this.#now = options.now ?? Date.now;
    this.#staleAfterMs = options.staleAfterMs ?? PRESENCE_STALE_AFTER_MS;
    this.#presence = presenceDoc.getMap(PRESENCE_MAP);
    this.#presence.observe(this.#onPresenceChange);
    client.on('crisis', this.#onCrisis);
    this.#readPresence(undefined);
    const heartbeatMs = options.heartbeatMs ?? Math.floor(this.#staleAfterMs / 3);
    if (heartbeatMs > 0) {
      this.#heartbeat = setInterval(() => {
        // The app closed the client first: nothing left to announce to.
        if (this.#client.status === 'closed') return this.close();
        const own = this.#own();
        if (own?.active) this.#writePresence({ ...own, lastActiveAt: this.#now() });
      }, heartbeatMs);
      // A heartbeat alone must not keep a Node process alive.
      (this.#heartbeat as unknown as { unref?: () => void }).unref?.();
    }
  }

  /** This device's id. */
  get device(): DeviceId {
    return this.#client.identity.device.deviceId;
  }

  /**
   * Updates this device's presence entry (merged with what it said before) and sends it at
   * once. `crisisMode` always mirrors the client's, `lastActiveAt` is stamped while active.
   */
  announce(update: PresenceUpdate = {}): PresenceRecord {
    this.#assertOpen();
    const prev = this.#own();
    const active = update.active ?? prev?.active ?? true;
    const session = update.session === null ? undefined : (update.session ?? prev?.session);
    const primary = update.primary ?? prev?.primary;
    const subscriptionHolder = update.subscriptionHolder ?? prev?.subscriptionHolder;
    // An idle device re-announcing (e.g. a flag) does not become "recently active".
    const lastActiveAt = active || !prev || prev.active ? this.#now() : prev.lastActiveAt;
    const record = PresenceRecordSchema.parse({
      device: this.device,
      active,
      lastActiveAt,
      crisisMode: this.#client.crisisMode,
      ...(session ? { session: { sessionId: session.sessionId, kind: session.kind } } : {}),
      ...(primary === undefined ? {} : { primary }),
      ...(subscriptionHolder === undefined ? {} : { subscriptionHolder }),
    });
    this.#writePresence(record);
    return record;
  }

  /** Every device's valid presence entry, best-ranked first (docs/design.md's device priority). */
  presences(): PresenceRecord[] {
    return rankDevices(this.#presences, this.#now(), { staleAfterMs: this.#staleAfterMs });
  }

  /**
   * The device that wins when the user's devices compete: the best-ranked one whose active
   * claim is current, so an active therapeutic session first. Every device computes the same
   * answer from the same entries. `undefined` when no device is active.
   */
  activeDevice(): DeviceId | undefined {
    const now = this.#now();
    return this.presences().find((p) => isPresenceLive(p, now, this.#staleAfterMs))?.device;
  }

  /** The device (and session) that wins when several active devices hold a session. */
  activeSession(): ReturnType<typeof resolveActiveSession> {
    return resolveActiveSession(this.#presences, this.#now(), { staleAfterMs: this.#staleAfterMs });
  }

  /**
   * Opens a session document and follows its handoff record ('session' events from now on);
   * resolves to the record this device has now. Watch early (e.g. when the app starts) so a
   * session captured elsewhere is already here when the person picks up this device.
   */
  async watchSession(spec: SessionDocSpec): Promise<SessionRecord | undefined> {
    return this.#readRecord(await this.#watch(spec), false);
  }

  /**
   * Hands a session to the user's other devices: stamps it with this device's clock and id,
   * stores it in the session's document (one record per document; a later capture replaces an
   * earlier one, and Yjs orders a capture made after seeing another's after it) and sends it at
   * once. A breathing exercise marks the client's therapeutic session active, so the write is
   * escalated to THERAPEUTIC_ACTIVE where the tier allows it. This device's presence entry now
   * names the session. For a running exercise `state.elapsedMs` is its running time now.
   * Resolves once written to the local document; it is persisted and sent right after (offline: on reconnect).
   */
  async captureSession<S extends SessionState>(spec: SessionDocSpec, state: S): Promise<SessionRecordOf<S>> {
    this.#assertOpen();
    // The moment the app described: taken before opening the document, which may take a while.
    const now = this.#now();
    if (CLASS_OF_KIND[state.kind] !== spec.class) throw new Error(`a ${state.kind} session belongs in a ${CLASS_OF_KIND[state.kind]} document, not ${spec.class}`);
    // Before the write: the client fixes an update's priority when it is queued.
    if (state.kind === 'breathing') this.#client.setTherapeuticSession(true);
    const watched = await this.#watch(spec);
    const record = captureSessionRecord(state, now, this.device);
    watched.map.set(CURRENT_KEY, record);
    this.announce({ session: { sessionId: record.sessionId, kind: record.kind } });
    this.#flushSoon();
    return record;
  }

  /**
   * Continues the session last captured in `spec`'s document on this device, at this device's
   * clock: a running breathing exercise at the phase it has reached meanwhile, a paused one
   * where it stopped, an assessment at the same item with the same answers. This device then
   * holds the session (presence, and an escalated therapeutic session for breathing).
   * `undefined` when there is none (or none has arrived yet: see `watchSession`).
   */
  async restoreSession<S extends SessionDocSpec>(spec: S): Promise<RestoredSessionOf<S> | undefined> {
    this.#assertOpen();
    const record = this.#readRecord(await this.#watch(spec), true);
    if (!record) return undefined;
    // #readRecord checked the record's kind against the document's class.
    const restored = restoreSessionRecord(record, this.#now()) as RestoredSessionOf<S>;
    if (restored.kind === 'breathing') this.#client.setTherapeuticSession(true);
    this.announce({ active: true, session: { sessionId: restored.sessionId, kind: restored.kind } });
    this.#flushSoon();
    return restored;
  }

  /** Ends a session: removes its handoff record and releases it from this device's presence. */
  async endSession(spec: SessionDocSpec): Promise<void> {
    this.#assertOpen();
    const watched = await this.#watch(spec);
    const record = this.#readRecord(watched, false);
    watched.map.delete(CURRENT_KEY);
    // The flush below sends the deletion at once either way; it need not be escalated.
    if (spec.class === 'breathing_session') this.#client.setTherapeuticSession(false);
    const held = this.#own()?.session;
    if (held && (!record || held.sessionId === record.sessionId)) this.announce({ session: null });
    this.#flushSoon();
  }

  /** Stops following presence and sessions and stops the heartbeat; the client stays open. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#heartbeat !== undefined) clearInterval(this.#heartbeat);
    this.#client.off('crisis', this.#onCrisis);
    this.#presence.unobserve(this.#onPresenceChange);
    for (const w of this.#watched.values()) w.map.unobserve(w.observer);
    this.#watched.clear();
    super.destroy();
  }

  async #watch(spec: SessionDocSpec): Promise<Watched> {
    const key = this.#client.docId(spec);
    const seen = this.#watched.get(key);
    if (seen) return seen;
    const doc = await this.#client.open(spec);
    this.#assertOpen();
    const again = this.#watched.get(key);
    if (again) return again;
    const map = doc.getMap<unknown>(HANDOFF_MAP);
    const watched: Watched = {
      spec,
      map,
      observer: () => this.emit('session', [spec, this.#readRecord(watched, true)]),
    };
    map.observe(watched.observer);
    this.#watched.set(key, watched);
    return watched;
  }

  #readRecord(watched: Watched, report: boolean): SessionRecord | undefined {
    const raw = watched.map.get(CURRENT_KEY);
    if (raw === undefined) return undefined;
    const parsed = parseSessionRecord(raw);
    if (parsed.ok && CLASS_OF_KIND[parsed.value.kind] === watched.spec.class) return parsed.value;
    if (report) this.emit('error', [parsed.ok ? { code: 'SCHEMA', message: `a ${parsed.value.kind} session in a ${watched.spec.class} document` } : parsed.error]);
    return undefined;
  }

  #own(): PresenceRecord | undefined {
    return this.#presences.find((p) => p.device === this.device);
  }

  #writePresence(record: PresenceRecord): void {
    if (this.#closed || this.#client.status === 'closed') return;
    this.#presence.set(record.device, record);
    this.#flushSoon();
  }

  /** Re-reads every entry; reports the bad ones among `changed` (each bad write once, not on every later change). */
  #readPresence(changed: ReadonlySet<string> | undefined): void {
    const valid: PresenceRecord[] = [];
    this.#presence.forEach((raw, key) => {
      const parsed = parsePresenceRecord(raw);
      if (parsed.ok && parsed.value.device === key) valid.push(parsed.value);
      else if (changed?.has(key)) this.emit('error', [parsed.ok ? { code: 'SCHEMA', message: 'a presence entry under another device id' } : parsed.error]);
    });
    this.#presences = valid;
    if (changed) this.emit('presence', [this.presences()]);
  }

  /** Sends now instead of at the tier's batch window; the handoff is what the person waits for. */
  #flushSoon(): void {
    this.#client.flush().catch((error: unknown) => {
      if (this.#closed || this.#client.status === 'closed') return;
      const code = ((error as { code?: ErrorCode }).code ?? 'INTERNAL') as ErrorCode;
      this.emit('error', [{ code, message: `handoff not sent yet: ${error instanceof Error ? error.message : String(error)}` }]);
    });
  }

  #assertOpen(): void {
    if (this.#closed) throw new Error('session handoff is closed');
  }
}

/**
 * Presence and session handoff for `client`'s device: opens the presence document (encrypted
 * like every document; on tiers without cross-device sync it stays on the device) and follows it.
 */
export const createSessionHandoff = async (client: KeelClientApi, options: SessionHandoffOptions = {}): Promise<SessionHandoff> => {
  const doc = await client.open(PRESENCE_DOC);
  return new SessionHandoff(client, doc, options);
};
