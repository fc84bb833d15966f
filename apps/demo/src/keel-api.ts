// The client surface the demo uses: exactly what `createBrowserClient` returns (any tab).
import type { createBrowserClient } from '@keel/client/browser';

export type DemoClient = Awaited<ReturnType<typeof createBrowserClient>>;
