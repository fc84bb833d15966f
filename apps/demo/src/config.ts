import * as z from 'zod';

/** What the dev server tells the page (GET /config.json). */
const ConfigSchema = z.strictObject({
  relayUrl: z.string().regex(/^wss?:\/\/[^\s]+$/),
  dev: z.boolean().default(false),
  defaultTier: z.string().max(40).optional(),
});
export type DemoConfig = z.infer<typeof ConfigSchema>;

const CACHE_KEY = 'keel-demo-config';

/**
 * The relay URL comes from `?relay=ws://…` when given (a test puts a proxy in between), else
 * from the dev server; the last good config is kept so a reload while offline still starts.
 */
export const loadConfig = async (): Promise<DemoConfig> => {
  const override = new URLSearchParams(location.search).get('relay');
  let config: DemoConfig | undefined;
  try {
    const response = await fetch('/config.json', { cache: 'no-store' });
    if (response.ok) config = ConfigSchema.parse(await response.json());
    if (config) localStorage.setItem(CACHE_KEY, JSON.stringify(config));
  } catch {
    const cached = localStorage.getItem(CACHE_KEY);
    const parsed = cached ? ConfigSchema.safeParse(JSON.parse(cached)) : undefined;
    if (parsed?.success) config = parsed.data;
  }
  config ??= { relayUrl: `ws://${location.hostname}:8787`, dev: false };
  if (override !== null) {
    const relayUrl = z.string().regex(/^wss?:\/\/[^\s]+$/).safeParse(override);
    if (relayUrl.success) config = { ...config, relayUrl: relayUrl.data };
  }
  return config;
};
