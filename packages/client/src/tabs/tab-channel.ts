// The BroadcastChannel between tabs of one device, with every incoming message validated.
import { type OutgoingTabMessage, TAB_PROTOCOL_VERSION, type TabMessage, TabMessageSchema } from './messages.js';

/** The part of BroadcastChannel this needs (the DOM's and Node's both fit). */
export interface BroadcastChannelLike {
  postMessage(message: unknown): void;
  close(): void;
  onmessage: ((event: MessageEvent) => void) | null;
  onmessageerror: ((event: MessageEvent) => void) | null;
}

export interface TabChannel {
  /** Stamps the message with this tab's id and the protocol version and posts it; a closed channel drops it. */
  post(message: OutgoingTabMessage): void;
  close(): void;
}

export interface TabChannelHandlers {
  /** A valid message from another tab, addressed to everyone or to this tab. */
  onMessage(message: TabMessage): void;
  /** A message that failed validation (another app version, a bug): dropped, reported here. */
  onInvalid(reason: string): void;
}

export const openTabChannel = (channel: BroadcastChannelLike, tabId: string, handlers: TabChannelHandlers): TabChannel => {
  let closed = false;
  channel.onmessage = (event) => {
    if (closed) return;
    const parsed = TabMessageSchema.safeParse(event.data);
    if (!parsed.success) {
      handlers.onInvalid(parsed.error.issues.map((issue) => `${issue.path.join('.') || '(message)'}: ${issue.message}`).join('; ').slice(0, 500));
      return;
    }
    const message = parsed.data;
    if (message.from === tabId) return;
    if ('to' in message && message.to !== undefined && message.to !== tabId) return;
    handlers.onMessage(message);
  };
  channel.onmessageerror = () => {
    if (!closed) handlers.onInvalid('a message that could not be deserialized');
  };
  return {
    post: (message) => {
      if (closed) return;
      try {
        channel.postMessage({ ...message, v: TAB_PROTOCOL_VERSION, from: tabId });
      } catch {
        // Closed under us (the tab is going away): nothing to deliver to.
      }
    },
    close: () => {
      if (closed) return;
      closed = true;
      channel.onmessage = null;
      channel.onmessageerror = null;
      channel.close();
    },
  };
};
