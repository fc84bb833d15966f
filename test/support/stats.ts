/** Percentile by nearest rank over a sorted copy. */
export const percentile = (values: readonly number[], p: number): number => {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
};

export interface LatencySummary {
  readonly n: number;
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
  readonly max: number;
}

export const summarize = (values: readonly number[]): LatencySummary => ({
  n: values.length,
  p50: percentile(values, 50),
  p95: percentile(values, 95),
  p99: percentile(values, 99),
  max: values.length ? Math.max(...values) : Number.NaN,
});

export const fmt = (ms: number): string => (Number.isNaN(ms) ? '—' : ms < 10 ? ms.toFixed(2) : ms.toFixed(1));

export const formatSummary = (s: LatencySummary): string =>
  `n=${s.n} p50=${fmt(s.p50)} ms p95=${fmt(s.p95)} ms p99=${fmt(s.p99)} ms max=${fmt(s.max)} ms`;
