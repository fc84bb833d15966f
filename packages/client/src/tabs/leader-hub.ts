// The leading tab's service to the other tabs: their documents' changes in and out, their calls,
// and the client's state mirrored to them.
import { assertNever, type DocId, ErrorCode } from '@keel/engine';
import { Awareness, encodeAwarenessUpdate } from 'y-protocols/awareness';
import * as Y from 'yjs';
import type { ClientError, ClientEvents, DocSpec } from '../client-api.js';
import type { PairingOffer } from '../pairing-host.js';
import type { KeelClient } from '../client.js';
import { type AwarenessChange, applyTabAwareness, changedClients, encodeAllStates } from './awareness-bridge.js';
import { CALLS, type CallMethod, type MirroredState, type TabEvent, type TabMessage } from './messages.js';
import { TabOrigin } from './origins.js';
import type { TabChannel } from './tab-channel.js';

/** How often the hub checks the values that change without an event (unconfirmed, last contact). */
const STATE_POLL_MS = 500;

const errorOf = (error: unknown): { code: string; message: string } => ({
  code: typeof (error as { code?: unknown })?.code === 'string' ? (error as { code: string }).code : 'INTERNAL',
  message: (error instanceof Error ? error.message : String(error)).slice(0, 4000),
});

/** The state followers mirror, as the leader's client has it now. */
export const stateOf = (client: KeelClient): MirroredState => ({
  status: client.status,
  tier: client.tier,
  crisisMode: client.crisisMode,
  devices: client.devices(),
  unconfirmed: client.unconfirmed,
  ...(client.lastContactAt !== undefined ? { lastContactAt: client.lastContactAt } : {}),
  ...(client.relayId !== undefined ? { relayId: client.relayId } : {}),
  stats: client.stats(),
});

/**
 * Where the leader gets a document's awareness: the client's provider (contract 2), whose
 * awareness the device shares with its other devices. Without one, the hub keeps an awareness
 * per document that only this device's tabs share.
 */
export type AwarenessSource = (spec: DocSpec) => Promise<{ readonly awareness: Awareness }>;

const stateKey = (state: MirroredState): string =>
  [
    state.status,
    state.tier.name,
    state.tier.since,
    state.crisisMode,
    state.devices.map((d) => `${d.device}:${d.issuer}`).join(','),
    state.unconfirmed,
    state.lastContactAt,
    state.relayId,
    JSON.stringify(state.stats),
  ].join('|');

/** What the leading tab gives its hub besides the client. */
export interface LeaderHubOptions {
  /** Reports a problem the hub itself found (a follower's bad input) to the leading tab's app. */
  readonly onProblem: (error: ClientError) => void;
  readonly awareness?: AwarenessSource | undefined;
  /** Signs the device out in every tab (the leading tab's own sign-out: it tells the others first). */
  readonly signOut: (options: { wipe?: boolean }) => Promise<void>;
}

export class LeaderHub {
  readonly #client: KeelClient;
  readonly #channel: TabChannel;
  /** Documents whose every change is broadcast, with the listener to remove on close. */
  readonly #watched = new Map<DocId, { spec: DocSpec; doc: Y.Doc; stop: () => void }>();
  /** Each document's awareness as the leader holds it, with what stops its broadcast. */
  readonly #awareness = new Map<DocId, Promise<{ awareness: Awareness; stop: () => void }>>();
  readonly #awarenessSource: AwarenessSource | undefined;
  /** Pairing offers started by followers, by the id the follower refers to them with. */
  readonly #pairings = new Map<string, PairingOffer>();
  readonly #listeners: (() => void)[] = [];
  readonly #poll: ReturnType<typeof setInterval>;
  #lastState = '';
  #closed = false;
  #pairingIds = 0;

  readonly #options: LeaderHubOptions;

