// One device per browser profile, any number of tabs: the client every tab's app holds. Exactly
// one tab (the leader, elected by a lock) runs the real KeelClient; the others follow it over a
// BroadcastChannel. The app cannot tell which it is, except through `isLeader` and `leader`.
import { type DeviceCertificate, type DeviceId, type DocId, DocClassSchema, ErrorCode, type RelayId, type TierState, DEFAULT_TIERS, cryptoReady, deriveDocId } from '@keel/engine';
import { ObservableV2 } from 'lib0/observable';
import { Awareness } from 'y-protocols/awareness';
import * as Y from 'yjs';
import type { ClientError, ClientEvents, ClientStatus, DocSpec, KeelClientApi } from '../client-api.js';
import type { AssessmentResult } from '../crisis-mode.js';
import type { PairingOffer } from '../pairing-host.js';
import type { KeelClient } from '../client.js';
import type { Identity } from '../identity.js';
import { Follower, type FollowerDoc, type PendingCall, callError } from './follower.js';
import { bridgeAwareness } from './awareness-bridge.js';
import { type AwarenessSource, LeaderHub, stateOf } from './leader-hub.js';
import type { HeldLock, LeaderLock } from './leader-lock.js';
import { CALLS, type CallMethod, type CallResult, type MirroredState, type MirroredStats, type TabEvent, type TabMessage } from './messages.js';
import { BRIDGE_ORIGIN, TabOrigin } from './origins.js';
import { type BroadcastChannelLike, type TabChannel, openTabChannel } from './tab-channel.js';
import { TabProvider } from './tab-provider.js';

export type TabClientEvents = ClientEvents & {
  /** This tab became the leader: it now holds the relay link (the app may show it, tests wait for it). */
  leader: () => void;
};

/** The real client a leading tab runs, and how to close it with its storage. */
export interface LeaderClient {
  readonly client: KeelClient;
  /**
   * The document awareness the device shares with its other devices (the client's provider,
   * contract 2). Absent: awareness is shared between this device's tabs only.
   */
  readonly awareness?: AwarenessSource;
  /** `client.signOut` (contract 3), and whatever the client's owner closes with it (its store). */
  signOut(options: { wipe?: boolean }): Promise<void>;
  close(): Promise<void>;
}

/** A document's awareness in this tab and the provider handles on it. */
interface ProviderEntry {
  readonly awareness: Awareness;
  readonly handles: Set<TabProvider>;
  /** How it is bridged: the leader's own (nothing to bridge), over the channel, or in-process. */
  mode: 'leader' | 'channel' | 'in-process';
  stop: () => void;
}

export interface TabClientOptions {
  readonly identity: Identity;
  /** The app's name: the lock is `keel-<name>-leader`, the channel `keel-<name>-tabs`. */
  readonly name: string;
  readonly lock: LeaderLock;
  readonly channel: BroadcastChannelLike;
  /** Creates the real client from the durable store, when this tab comes to lead. */
  readonly createLeader: () => Promise<LeaderClient>;
  /** The browser's answer to `navigator.storage.persist()`, asked by this tab. */
  readonly storagePersisted?: Promise<boolean | undefined>;
  /** How long `create` waits to learn its role before returning as a follower anyway. Default 2 s. */
  readonly settleMs?: number;
}

interface Leading extends LeaderClient {
  readonly hub: LeaderHub;
  /** Closed already (signed out). */
  closed: boolean;
  /** A promoted follower's own documents, kept for the app and bridged to the client's. */
  readonly bridged: Map<DocId, { readonly doc: Y.Doc; readonly stop: () => void }>;
  readonly stopEvents: () => void;
}

const UNKNOWN_STATE: MirroredState = {
  status: 'connecting',
  tier: { name: 'trial', policy: DEFAULT_TIERS.trial, since: 0 },
  crisisMode: false,
  devices: [],
  unconfirmed: 0,
  stats: { outboxDepth: 0, lastLatencyMs: {} },
};

