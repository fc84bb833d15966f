// Yjs transaction origins of the tab bridge: they tell a change's source, so no change is sent
// back where it came from and every tab's edit becomes a local change of the device exactly once.

/**
 * A change another tab made, applied to the leader's document: for the KeelClient it is a local
 * change of this device (sealed and sent like any other).
 */
export class TabOrigin {
  constructor(readonly tab: string) {}
}

/** A change that came from the leader's document into a tab's own copy: never sent back. */
export const BRIDGE_ORIGIN: unique symbol = Symbol('keel-tab-bridge');