  constructor(client: KeelClient, channel: TabChannel, options: LeaderHubOptions) {
    this.#client = client;
    this.#channel = channel;
    this.#options = options;
    this.#awarenessSource = options.awareness;
    const listen = <N extends keyof ClientEvents & string>(name: N, f: ClientEvents[N]) => {
      client.on(name, f);
      this.#listeners.push(() => client.off(name, f));
    };
    const stateChanged = () => this.broadcastState();
    listen('status', stateChanged);
    listen('tier', stateChanged);
    listen('crisis', stateChanged);
    listen('devices', stateChanged);
    listen('error', (error: ClientError) => this.#event({ name: 'error', error: { code: error.code, message: error.message, ...(error.doc ? { doc: error.doc } : {}), ...(error.final !== undefined ? { final: error.final } : {}) } }));
    listen('deferred', (info) => this.#event({ name: 'deferred', ...info }));
    listen('staged', (info) => this.#event({ name: 'staged', ...info }));
    this.#poll = setInterval(() => this.broadcastState(), STATE_POLL_MS);
  }

  /** Tells every tab this one leads: followers then send it their documents' state. */
  announce(to?: string): void {
    this.#channel.post({ type: 'leader', ...(to !== undefined ? { to } : {}) });
    this.broadcastState(to);
  }

  /** Broadcasts the client's state when it changed (or to one tab, always). */
  broadcastState(to?: string): void {
    if (this.#closed) return;
    const state = stateOf(this.#client);
    const key = stateKey(state);
    if (to === undefined && key === this.#lastState) return;
    if (to === undefined) this.#lastState = key;
    this.#channel.post({ type: 'state', state, ...(to !== undefined ? { to } : {}) });
  }

  /** Broadcasts every change of `doc`, whoever made it, so every tab converges on the leader's copy. */
  watch(docId: DocId, spec: DocSpec, doc: Y.Doc): void {
    if (this.#watched.has(docId)) return;
    const onUpdate = (update: Uint8Array, origin: unknown) => {
      this.#channel.post({ type: 'doc-update', doc: docId, update, ...(origin instanceof TabOrigin ? { origin: origin.tab } : {}) });
    };
    doc.on('update', onUpdate);
    this.#watched.set(docId, { spec, doc, stop: () => doc.off('update', onUpdate) });
  }

  /**
   * The leader's awareness of a watched document; every change of it (this tab's, a follower's,
   * another device's) is broadcast to the tabs, tagged with the tab it came from.
   */
  awarenessOf(docId: DocId): Promise<Awareness> | undefined {
    const watched = this.#watched.get(docId);
    if (!watched) return undefined;
    let entry = this.#awareness.get(docId);
    if (!entry) {
      const source = this.#awarenessSource;
      entry = (async () => {
        const awareness = source ? (await source(watched.spec)).awareness : new Awareness(watched.doc);
        const onUpdate = (change: AwarenessChange, origin: unknown) => {
          if (this.#closed) return;
          const update = encodeAwarenessUpdate(awareness, changedClients(change));
          this.#channel.post({ type: 'awareness', doc: docId, update, ...(origin instanceof TabOrigin ? { origin: origin.tab } : {}) });
        };
        awareness.on('update', onUpdate);
        // A provider's awareness is the provider's to end; one the hub made, the hub ends.
        return { awareness, stop: () => (awareness.off('update', onUpdate), source ? undefined : awareness.destroy()) };
      })();
      this.#awareness.set(docId, entry);
    }
    return entry.then((e) => e.awareness);
  }

  /** A message from a follower tab. Never throws: failures are answered or reported. */
  handle(message: TabMessage): void {
    if (this.#closed) return;
    switch (message.type) {
      case 'who-leads':
        this.announce(message.from);
        return;
      case 'open':
        void this.#open(message.from, message.id, message.spec, message.sv);
        return;
      case 'update':
        void this.#update(message.from, message.id, message.doc, message.update);
        return;
      case 'call':
        void this.#call(message.from, message.id, message.method, message.args);
        return;
      case 'awareness':
        if (message.to !== undefined) void this.#applyAwareness(message.from, message.doc, message.update);
        return;
      case 'awareness-sync':
        void this.awarenessOf(message.doc)?.then(
          (awareness) => {
            if (!this.#closed) this.#channel.post({ type: 'awareness', to: message.from, doc: message.doc, update: encodeAllStates(awareness) });
          },
          // The client closed meanwhile: the next leader answers.
          () => {},
        );
        return;
      case 'leader':
      case 'opened':
      case 'ack':
      case 'doc-update':
      case 'result':
      case 'state':
      case 'event':
        // Another tab that believes it leads, or answers meant for followers: nothing to do.
        return;
      default:
        return assertNever(message);
    }
  }

  async #open(from: string, id: number, spec: DocSpec, sv: Uint8Array): Promise<void> {
    try {
      const doc = await this.#client.open(spec);
      const docId = this.#client.docId(spec);
      this.watch(docId, spec, doc);
      let update: Uint8Array;
      try {
        update = Y.encodeStateAsUpdate(doc, sv);
      } catch {
        // A state vector that does not decode: the whole document instead.
        update = Y.encodeStateAsUpdate(doc);
      }
      this.#channel.post({ type: 'opened', to: from, id, doc: docId, update, sv: Y.encodeStateVector(doc), staged: this.#client.stagedCount(spec) });
    } catch (error) {
      this.#channel.post({ type: 'result', to: from, id, outcome: { ok: false, error: errorOf(error) } });
    }
  }

  async #update(from: string, id: number, docId: DocId, update: Uint8Array): Promise<void> {
    const watched = this.#watched.get(docId);
    // Followers send changes only for documents this leader opened for them.
    if (!watched) return;
    try {
      Y.applyUpdate(watched.doc, update, new TabOrigin(from));
    } catch (error) {
      this.#problem(`a tab sent an update that does not apply: ${errorOf(error).message}`, docId);
      // Acknowledged all the same: resending bytes that do not apply would never end.
    }
    await this.#client.persisted().catch(() => {});
    // Closing: no ack, so the follower sends this change again to the next leader.
    if (!this.#closed) this.#channel.post({ type: 'ack', to: from, id });
  }

  async #applyAwareness(from: string, docId: DocId, update: Uint8Array): Promise<void> {
    const awareness = await this.awarenessOf(docId)?.catch(() => undefined);
    if (!awareness || this.#closed) return;
    try {
      applyTabAwareness(awareness, update, new TabOrigin(from));
    } catch (error) {
      this.#problem(`a tab sent an awareness update that does not apply: ${errorOf(error).message}`, docId);
    }
  }

  async #call(from: string, id: number, method: CallMethod, rawArgs: unknown[]): Promise<void> {
    const answer = (outcome: { ok: true; value: unknown } | { ok: false; error: { code: string; message: string } }) => {
      // Closing: unanswered, the call is retried on the next leader (or refused there if not idempotent).
      if (!this.#closed) this.#channel.post({ type: 'result', to: from, id, outcome });
    };
    const parsed = CALLS[method].args.safeParse(rawArgs);
    if (!parsed.success) {
      answer({ ok: false, error: { code: 'SCHEMA', message: `bad arguments for ${method}: ${parsed.error.message.slice(0, 500)}` } });
      return;
    }
    try {
      answer({ ok: true, value: await this.#run(method, parsed.data) });
    } catch (error) {
      answer({ ok: false, error: errorOf(error) });
    }
  }

  async #run(method: CallMethod, args: readonly unknown[]): Promise<unknown> {
    const client = this.#client;
    switch (method) {
      case 'flush':
        return client.flush();
      case 'whenSynced':
        return client.whenSynced();
      case 'setCrisisMode': {
        const [active, source] = args as [boolean, string | undefined];
        return client.setCrisisMode(active, source);
      }
      case 'setTherapeuticSession': {
        const [active] = args as [boolean];
        return client.setTherapeuticSession(active);
      }
      case 'recordAssessment': {
        const [name, input] = args as [string, unknown];
        return client.recordAssessment(name, input);
      }
      case 'startPairing': {
        const [options] = args as [{ ttlMs?: number } | undefined];
        const offer = await client.startPairing(options ?? {});
        const pairing = String(++this.#pairingIds);
        this.#pairings.set(pairing, offer);
        offer.linked.then(
          (cert) => this.#event({ name: 'linked', pairing, cert }),
          (error: unknown) => this.#event({ name: 'pairing-failed', pairing, error: errorOf(error) }),
        ).finally(() => this.#pairings.delete(pairing));
        return { code: offer.code, pairing };
      }
      case 'cancelPairing': {
        const [pairing] = args as [string];
        this.#pairings.get(pairing)?.cancel();
        return undefined;
      }
      case 'revokeDevice': {
        const [device] = args as [Parameters<KeelClient['revokeDevice']>[0]];
        return client.revokeDevice(device);
      }
      case 'acceptStaged': {
        const [spec] = args as [DocSpec];
        return client.acceptStaged(spec);
      }
      case 'signOut': {
        const [options] = args as [{ wipe?: boolean }];
        await this.#options.signOut(options);
        return undefined;
      }
      default:
        return assertNever(method);
    }
  }

  /** Bad input from a follower: dropped, reported in this tab and in every other. */
  #problem(message: string, doc: DocId): void {
    const error = { code: ErrorCode.SCHEMA, message, doc };
    this.#options.onProblem(error);
    this.#event({ name: 'error', error });
  }

  #event(event: TabEvent): void {
    if (!this.#closed) this.#channel.post({ type: 'event', event });
  }

  /** Tells every tab the device signs out, before anything is wiped: none of them may lead again. */
  announceSignOut(): void {
    this.#event({ name: 'signed-out' });
  }

  /** Stops serving: no more broadcasts; the client itself is closed by its owner. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#poll);
    for (const stop of this.#listeners.splice(0)) stop();
    for (const { stop } of this.#watched.values()) stop();
    this.#watched.clear();
    for (const entry of this.#awareness.values()) void entry.then(({ stop }) => stop(), () => {});
    this.#awareness.clear();
    for (const offer of this.#pairings.values()) offer.cancel();
    this.#pairings.clear();
  }
}

