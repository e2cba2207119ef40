/**
 * A resumed run continues with the configuration its checkpoint recorded. Flags typed on the
 * command line that say otherwise are refused, all in one line, rather than silently ignored:
 * the user asked for something the run will not do. Flags left at their defaults, and flags
 * equal to the recorded values, are fine.
 */
import { existsSync, realpathSync } from 'node:fs';
import type { Command } from 'commander';
import { parseDataset, type TrainConfig } from '../core/train/config.js';
import type { TrainFlags } from './train.js';

type Key = keyof TrainFlags;

/** The training flags that are part of a run's config, with where the config keeps each. */
const RECORDED: [Key, string, (c: TrainConfig) => unknown][] = [
  ['seed', '--seed', (c) => c.seed],
  ['batchSize', '--batch-size', (c) => c.batchSize],
  ['lr', '--lr', (c) => c.lr],
  ['lrWarmup', '--lr-warmup', (c) => c.lrWarmup],
  ['lrDecay', '--lr-decay', (c) => c.lrDecay],
  ['lrDecaySteps', '--lr-decay-steps', (c) => c.lrDecaySteps],
  ['ema', '--ema', (c) => c.emaDecay],
  ['gradClip', '--grad-clip', (c) => c.gradClip],
  ['weighting', '--weighting', (c) => c.weighting],
  ['sde', '--sde', (c) => c.sde.name],
  ['sigmaMin', '--sigma-min', (c) => c.sde.sigmaMin],
  ['sigmaMax', '--sigma-max', (c) => c.sde.sigmaMax],
  ['channels', '--channels', (c) => c.model.channels.join(',')],
  ['embedDim', '--embed-dim', (c) => c.model.embedDim],
  ['data', '--data', (c) => parseDataset(c.dataset).source],
  ['limit', '--limit', (c) => parseDataset(c.dataset).limit ?? 'none (all images)'],
];

function sameData(a: string, b: string): boolean {
  if (a === b) return true;
  try {
    return existsSync(a) && existsSync(b) && realpathSync(a) === realpathSync(b);
  } catch {
    return false;
  }
}

/** "--lr 0.01 (the checkpoint has 0.0001)" for each flag given on the command line that contradicts `cfg`. */
export function trainConflicts(cmd: Command, f: TrainFlags, cfg: TrainConfig, holder = 'the checkpoint'): string[] {
  const out: string[] = [];
  for (const [key, flag, get] of RECORDED) {
    if (cmd.getOptionValueSource(key) !== 'cli') continue;
    const given = key === 'channels' ? f.channels!.join(',') : f[key];
    const has = get(cfg);
    const same = key === 'data' ? sameData(String(given), String(has)) : given === has;
    if (!same) out.push(`${flag} ${given} (${holder} has ${has})`);
  }
  return out;
}

/** For a synthetic run (the hidden test objective): only the batch size is a flag of it. */
export function syntheticConflicts(cmd: Command, f: TrainFlags, batchSize: number, holder = 'the checkpoint'): string[] {
  return cmd.getOptionValueSource('batchSize') === 'cli' && f.batchSize !== batchSize
    ? [`--batch-size ${f.batchSize} (${holder} has ${batchSize})`]
    : [];
}

/** Throws the one line listing every conflict, if any. */
export function refuseConflicts(what: string, conflicts: string[]): void {
  if (!conflicts.length) return;
  throw new Error(
    `${what} was made with other settings than these flags: ${conflicts.join(', ')}; ` +
      'a resumed run keeps the settings it was started with: drop these flags, or start a new run in another --out',
  );
}
