import type { SessionHandoff } from '@keel/client';
import { h, section } from './dom.js';

type PhaseKind = 'inhale' | 'hold' | 'exhale' | 'rest';
interface Pattern {
  readonly name: string;
  readonly phases: readonly { readonly kind: PhaseKind; readonly ms: number }[];
}
/** The patterns Keel's handoff validates (box, 4-7-8, coherent), as the session records carry them. */
const PATTERNS: Record<string, Pattern> = {
  box: { name: 'box', phases: [{ kind: 'inhale', ms: 4000 }, { kind: 'hold', ms: 4000 }, { kind: 'exhale', ms: 4000 }, { kind: 'hold', ms: 4000 }] },
  '4-7-8': { name: '4-7-8', phases: [{ kind: 'inhale', ms: 4000 }, { kind: 'hold', ms: 7000 }, { kind: 'exhale', ms: 8000 }] },
  coherent: { name: 'coherent', phases: [{ kind: 'inhale', ms: 5500 }, { kind: 'exhale', ms: 5500 }] },
};
const WORDS: Record<PhaseKind, string> = { inhale: 'Breathe in', hold: 'Hold', exhale: 'Breathe out', rest: 'Rest' };
const SPEC = { class: 'breathing_session', name: 'exercise' } as const;

/** Where an exercise is after `elapsedMs` of running time. */
const phaseAt = (pattern: Pattern, elapsedMs: number) => {
  const cycleMs = pattern.phases.reduce((sum, p) => sum + p.ms, 0);
  const cycle = Math.floor(elapsedMs / cycleMs);
  let within = elapsedMs - cycle * cycleMs;
  for (let index = 0; index < pattern.phases.length; index++) {
    const phase = pattern.phases[index]!;
    if (within < phase.ms) return { index, kind: phase.kind, progress: within / phase.ms, remainingMs: phase.ms - within, cycle };
    within -= phase.ms;
  }
  return { index: 0, kind: pattern.phases[0]!.kind, progress: 0, remainingMs: pattern.phases[0]!.ms, cycle: cycle + 1 };
};

/** How big the circle is: grows on the in-breath, stays during a hold, shrinks on the out-breath. */
const scaleOf = (pattern: Pattern, index: number, progress: number): number => {
  const kind = pattern.phases[index]!.kind;
  if (kind === 'inhale') return 0.5 + 0.5 * progress;
  if (kind === 'exhale') return 1 - 0.5 * progress;
  // A hold keeps the size the previous phase ended at.
  const previous = pattern.phases[(index + pattern.phases.length - 1) % pattern.phases.length]!.kind;
  return previous === 'inhale' ? 1 : 0.5;
};

interface Running {
  readonly sessionId: string;
  readonly pattern: Pattern;
  readonly startedAt: number;
  /** Running time at `baseAt` (wall clock, ms). */
  readonly baseElapsedMs: number;
  readonly baseAt: number;
}

/**
 * A breathing exercise that hands off between devices: starting it captures a session record
 * (synced at THERAPEUTIC_ACTIVE priority); another device offers "Continue here", restores the
 * session at the phase it has reached by now, and takes it over — the first device then stops.
 */
