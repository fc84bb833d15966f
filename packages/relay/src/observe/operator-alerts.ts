import type { RelayEvents } from '../events/relay-events.js';
import type { Alerter } from './alerts.js';
import { CRISIS_SLA_MS } from './crisis-sla.js';

/**
 * What raises an operator alert, as listeners on the relay's bus: a crisis entry applied past
 * the SLA, a receipt that never came from a connected device, and crisis-lane volume far above
 * what a person types. Returns what stops them.
 */
export const alertOnCrisis = (events: RelayEvents, alerter: Alerter, options: { readonly anomalyBytes: number }): (() => void) => {
  const off = [
    events.on('crisisMeasured', (m) => {
      if (!m.breached) return;
      alerter.raise({ kind: 'crisis_sla_breach', user: m.user, device: m.device, doc: m.doc, seq: m.seq, latencyMs: Math.round(m.latencyMs), relayMs: Math.round(m.relayMs), heldForCatchUp: m.heldForCatchUp, slaMs: CRISIS_SLA_MS });
    }),
    events.on('crisisReceiptMissing', (m) => {
      alerter.raise({ kind: 'crisis_receipt_missing', user: m.user, device: m.device, doc: m.doc, seq: m.seq, waitedMs: m.waitedMs });
    }),
    events.on('crisisAnomaly', (m) => {
      alerter.raise({ kind: 'crisis_volume_anomaly', user: m.user, device: m.device, bytes: m.bytes, thresholdBytes: options.anomalyBytes });
    }),
  ];
  return () => {
    for (const f of off) f();
  };
};