const FORWARDED = ['status', 'error', 'deferred', 'tier', 'staged', 'crisis', 'devices'] as const;

const randomTabId = (): string => {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
};

/**
 * Keeps `tabDoc` (what the app holds) and `clientDoc` (the KeelClient's) equal both ways in-process.
 * Changes of the app become the device's local changes under this tab's origin.
 */
const bridgeDocs = (tabDoc: Y.Doc, clientDoc: Y.Doc, origin: TabOrigin): (() => void) => {
  // Anything the old leader never received becomes a local change of the device now.
  Y.applyUpdate(clientDoc, Y.encodeStateAsUpdate(tabDoc, Y.encodeStateVector(clientDoc)), origin);
  Y.applyUpdate(tabDoc, Y.encodeStateAsUpdate(clientDoc, Y.encodeStateVector(tabDoc)), BRIDGE_ORIGIN);
  const toClient = (update: Uint8Array, from: unknown) => {
    if (from !== BRIDGE_ORIGIN) Y.applyUpdate(clientDoc, update, origin);
  };
  const toTab = (update: Uint8Array, from: unknown) => {
    if (from !== origin) Y.applyUpdate(tabDoc, update, BRIDGE_ORIGIN);
  };
  tabDoc.on('update', toClient);
  clientDoc.on('update', toTab);
  return () => {
    tabDoc.off('update', toClient);
    clientDoc.off('update', toTab);
  };
};

export class TabClient extends ObservableV2<TabClientEvents> implements KeelClientApi {
  readonly identity: Identity;
  readonly tabId = randomTabId();
  /** The origin of this tab's changes in the leader's documents and awareness. */
  readonly #origin = new TabOrigin(this.tabId);
  readonly #providers = new Map<DocId, Promise<ProviderEntry>>();
  readonly #options: TabClientOptions;
  readonly #channel: TabChannel;
  readonly #lockAbort = new AbortController();
  #held: HeldLock | undefined;
  #follower: Follower | undefined;
  #leading: Leading | undefined;
  #promoting: Promise<void> | undefined;
  #mirror: MirroredState = UNKNOWN_STATE;
  readonly #staged = new Map<DocId, number>();
  readonly #pairings = new Map<string, { resolve: (cert: DeviceCertificate) => void; reject: (error: Error) => void }>();
  #closed = false;
  /** The device signed out (here or in another tab): this tab never leads again. */
  #signedOut = false;
  /** This tab asked for the sign-out and waits for the leader's answer before closing. */
  #ownSignOut = false;
  /** The leading tab's sign-out in progress (once). */
  #signingOut: Promise<void> | undefined;

