/**
 * Structured JSON-lines logging. Fields carry pseudonymous ids, sizes and codes only — never
 * payloads, document names, or anything a payment provider said about a person.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFields = Readonly<Record<string, string | number | boolean | null | undefined>>;

export interface Logger {
  log(level: LogLevel, msg: string, fields?: LogFields): void;
}

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export const createJsonLogger = (write: (line: string) => void, minLevel: LogLevel = 'info'): Logger => ({
  log(level, msg, fields) {
    if (RANK[level] < RANK[minLevel]) return;
    write(`${JSON.stringify({ ts: new Date().toISOString(), level, msg, ...fields })}\n`);
  },
});

export const silentLogger: Logger = { log() {} };
