import type { AuditReport } from './audit-report-summary.js';

const pct = (share: number | null): string => (share === null ? '—' : `${(share * 100).toFixed(2)}%`);
const ms = (value: number | null): string => (value === null ? '—' : `${value} ms`);

/** `code 3, other 1`, or `none`. */
const counts = (rec: Readonly<Record<string, number>>): string => {
  const entries = Object.entries(rec);
  return entries.length === 0 ? 'none' : entries.map(([k, n]) => `${k} ${n}`).join(', ');
};

/** The report as an operator reads it: one heading per area, figures aligned, no ids of anyone. */
export const formatAuditReport = (r: AuditReport): string => {
  const lines = [
    `Keel relay audit report, ${r.from} to ${r.to} (${r.rows} audit rows${r.unreadable > 0 ? `, ${r.unreadable} unreadable` : ''})`,
    '',
    'Crisis response (receipts: reaching the relay -> applied on the other device)',
    `  receipts ${r.crisis.receipts}; p50 ${ms(r.crisis.p50Ms)}, p99 ${ms(r.crisis.p99Ms)}, max ${ms(r.crisis.maxMs)}`,
    `  SLA breaches ${r.crisis.breaches}; missing receipts ${r.crisis.missing}`,
    '',
    'SLA attainment by tier (sync operations committed within the tier\'s maxResponseMs)',
    ...Object.entries(r.slaByTier).map(
      ([tier, s]) => `  ${tier.padEnd(13)} ${String(s.within).padStart(8)} / ${String(s.operations).padEnd(8)} ${pct(s.attainment).padStart(8)}  (within ${s.maxResponseMs} ms)`,
    ),
    '',
    'Sync operations by lane',
    ...(r.lanes.length === 0
      ? ['  none']
      : r.lanes.map((l) => `  ${String(l.lane).padStart(2)} ${l.class.padEnd(19)} ${String(l.operations).padStart(8)} ops ${String(l.envelopes).padStart(9)} envelopes ${String(l.bytes).padStart(12)} bytes`)),
    '',
    `Auth failures: ${counts(r.authFailures)}`,
    `Envelopes refused or deferred: ${counts(r.refusals)}`,
    `Bad frames: ${counts(r.badFrames)}`,
    `Anomalies: crisis volume ${r.anomalies.crisisVolume}, lane reports ${r.anomalies.laneReports}`,
    `Devices: logins ${r.devices.logins}, registered ${r.devices.registered}, revoked ${r.devices.revoked}`,
    `Pairing: ${counts(r.pairing)}`,
    `Data-rights operations: ${counts(r.dataRights)}`,
    `Other audited operations: ${counts(r.otherOps)}`,
  ];
  if (r.droppedRows > 0) lines.push(`WARNING: ${r.droppedRows} audit rows were dropped by the relay (it could not write them) in this window`);
  return `${lines.join('\n')}\n`;
};
