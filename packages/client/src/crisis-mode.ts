// Crisis mode and questionnaires: the user's crisis flag and their PHQ-9 / GAD-7 forms, kept in
// documents of their own so they sync at crisis priority. KeelClient only forwards to it.
import { type Assessment, type CrisisDetection, type DocClass, detectCrisis, parseAssessment } from '@keel/engine';
import type * as Y from 'yjs';

/** A document by class and name, as `KeelClient.open` takes it (kept local: no import of client.ts). */
interface CrisisDocSpec {
  readonly class: DocClass;
  readonly name: string;
}

/** The crisis-mode flag lives in its own crisis-class document, so it syncs at crisis priority. */
export const CRISIS_MODE_DOC: CrisisDocSpec = { class: 'crisis_mode', name: 'state' };

/** Where a form is stored: one `assessment` document per form, this map inside it. */
const ASSESSMENT_MAP = 'assessment';

export interface CrisisModeDeps {
  /** Opens (or returns the open) live document. */
  readonly open: (spec: CrisisDocSpec) => Promise<Y.Doc>;
  /** Wall clock, ms since the epoch, for the timestamps written into the documents. */
  readonly now: () => number;
  /** Crisis mode turned on or off, on this device or another of the user's. */
  readonly onChange: (active: boolean) => void;
}

export type AssessmentResult = CrisisDetection & { readonly assessment: Assessment };

/**
 * Whether the user is in crisis mode, read from the synced crisis-mode document, and the two
 * ways it turns on: the user (or app) says so, or a questionnaire crosses a crisis threshold —
 * for PHQ-9 item 9 the moment that answer is given, even with the form unfinished.
 */
export class CrisisMode {
  readonly #deps: CrisisModeDeps;
  #active = false;
  #watching: Promise<void> | undefined;

  constructor(deps: CrisisModeDeps) {
    this.#deps = deps;
  }

  get active(): boolean {
    return this.#active;
  }

  /** Opens the crisis-mode document and follows it; changes from any device emit `onChange`. */
  watch(): Promise<void> {
    this.#watching ??= this.#deps.open(CRISIS_MODE_DOC).then((doc) => {
      const state = doc.getMap('crisis');
      const read = () => {
        const active = state.get('active') === true;
        if (active === this.#active) return;
        this.#active = active;
        this.#deps.onChange(active);
      };
      state.observe(read);
      read();
    });
    return this.#watching;
  }

  /** Turns crisis mode on or off for every device of the user; syncs at crisis priority. */
  async set(active: boolean, source: string): Promise<void> {
    const doc = await this.#deps.open(CRISIS_MODE_DOC);
    doc.transact(() => {
      const state = doc.getMap('crisis');
      state.set('active', active);
      state.set('since', this.#deps.now());
      state.set('source', source);
    });
  }

  /**
   * An external crisis signal (the operator's crisis service, through the relay): turns crisis
   * mode on for every device of the user, once per signal id — the ids acted on are kept in the
   * synced crisis-mode document, so a signal delivered again (on each connection while the relay
   * keeps it) or to another device does not turn crisis mode back on after the user ended it.
   * `caughtUp` resolves once the document has caught up with the relay (or has waited long
   * enough: a crisis signal is never held back for a slow sync). True when this call acted.
   */
  async externalSignal(signal: { readonly id: string; readonly at: number; readonly reason: string }, caughtUp: () => Promise<void>): Promise<boolean> {
    const doc = await this.#deps.open(CRISIS_MODE_DOC);
    await caughtUp();
    const acted = doc.getMap('signals');
    if (acted.has(signal.id)) return false;
    doc.transact(() => {
      acted.set(signal.id, { at: signal.at, reason: signal.reason });
      const state = doc.getMap('crisis');
      state.set('active', true);
      state.set('since', this.#deps.now());
      state.set('source', `external:${signal.reason}`);
    });
    return true;
  }

  /**
   * Records a PHQ-9 or GAD-7 form, complete or still being filled in (`null` for an item not
   * answered yet), in its own `assessment` document; recording it again as answers come in
   * overwrites it. One that crosses a crisis threshold is flagged (it then syncs as a crisis
   * assessment) and turns crisis mode on. Bad input throws with code `SCHEMA`.
   */
  async recordAssessment(name: string, input: unknown): Promise<AssessmentResult> {
    const parsed = parseAssessment(input);
    if (!parsed.ok) throw Object.assign(new Error(`${parsed.error.code}: ${parsed.error.message}`), { code: parsed.error.code });
    const result = detectCrisis(parsed.value);
    const doc = await this.#deps.open({ class: 'assessment', name });
    doc.transact(() => {
      const map = doc.getMap(ASSESSMENT_MAP);
      map.set('kind', parsed.value.kind);
      map.set('answers', [...parsed.value.answers]);
      map.set('total', result.total);
      map.set('complete', result.complete);
      map.set('crisis', result.crisis);
      map.set('reasons', [...result.reasons]);
      map.set('at', this.#deps.now());
    });
    if (result.crisis) await this.set(true, 'assessment');
    return { ...result, assessment: parsed.value };
  }
}

/** Whether an open assessment document holds a form that crossed a crisis threshold (it syncs at lane 9). */
export const isCrisisAssessment = (doc: Y.Doc): boolean => doc.getMap(ASSESSMENT_MAP).get('crisis') === true;