export const renderBreathing = async (handoff: SessionHandoff): Promise<HTMLElement> => {
  const reducedMotion = matchMedia('(prefers-reduced-motion: reduce)').matches;
  let running: Running | undefined;
  let frame = 0;

  const circle = h('div', { class: 'breath-circle', 'aria-hidden': 'true' });
  const word = h('p', { class: 'breath-word', 'aria-live': 'polite' }, 'Ready when you are');
  const countdown = h('p', { class: 'breath-count' });
  const widget = h('div', { class: 'breath', 'data-testid': 'breathing', 'data-state': 'idle' }, circle, word, countdown);
  const notice = h('p', { class: 'hint', role: 'status', 'data-testid': 'breathing-notice' });
  const choose = h('select', { id: 'breath-pattern' }, ...Object.keys(PATTERNS).map((name) => h('option', { value: name }, name)));
  const start = h('button', { type: 'button', 'data-testid': 'breathing-start' }, 'Start');
  const stop = h('button', { type: 'button', disabled: true, 'data-testid': 'breathing-stop' }, 'Stop');
  const takeOver = h('button', { type: 'button', hidden: true, 'data-testid': 'breathing-continue' }, 'Continue here');

  const elapsedNow = (r: Running) => r.baseElapsedMs + (Date.now() - r.baseAt);
  const draw = () => {
    if (!running) return;
    const elapsed = elapsedNow(running);
    const phase = phaseAt(running.pattern, elapsed);
    widget.dataset.phase = phase.kind;
    widget.dataset.phaseIndex = String(phase.index);
    widget.dataset.cycle = String(phase.cycle);
    widget.dataset.elapsed = String(Math.round(elapsed));
    widget.dataset.at = String(Date.now());
    if (word.textContent !== WORDS[phase.kind]) word.textContent = WORDS[phase.kind];
    countdown.textContent = `${Math.ceil(phase.remainingMs / 1000)} s · cycle ${phase.cycle + 1}`;
    if (!reducedMotion) circle.style.transform = `scale(${scaleOf(running.pattern, phase.index, phase.progress).toFixed(3)})`;
    else circle.style.transform = `scale(${phase.kind === 'exhale' || phase.kind === 'rest' ? 0.6 : 0.9})`;
    frame = requestAnimationFrame(draw);
  };
  const run = (r: Running) => {
    running = r;
    cancelAnimationFrame(frame);
    widget.dataset.state = 'running';
    widget.dataset.session = r.sessionId;
    start.disabled = true;
    stop.disabled = false;
    takeOver.hidden = true;
    draw();
  };
  const halt = (state: string, message: string) => {
    cancelAnimationFrame(frame);
    running = undefined;
    widget.dataset.state = state;
    start.disabled = false;
    stop.disabled = true;
    notice.textContent = message;
    word.textContent = state === 'handed-off' ? 'Continuing on your other device' : 'Ready when you are';
    countdown.textContent = '';
  };

  start.addEventListener('click', async () => {
    const pattern = PATTERNS[choose.value] ?? PATTERNS.box!;
    const now = Date.now();
    const r: Running = { sessionId: crypto.randomUUID(), pattern, startedAt: now, baseElapsedMs: 0, baseAt: now };
    run(r);
    notice.textContent = 'Your other devices can continue this exercise where you are.';
    await handoff.captureSession(SPEC, { kind: 'breathing', sessionId: r.sessionId, pattern: { name: pattern.name, phases: pattern.phases.map((p) => ({ ...p })) }, startedAt: now, elapsedMs: 0, running: true });
  });
  stop.addEventListener('click', async () => {
    halt('idle', 'Exercise ended.');
    await handoff.endSession(SPEC);
  });
  takeOver.addEventListener('click', async () => {
    const restored = await handoff.restoreSession(SPEC);
    if (!restored || !restored.running) return;
    const now = Date.now();
    const pattern: Pattern = { name: restored.pattern.name, phases: restored.pattern.phases };
    const r: Running = { sessionId: restored.sessionId, pattern, startedAt: restored.startedAt ?? now, baseElapsedMs: restored.elapsedMs, baseAt: now };
    run(r);
    notice.textContent = `Continued from another device at the same phase (${WORDS[restored.phase.kind].toLowerCase()}).`;
    // Taking it over: this device now holds the session, and the other one stops.
    await handoff.captureSession(SPEC, { kind: 'breathing', sessionId: r.sessionId, pattern: restored.pattern, startedAt: r.startedAt, elapsedMs: elapsedNow(r), running: true });
  });

  const onRecord = (record: Awaited<ReturnType<SessionHandoff['watchSession']>>) => {
    if (!record || record.kind !== 'breathing') {
      takeOver.hidden = true;
      return;
    }
    if (record.device === handoff.device) return;
    if (running && running.sessionId === record.sessionId) {
      halt('handed-off', 'This exercise continues on your other device.');
      return;
    }
    takeOver.hidden = !record.running || running !== undefined;
    if (!takeOver.hidden) notice.textContent = 'A breathing exercise is running on another of your devices.';
  };
  handoff.on('session', (spec, record) => {
    if (spec.class === SPEC.class && spec.name === SPEC.name) onRecord(record);
  });
  onRecord(await handoff.watchSession(SPEC));

  return section(
    'breathing',
    'Breathing exercise',
    h('div', { class: 'inline-form' }, h('label', { for: 'breath-pattern' }, 'Pattern'), choose, start, stop, takeOver),
    widget,
    notice,
  );
};
