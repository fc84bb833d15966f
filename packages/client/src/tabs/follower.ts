// A follower tab: its own copy of each open document, kept in step with the leader tab's, and
// calls forwarded to the leader. It never touches the Keel store and holds no relay link, so its
// edits are sealed once, by the leader, under counters only the leader's store hands out.
import type { DocId } from '@keel/engine';
import { type Awareness, encodeAwarenessUpdate } from 'y-protocols/awareness';
import * as Y from 'yjs';
import type { DocSpec } from '../client-api.js';
import { type AwarenessChange, applyTabAwareness, changedClients } from './awareness-bridge.js';
import { CALLS, type CallMethod, type CallResult, type MirroredState, RESULTS, type TabEvent, type TabMessage } from './messages.js';
import { BRIDGE_ORIGIN } from './origins.js';
import type { TabChannel } from './tab-channel.js';

export interface FollowerDoc {
  readonly spec: DocSpec;
  readonly doc: Y.Doc;
  /** Whether the current leader has this document's state: until then local changes wait (its diff carries them). */
  ready: boolean;
  /** The id of the `open` in flight; its diff is sent under the same id, so an ack of it means "all of it". */
  openId: number | undefined;
  readonly opened: Promise<void>;
  markOpened: () => void;
  failOpen: (error: Error) => void;
  readonly stop: () => void;
  /** This tab's awareness of the document, once a provider asked for it, and what stops its bridge. */
  awareness: { readonly awareness: Awareness; readonly stop: () => void } | undefined;
}

export interface PendingCall {
  readonly method: CallMethod;
  readonly args: unknown[];
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: Error) => void;
  /** The leader it was sent to; undefined while no leader is known. */
  sentTo: string | undefined;
}

export interface FollowerHooks {
  onState(state: MirroredState): void;
  onEvent(event: TabEvent): void;
  /** A message from a leader this tab had not seen: every open document is being resent to it. */
  onLeader(tab: string): void;
}

export const callError = (code: string, message: string): Error => Object.assign(new Error(`${code}: ${message}`), { code });

export class Follower {
  readonly #channel: TabChannel;
  readonly #hooks: FollowerHooks;
  readonly #docs = new Map<DocId, FollowerDoc>();
  readonly #calls = new Map<number, PendingCall>();
  /**
   * Changes (and opens with their diff) sent to the leader and not yet durable there, by id. Ids
   * only grow and a Set iterates in insertion order, so its first element is the oldest.
   */
  readonly #unacked = new Set<number>();
  /** flush()/whenSynced() waiting for every id below `mark` to be acknowledged. */
  readonly #ackWaiters: { mark: number; resolve: () => void }[] = [];
  #leader: string | undefined;
  /** Counts leaders seen, so a flush can tell its answer came from the leader that has its diff. */
  #generation = 0;
  #nextId = 1;
  #closed = false;

  constructor(channel: TabChannel, hooks: FollowerHooks) {
    this.#channel = channel;
    this.#hooks = hooks;
    this.#channel.post({ type: 'who-leads' });
  }

  get leader(): string | undefined {
    return this.#leader;
  }

  get generation(): number {
    return this.#generation;
  }

  get docs(): ReadonlyMap<DocId, FollowerDoc> {
    return this.#docs;
  }

  /** The follower copy of a document, created and sent to the leader on first use. */
  async open(docId: DocId, spec: DocSpec): Promise<Y.Doc> {
    let entry = this.#docs.get(docId);
    if (!entry) {
      const doc = new Y.Doc();
      let markOpened = () => {};
      let failOpen: (error: Error) => void = () => {};
      const opened = new Promise<void>((resolve, reject) => {
        markOpened = resolve;
        failOpen = reject;
      });
      const onUpdate = (update: Uint8Array, origin: unknown) => this.#onLocalUpdate(docId, update, origin);
      doc.on('update', onUpdate);
      entry = { spec, doc, ready: false, openId: undefined, opened, markOpened, failOpen, stop: () => doc.off('update', onUpdate), awareness: undefined };
      this.#docs.set(docId, entry);
      this.#sendOpen(entry);
    }
    const { opened, doc } = entry;
    try {
      await opened;
    } catch (error) {
      if (this.#docs.get(docId) === entry) {
        entry.stop();
        this.#docs.delete(docId);
      }
      throw error;
    }
    return doc;
  }