  private constructor(options: TabClientOptions) {
    super();
    this.identity = options.identity;
    this.#options = options;
    this.#channel = openTabChannel(options.channel, this.tabId, {
      onMessage: (message) => this.#onMessage(message),
      onInvalid: (reason) => this.emit('error', [{ code: ErrorCode.SCHEMA, message: `dropped a message from another tab: ${reason}` }]),
    });
    this.#follower = this.#newFollower();
    void options.storagePersisted?.then((answer) => (this.#storagePersisted = answer), () => {});
    this.on('status', (status) => {
      for (const entry of this.#providers.values()) void entry.then((e) => e.handles.forEach((handle) => handle.refresh(status)), () => {});
    });
  }

  /**
   * Joins the device's tabs: leads if no tab does, else follows. Resolves once the role is known
   * (or after `settleMs`, as a follower still waiting for its leader).
   */
  static async create(options: TabClientOptions): Promise<TabClient> {
    await cryptoReady();
    const tab = new TabClient(options);
    const known = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, options.settleMs ?? 2_000);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      tab.#whenRoleKnown = done;
    });
    tab.#requestLock();
    await known;
    tab.#whenRoleKnown = undefined;
    if (tab.#promoting) await tab.#promoting;
    const failure = tab.#failure;
    if (failure) {
      await tab.close();
      throw failure;
    }
    return tab;
  }

  #whenRoleKnown: (() => void) | undefined;
  /** Why this tab could not lead when its turn came; every call fails with it. */
  #failure: Error | undefined;

  #storagePersisted: boolean | undefined;

  /** Whether the browser agreed to keep this origin's data (undefined: not asked or no answer yet). */
  get storagePersisted(): boolean | undefined {
    return this.#storagePersisted;
  }

  /** Whether this tab holds the relay link now. */
  get isLeader(): boolean {
    return this.#leading !== undefined;
  }

  get status(): ClientStatus {
    if (this.#closed) return 'closed';
    return this.#leading ? this.#leading.client.status : this.#mirror.status;
  }

  get unconfirmed(): number {
    return this.#leading ? this.#leading.client.unconfirmed : this.#mirror.unconfirmed;
  }

  get lastContactAt(): number | undefined {
    return this.#leading ? this.#leading.client.lastContactAt : this.#mirror.lastContactAt;
  }

  get tier(): TierState {
    return this.#leading ? this.#leading.client.tier : this.#mirror.tier;
  }

  get crisisMode(): boolean {
    return this.#leading ? this.#leading.client.crisisMode : this.#mirror.crisisMode;
  }

  get relayId(): RelayId | undefined {
    return this.#leading ? this.#leading.client.relayId : this.#mirror.relayId;
  }

  devices(): DeviceCertificate[] {
    return this.#leading ? this.#leading.client.devices() : [...this.#mirror.devices];
  }

  /** The opaque id a document has on the relay. */
  docId(spec: DocSpec): DocId {
    return deriveDocId(this.identity.user.docIdKey, DocClassSchema.parse(spec.class), spec.name);
  }

  stagedCount(spec: DocSpec): number {
    return this.#leading ? this.#leading.client.stagedCount(spec) : (this.#staged.get(this.docId(spec)) ?? 0);
  }

  async open(spec: DocSpec): Promise<Y.Doc> {
    const docId = this.docId(spec);
    let role = this.#roleNow();
    while (role instanceof Promise) {
      await role;
      role = this.#roleNow();
    }
    // A promotion that starts while the follower opens adopts the document it registered.
    if (role instanceof Follower) return role.open(docId, spec);
    const bridged = role.bridged.get(docId);
    if (bridged) return bridged.doc;
    const doc = await role.client.open(spec);
    role.hub.watch(docId, spec, doc);
    return doc;
  }

  /**
   * A y-websocket-shaped handle on a document (contract 2). Handles of one document share its
   * doc and awareness. In a follower the awareness is this tab's own, bridged to the leader's,
   * so cursors of every tab and every device meet. The document itself stays open in the
   * leader after the last handle is destroyed (other tabs may still use it) until the client closes.
   */
  async provider(spec: DocSpec): Promise<TabProvider> {
    const doc = await this.open(spec);
    const docId = this.docId(spec);
    let pending = this.#providers.get(docId);
    if (!pending) {
      pending = this.#attachAwareness(docId, doc);
      this.#providers.set(docId, pending);
      pending.catch(() => this.#providers.delete(docId));
    }
    const entry = await pending;
    const handle = new TabProvider(doc, entry.awareness, this.status, (p) => this.#dropProvider(docId, p));
    entry.handles.add(handle);
    return handle;
  }

  async #attachAwareness(docId: DocId, doc: Y.Doc): Promise<ProviderEntry> {
    let role = this.#roleNow();
    while (role instanceof Promise) {
      await role;
      role = this.#roleNow();
    }
    if (role instanceof Follower) {
      const awareness = new Awareness(doc);
      return { awareness, handles: new Set(), mode: 'channel', stop: role.attachAwareness(docId, awareness) };
    }
    const leaderAwareness = await role.hub.awarenessOf(docId);
    if (!leaderAwareness) throw callError('CLIENT_CLOSED', 'the document is not open');
    if (!role.bridged.has(docId)) return { awareness: leaderAwareness, handles: new Set(), mode: 'leader', stop: () => {} };
    const awareness = new Awareness(doc);
    return { awareness, handles: new Set(), mode: 'in-process', stop: bridgeAwareness(awareness, leaderAwareness, this.#origin, BRIDGE_ORIGIN) };
  }

  async #dropProvider(docId: DocId, handle: TabProvider): Promise<void> {
    const entry = await this.#providers.get(docId);
    if (!entry?.handles.delete(handle) || entry.handles.size > 0) return;
    this.#providers.delete(docId);
    this.#endAwareness(entry);
  }

  /** This tab's cursor leaves the other tabs and devices, then its awareness stops. */
  #endAwareness(entry: ProviderEntry): void {
    if (entry.mode === 'leader') return;
    entry.awareness.setLocalState(null);
    entry.stop();
    entry.awareness.destroy();
  }

  /**
   * Resolves once this tab's edits are committed: in a follower, once the leader holds them
   * (durably) and the leader's own flush resolved. Survives a change of leader.
   */
  async flush(): Promise<void> {
    for (;;) {
      let role = this.#roleNow();
      while (role instanceof Promise) {
        await role;
        role = this.#roleNow();
      }
      if (!(role instanceof Follower)) return role.client.flush();
      const follower = role;
      const generation = follower.generation;
      await follower.whenAcknowledged();
      await this.#call('flush', []);
      // A flush answered by a leader that took over meanwhile may predate this tab's diff.
      if (this.#follower !== follower || follower.generation === generation) return;
    }
  }

  async whenSynced(): Promise<void> {
    let role = this.#roleNow();
    while (role instanceof Promise) {
      await role;
      role = this.#roleNow();
    }
    if (!(role instanceof Follower)) return role.client.whenSynced();
    await role.whenAcknowledged();
    await this.#call('whenSynced', []);
  }

  async setCrisisMode(active: boolean, source?: string): Promise<void> {
    await this.#call('setCrisisMode', source === undefined ? [active] : [active, source]);
  }

  /** The leader schedules for the device; a follower's session start or end is sent to it. */
  setTherapeuticSession(active: boolean): void {
    this.#call('setTherapeuticSession', [active]).catch((error: unknown) => {
      // Only a closed client loses the hint, and a closed client schedules nothing.
      if (this.status !== 'closed') this.emit('error', [{ code: 'INTERNAL', message: `session hint not delivered: ${String(error)}` }]);
    });
  }

  async recordAssessment(name: string, input: unknown): Promise<AssessmentResult> {
    return this.#call('recordAssessment', [name, input]);
  }

  async revokeDevice(device: DeviceId): Promise<number> {
    return this.#call('revokeDevice', [device]);
  }

  async acceptStaged(spec: DocSpec): Promise<number> {
    const count = await this.#call('acceptStaged', [{ class: spec.class, name: spec.name }]);
    if (!this.#leading) this.#staged.set(this.docId(spec), 0);
    return count;
  }

  async startPairing(options: { ttlMs?: number } = {}): Promise<PairingOffer> {
    let role = this.#roleNow();
    while (role instanceof Promise) {
      await role;
      role = this.#roleNow();
    }
    if (!(role instanceof Follower)) return role.client.startPairing(options);
    const { code, pairing } = await this.#call('startPairing', [options]);
    const linked = new Promise<DeviceCertificate>((resolve, reject) => this.#pairings.set(pairing, { resolve, reject }));
    linked.catch(() => {});
    return { code, linked, cancel: () => void this.#call('cancelPairing', [pairing]).catch(() => {}) };
  }

  /** `client.stats()` (contract 4): the leader's, mirrored in followers. */
  stats(): MirroredStats {
    return this.#leading ? this.#leading.client.stats() : this.#mirror.stats;
  }

  /**
   * Signs this device out in every tab (contract 3): the leader tells every tab first (none may
   * lead again: a new leader would start from the wiped store), then closes the client and, with
   * `wipe`, removes every local store. Resolves once that is done and this tab is closed.
   */
  async signOut(options: { wipe?: boolean } = {}): Promise<void> {
    let role = this.#roleNow();
    while (role instanceof Promise) {
      await role;
      role = this.#roleNow();
    }
    const args = options.wipe === undefined ? {} : { wipe: options.wipe };
    if (role instanceof Follower) {
      this.#ownSignOut = true;
      const call = role.call('signOut', [args]);
      await call;
    } else {
      await this.#signOutLeading(args);
    }
    await this.close();
  }

  /** The leader's part of a sign-out, whichever tab asked; idempotent. */
  #signOutLeading(options: { wipe?: boolean }): Promise<void> {
    const leading = this.#leading;
    if (!leading) return Promise.reject(callError('CLIENT_CLOSED', 'client is closed'));
    this.#signingOut ??= (async () => {
      this.#signedOut = true;
      this.#lockAbort.abort();
      leading.hub.announceSignOut();
      await leading.signOut(options);
      leading.closed = true;
      // The answer to a follower that asked goes out first; then this tab closes too.
      setTimeout(() => void this.close(), 0);
    })();
    return this.#signingOut;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#lockAbort.abort();
    this.#follower?.close();
    this.#follower = undefined;
    if (this.#promoting) await this.#promoting.catch(() => {});
    for (const pending of this.#providers.values()) {
      const entry = await pending.catch(() => undefined);
      if (entry) this.#endAwareness(entry);
    }
    this.#providers.clear();
    const leading = this.#leading;
    this.#leading = undefined;
    if (leading) {
      leading.hub.close();
      leading.stopEvents();
      for (const { stop } of leading.bridged.values()) stop();
      if (!leading.closed) await leading.close();
    }
    // Only now may another tab lead: this one's writes are done.
    this.#held?.release();
    this.#held = undefined;
    this.#channel.close();
    for (const pairing of this.#pairings.values()) pairing.reject(callError('CLIENT_CLOSED', 'client closed'));
    this.#pairings.clear();
    this.emit('status', ['closed']);
  }

  // ── roles ──────────────────────────────────────────────────────────────────────────────────

  #newFollower(): Follower {
    return new Follower(this.#channel, {
      onState: (state) => this.#onMirror(state),
      onEvent: (event) => this.#onTabEvent(event),
      onLeader: () => {
        this.#whenRoleKnown?.();
        this.#dropPairings();
      },
    });
  }

  #requestLock(): void {
    this.#options.lock.acquire(`keel-${this.#options.name}-leader`, this.#lockAbort.signal).then(
      (held) => {
        if (this.#closed || this.#signedOut) {
          held.release();
          return;
        }
        this.#held = held;
        this.#promoting = this.#promote()
          .catch((error: unknown) => {
            // Reported as a final error; the lock goes to another tab, which may fare better.
            this.#failure = error instanceof Error ? error : new Error(String(error));
            this.#held?.release();
            this.#held = undefined;
          })
          .finally(() => {
            this.#promoting = undefined;
          });
        this.#whenRoleKnown?.();
      },
      () => {
        // Aborted by close(): nothing to lead.
      },
    );
  }

  /** Pairing offers made through the old leader: their session lived on its connection. */
  #dropPairings(): void {
    for (const pairing of this.#pairings.values()) pairing.reject(callError('LEADER_CHANGED', 'the leader tab holding the pairing session went away'));
    this.#pairings.clear();
  }

  /**
   * This tab's role once any promotion in progress finished. Callers act on it synchronously,
   * before anything else runs: a promotion that starts later takes over what they registered
   * with the follower (calls, opens, flush waits).
   */
  #roleNow(): Leading | Follower | Promise<unknown> {
    if (this.#closed) throw callError('CLIENT_CLOSED', 'client is closed');
    if (this.#promoting) return this.#promoting.catch(() => {});
    if (this.#leading) return this.#leading;
    if (this.#follower) return this.#follower;
    throw this.#failure ?? callError('CLIENT_CLOSED', 'client is closed');
  }

  /**
   * This tab leads now: creates the real client from the durable store, adopts the documents it
   * followed (what the old leader never got becomes a local change), announces itself so the
   * other followers resend their state, and runs the calls that were waiting.
   */
  async #promote(): Promise<void> {
    const { docs, calls } = this.#follower?.promote() ?? { docs: [], calls: [] };
    this.#follower = undefined;
    this.#dropPairings();
    let leader: LeaderClient;
    try {
      leader = await this.#options.createLeader();
    } catch (error) {
      const failure = callError('LEADER_FAILED', `this tab could not start the client: ${error instanceof Error ? error.message : String(error)}`);
      for (const call of calls) call.reject(failure);
      for (const entry of docs) entry.failOpen(failure);
      this.emit('error', [{ code: 'INTERNAL', message: failure.message, final: true }]);
      throw failure;
    }
    const { client } = leader;
    const hub = new LeaderHub(client, this.#channel, {
      onProblem: (error) => this.emit('error', [error]),
      awareness: leader.awareness,
      signOut: (options) => this.#signOutLeading(options),
    });
    const bridged = new Map<DocId, { doc: Y.Doc; stop: () => void }>();
    for (const entry of docs) await this.#adopt(client, hub, entry, this.#origin, bridged);
    // Awareness this tab bridged over the channel is bridged to the leader's in-process now.
    for (const [docId, pending] of this.#providers) {
      const entry = await pending.catch(() => undefined);
      const leaderAwareness = entry?.mode === 'channel' ? await hub.awarenessOf(docId)?.catch(() => undefined) : undefined;
      if (!entry || !leaderAwareness) continue;
      entry.stop();
      entry.mode = 'in-process';
      entry.stop = bridgeAwareness(entry.awareness, leaderAwareness, this.#origin, BRIDGE_ORIGIN);
    }
    const listeners = FORWARDED.map((name) => {
      const forward = (...args: unknown[]) => this.emit(name, args as never);
      client.on(name, forward as never);
      return () => client.off(name, forward as never);
    });
    const before = this.#mirror;
    this.#leading = { ...leader, hub, bridged, closed: false, stopEvents: () => listeners.forEach((stop) => stop()) };
    if (this.#closed) return;
    hub.announce();
    this.#emitChanges(before, stateOf(client));
    for (const call of calls) this.#runHandedOver(call);
    this.emit('leader', []);
  }

  async #adopt(client: KeelClient, hub: LeaderHub, entry: FollowerDoc, origin: TabOrigin, bridged: Leading['bridged']): Promise<void> {
    try {
      const clientDoc = await client.open(entry.spec);
      const docId = this.docId(entry.spec);
      bridged.set(docId, { doc: entry.doc, stop: bridgeDocs(entry.doc, clientDoc, origin) });
      hub.watch(docId, entry.spec, clientDoc);
      entry.markOpened();
    } catch (error) {
      entry.failOpen(error instanceof Error ? error : new Error(String(error)));
    }
  }

  /** A call the follower had pending when this tab took over: run here if that is safe. */
  #runHandedOver(call: PendingCall): void {
    if (call.sentTo !== undefined && !CALLS[call.method].idempotent) {
      call.reject(callError('LEADER_CHANGED', `the leader tab went away during ${call.method}; it may or may not have happened`));
      return;
    }
    this.#runLocal(call.method, call.args).then(call.resolve, call.reject);
  }

  async #call<M extends CallMethod>(method: M, args: unknown[]): Promise<CallResult<M>> {
    let role = this.#roleNow();
    while (role instanceof Promise) {
      await role;
      role = this.#roleNow();
    }
    // Registered with the follower at once: a promotion after this hands the call over.
    if (role instanceof Follower) return role.call(method, args);
    // The leader's client returns these types itself.
    return (await this.#runLocal(method, args)) as CallResult<M>;
  }

  async #runLocal(method: CallMethod, args: unknown[]): Promise<unknown> {
    const leading = this.#leading;
    if (!leading) throw callError('CLIENT_CLOSED', 'client is closed');
    const client = leading.client;
    switch (method) {
      case 'flush':
        return client.flush();
      case 'whenSynced':
        return client.whenSynced();
      case 'setCrisisMode':
        return client.setCrisisMode(args[0] as boolean, args[1] as string | undefined);
      case 'setTherapeuticSession':
        return client.setTherapeuticSession(args[0] as boolean);
      case 'recordAssessment':
        return client.recordAssessment(args[0] as string, args[1]);
      case 'revokeDevice':
        return client.revokeDevice(args[0] as DeviceId);
      case 'acceptStaged':
        return client.acceptStaged(args[0] as DocSpec);
      case 'signOut':
        return this.#signOutLeading(args[0] as { wipe?: boolean });
      case 'startPairing':
      case 'cancelPairing':
        // A follower's pairing died with the old leader's connection.
        throw callError('LEADER_CHANGED', 'the pairing session was on the leader tab that went away');
    }
  }

  // ── channel ────────────────────────────────────────────────────────────────────────────────

  #onMessage(message: TabMessage): void {
    if (this.#leading) this.#leading.hub.handle(message);
    else this.#follower?.handle(message);
  }

  #onMirror(state: MirroredState): void {
    const before = this.#mirror;
    this.#mirror = state;
    this.#emitChanges(before, state);
  }

  #emitChanges(before: MirroredState, after: MirroredState): void {
    if (before.status !== after.status) this.emit('status', [after.status]);
    if (before.tier.name !== after.tier.name || before.tier.since !== after.tier.since) this.emit('tier', [after.tier]);
    if (before.crisisMode !== after.crisisMode) this.emit('crisis', [after.crisisMode]);
    const ids = (state: MirroredState) => state.devices.map((d) => `${d.device}:${d.issuer}`).join(',');
    if (ids(before) !== ids(after)) this.emit('devices', [[...after.devices]]);
  }

  #onTabEvent(event: TabEvent): void {
    switch (event.name) {
      case 'error':
      {
        const { code, message, doc, final } = event.error;
        // Codes come from another tab's Keel version: passed on as they are.
        this.emit('error', [{ code: code as ClientError['code'], message, ...(doc !== undefined ? { doc } : {}), ...(final !== undefined ? { final } : {}) }]);
      }
        return;
      case 'deferred':
        this.emit('deferred', [{ doc: event.doc, code: event.code, retryAfterMs: event.retryAfterMs }]);
        return;
      case 'staged': {
        const before = this.#staged.get(event.doc) ?? 0;
        this.#staged.set(event.doc, event.count);
        if (before !== event.count) this.emit('staged', [{ doc: event.doc, count: event.count }]);
        return;
      }
      case 'linked':
        this.#pairings.get(event.pairing)?.resolve(event.cert);
        this.#pairings.delete(event.pairing);
        return;
      case 'pairing-failed':
        this.#pairings.get(event.pairing)?.reject(callError(event.error.code, event.error.message));
        this.#pairings.delete(event.pairing);
        return;
      case 'signed-out':
        this.#signedOut = true;
        this.#lockAbort.abort();
        // The tab that asked closes once the leader answered; every other closes now.
        if (!this.#ownSignOut) void this.close();
        return;
    }
  }
}
