// Awareness (cursors, presence) between tabs: every tab's own state reaches the leader tab's
// awareness, which the device sends to its other devices; every state the leader's awareness
// holds reaches every tab.
import { type Awareness, applyAwarenessUpdate, encodeAwarenessUpdate } from 'y-protocols/awareness';

/** The clients an awareness 'update' event names. */
export interface AwarenessChange {
  readonly added: number[];
  readonly updated: number[];
  readonly removed: number[];
}

export const changedClients = (change: AwarenessChange): number[] => [...change.added, ...change.updated, ...change.removed];

/** Every state `awareness` holds, as one update (what a tab that just joined needs). */
export const encodeAllStates = (awareness: Awareness): Uint8Array => encodeAwarenessUpdate(awareness, [...awareness.getStates().keys()]);

/**
 * Applies an update from another tab. A malformed one throws inside y-protocols' decoder; it is
 * reported by the caller, never applied in part.
 */
export const applyTabAwareness = (awareness: Awareness, update: Uint8Array, origin: unknown): void => {
  applyAwarenessUpdate(awareness, update, origin);
};

/**
 * Keeps a tab's own awareness and the leader's in step in one tab (a follower that came to
 * lead): this tab's changes go to the leader's under `toLeader`, everything else comes back under
 * `toTab`. Returns the function that stops it.
 */
export const bridgeAwareness = (tab: Awareness, leader: Awareness, toLeader: unknown, toTab: unknown): (() => void) => {
  const up = (change: AwarenessChange, origin: unknown) => {
    if (origin !== toTab) applyAwarenessUpdate(leader, encodeAwarenessUpdate(tab, changedClients(change)), toLeader);
  };
  const down = (change: AwarenessChange, origin: unknown) => {
    if (origin !== toLeader) applyAwarenessUpdate(tab, encodeAwarenessUpdate(leader, changedClients(change)), toTab);
  };
  applyAwarenessUpdate(leader, encodeAwarenessUpdate(tab, [tab.clientID]), toLeader);
  applyAwarenessUpdate(tab, encodeAllStates(leader), toTab);
  tab.on('update', up);
  leader.on('update', down);
  return () => {
    tab.off('update', up);
    leader.off('update', down);
  };
};