  /**
   * Bridges this tab's awareness of an open document to the leader's: its own changes go to the
   * leader, the leader's states (every tab's, every device's) come back. Returns what stops it.
   */
  attachAwareness(docId: DocId, awareness: Awareness): () => void {
    const entry = this.#docs.get(docId);
    if (!entry) throw new Error('attachAwareness needs an open document');
    const onUpdate = (change: AwarenessChange, origin: unknown) => {
      if (origin === BRIDGE_ORIGIN || this.#closed || !entry.ready || this.#leader === undefined) return;
      this.#channel.post({ type: 'awareness', to: this.#leader, doc: docId, update: encodeAwarenessUpdate(awareness, changedClients(change)) });
    };
    awareness.on('update', onUpdate);
    const stop = () => {
      awareness.off('update', onUpdate);
      if (entry.awareness?.awareness === awareness) entry.awareness = undefined;
    };
    entry.awareness = { awareness, stop };
    if (entry.ready) this.#syncAwareness(docId, entry);
    return stop;
  }

  /** Sends this tab's own awareness state to the leader and asks for all of the leader's. */
  #syncAwareness(docId: DocId, entry: FollowerDoc): void {
    if (!entry.awareness || this.#leader === undefined) return;
    const { awareness } = entry.awareness;
    this.#channel.post({ type: 'awareness', to: this.#leader, doc: docId, update: encodeAwarenessUpdate(awareness, [awareness.clientID]) });
    this.#channel.post({ type: 'awareness-sync', to: this.#leader, doc: docId });
  }

  /** Calls a method on the leader; retried on a new leader when idempotent, else rejected with LEADER_CHANGED. */
  call<M extends CallMethod>(method: M, args: unknown[]): Promise<CallResult<M>> {
    if (this.#closed) return Promise.reject(callError('CLIENT_CLOSED', 'client is closed'));
    return new Promise((resolve, reject) => {
      const id = this.#nextId++;
      // Resolved only with a value RESULTS[method] accepted (see 'result' below).
      const call: PendingCall = { method, args, resolve: resolve as (value: unknown) => void, reject, sentTo: undefined };
      this.#calls.set(id, call);
      this.#sendCall(id, call);
    });
  }

  /** Resolves once every change this tab made so far is durable in the leader's store. */
  whenAcknowledged(): Promise<void> {
    const mark = this.#nextId;
    if (this.#allAckedBelow(mark)) return Promise.resolve();
    return new Promise((resolve) => this.#ackWaiters.push({ mark, resolve }));
  }

  handle(message: TabMessage): void {
    if (this.#closed) return;
    switch (message.type) {
      case 'leader':
        if (message.from !== this.#leader) this.#adopt(message.from);
        return;
      case 'opened': {
        const entry = [...this.#docs.values()].find((d) => d.openId === message.id);
        if (!entry || message.from !== this.#leader) return;
        try {
          Y.applyUpdate(entry.doc, message.update, BRIDGE_ORIGIN);
        } catch {
          // The leader's copy could not be applied; its broadcasts still are, one by one.
        }
        // What this tab has and the leader lacks (edits made before or during the open), under the open's id.
        this.#channel.post({ type: 'update', to: message.from, id: message.id, doc: message.doc, update: Y.encodeStateAsUpdate(entry.doc, message.sv) });
        entry.openId = undefined;
        entry.ready = true;
        this.#syncAwareness(message.doc, entry);
        this.#hooks.onEvent({ name: 'staged', doc: message.doc, count: message.staged });
        entry.markOpened();
        return;
      }
      case 'ack':
        this.#unacked.delete(message.id);
        this.#settleAckWaiters();
        return;
      case 'doc-update': {
        const entry = this.#docs.get(message.doc);
        // Only the leader's copy counts: what this tab missed from anyone else (a leader that is
        // going, one not yet announced) comes with the diff of its next open. Yjs ignores what it
        // already holds, this tab's own changes included.
        if (entry && message.from === this.#leader) {
          try {
            Y.applyUpdate(entry.doc, message.update, BRIDGE_ORIGIN);
          } catch {
            this.#hooks.onEvent({ name: 'error', error: { code: 'SCHEMA', message: 'the leader tab broadcast an update that does not apply', doc: message.doc } });
          }
        }
        return;
      }
      case 'awareness': {
        const entry = this.#docs.get(message.doc);
        // Our own state comes back too: y-protocols ignores what is not newer.
        if (!entry?.awareness || message.from !== this.#leader) return;
        try {
          applyTabAwareness(entry.awareness.awareness, message.update, BRIDGE_ORIGIN);
        } catch {
          this.#hooks.onEvent({ name: 'error', error: { code: 'SCHEMA', message: 'the leader tab sent an awareness update that does not apply', doc: message.doc } });
        }
        return;
      }
      case 'result': {
        const call = this.#calls.get(message.id);
        if (!call) {
          // An open the leader could not do.
          const entry = [...this.#docs.values()].find((d) => d.openId === message.id);
          if (entry && !message.outcome.ok) {
            this.#unacked.delete(message.id);
            entry.failOpen(callError(message.outcome.error.code, message.outcome.error.message));
            this.#settleAckWaiters();
          }
          return;
        }
        this.#calls.delete(message.id);
        if (!message.outcome.ok) {
          call.reject(callError(message.outcome.error.code, message.outcome.error.message));
          return;
        }
        const value = RESULTS[call.method].safeParse(message.outcome.value);
        if (value.success) call.resolve(value.data);
        else call.reject(callError('SCHEMA', `the leader tab answered ${call.method} with a value of the wrong shape`));
        return;
      }
      case 'state':
        if (message.from === this.#leader || this.#leader === undefined) this.#hooks.onState(message.state);
        return;
      case 'event':
        if (message.from === this.#leader) this.#hooks.onEvent(message.event);
        return;
      case 'who-leads':
      case 'open':
      case 'update':
      case 'call':
      case 'awareness-sync':
        // Meant for the leader.
        return;
    }
  }

  /**
   * This tab becomes the leader: hands back the calls still waiting (the caller runs the
   * idempotent ones itself) and stops following. Changes not yet acknowledged need no resend: the
   * new leader adopts this tab's documents whole.
   */
  promote(): { docs: FollowerDoc[]; calls: PendingCall[] } {
    if (this.#closed) return { docs: [], calls: [] };
    this.#closed = true;
    const calls = [...this.#calls.values()];
    this.#calls.clear();
    this.#unacked.clear();
    for (const waiter of this.#ackWaiters.splice(0)) waiter.resolve();
    for (const entry of this.#docs.values()) entry.stop();
    return { docs: [...this.#docs.values()], calls };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const call of this.#calls.values()) call.reject(callError('CLIENT_CLOSED', 'client closed before the leader tab answered'));
    this.#calls.clear();
    for (const entry of this.#docs.values()) {
      entry.stop();
      entry.failOpen(callError('CLIENT_CLOSED', 'client closed'));
    }
    for (const waiter of this.#ackWaiters.splice(0)) waiter.resolve();
  }

  /** A new leader: every open document is opened again there (with this tab's diff), calls go to it. */
  #adopt(leader: string): void {
    this.#leader = leader;
    this.#generation++;
    this.#unacked.clear();
    for (const entry of this.#docs.values()) {
      entry.ready = false;
      this.#sendOpen(entry);
    }
    // What waited for the old leader now waits for the diffs just sent.
    for (const waiter of this.#ackWaiters) waiter.mark = this.#nextId;
    this.#settleAckWaiters();
    for (const [id, call] of this.#calls) {
      if (call.sentTo !== undefined && !CALLS[call.method].idempotent) {
        this.#calls.delete(id);
        call.reject(callError('LEADER_CHANGED', `the leader tab went away during ${call.method}; it may or may not have happened`));
      } else {
        this.#sendCall(id, call);
      }
    }
    this.#hooks.onLeader(leader);
  }

  #sendOpen(entry: FollowerDoc): void {
    if (this.#leader === undefined) return;
    const id = this.#nextId++;
    entry.openId = id;
    this.#unacked.add(id);
    this.#channel.post({ type: 'open', to: this.#leader, id, spec: { class: entry.spec.class, name: entry.spec.name }, sv: Y.encodeStateVector(entry.doc) });
  }

  #sendCall(id: number, call: PendingCall): void {
    if (this.#leader === undefined) return;
    call.sentTo = this.#leader;
    this.#channel.post({ type: 'call', to: this.#leader, id, method: call.method, args: call.args });
  }

  #onLocalUpdate(docId: DocId, update: Uint8Array, origin: unknown): void {
    if (origin === BRIDGE_ORIGIN || this.#closed) return;
    const entry = this.#docs.get(docId);
    // Not ready: the diff sent when the leader answers the open carries this change.
    if (!entry?.ready || this.#leader === undefined) return;
    const id = this.#nextId++;
    this.#unacked.add(id);
    this.#channel.post({ type: 'update', to: this.#leader, id, doc: docId, update });
  }

  #allAckedBelow(mark: number): boolean {
    const oldest = this.#unacked.values().next();
    return oldest.done === true || oldest.value >= mark;
  }

  #settleAckWaiters(): void {
    for (let i = this.#ackWaiters.length - 1; i >= 0; i--) {
      const waiter = this.#ackWaiters[i]!;
      if (this.#allAckedBelow(waiter.mark)) {
        this.#ackWaiters.splice(i, 1);
        waiter.resolve();
      }
    }
  }
}
