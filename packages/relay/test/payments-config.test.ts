import { describe, expect, it } from 'vitest';
import { RelayConfigSchema } from '../src/config.js';

const DAY = 24 * 60 * 60 * 1000;
const issues = (input: Record<string, unknown>) => {
  const parsed = RelayConfigSchema.safeParse(input);
  return parsed.success ? [] : parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
};

describe('payment settings', () => {
  it('defaults to docs/design.md’s grace periods, Stripe’s tolerance, no secret and no prices', () => {
    const config = RelayConfigSchema.parse({});
    expect(config).toMatchObject({
      webhookToleranceSeconds: 300,
      priceTiers: {},
      gracePremiumMs: 14 * DAY,
      graceBasicMs: 7 * DAY,
      graceWindowMs: 90 * DAY,
      graceFloorMs: DAY,
    });
    expect(config.webhookSecret).toBeUndefined();
  });

  it('reads the price map and durations as the environment gives them (text)', () => {
    const config = RelayConfigSchema.parse({
      priceTiers: '{"price_basic":"basic","price_premium":"premium"}',
      gracePremiumMs: '2000',
      graceBasicMs: '1000',
      graceFloorMs: '500',
      webhookToleranceSeconds: '60',
    });
    expect(config.priceTiers).toEqual({ price_basic: 'basic', price_premium: 'premium' });
    expect([config.gracePremiumMs, config.graceBasicMs, config.graceFloorMs, config.webhookToleranceSeconds]).toEqual([2000, 1000, 500, 60]);
  });

  it('refuses a bad price map, a floor above a base, and a short secret, naming the setting', () => {
    expect(issues({ priceTiers: '{not json' })[0]).toMatch(/^priceTiers: price tiers must be a JSON object/);
    expect(issues({ priceTiers: '{"price_x":"platinum"}' })[0]).toMatch(/^priceTiers\.price_x: a price maps to "basic" or "premium"/);
    expect(issues({ priceTiers: '{"price x":"basic"}' }).join()).toMatch(/priceTiers/);
    expect(issues({ graceBasicMs: '1000' })).toEqual(['graceFloorMs: grace floor must not be longer than the basic or premium grace period']);
    expect(issues({ webhookSecret: 'short' })[0]).toMatch(/^webhookSecret: webhook secret must be at least 16 characters/);
  });
});
