import { readFileSync } from 'node:fs';

export interface ProcessMemory {
  /** Resident set now, MiB. */
  readonly rssMb: number;
  /** Peak resident set since the process started (VmHWM), MiB. */
  readonly peakRssMb: number;
}

/** Resident memory of a process, from /proc (Linux). */
export const processMemory = (pid: number): ProcessMemory => {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  return { rssMb: kib('VmRSS') / 1024, peakRssMb: kib('VmHWM') / 1024 };
};
