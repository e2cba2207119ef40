/** `scoreflow parity FIXTURE`: compare score, loss and gradients with a PyTorch-made fixture. */
import type { Command } from 'commander';
import { runParity } from '../core/parity.js';
import { backendOption, deviceOption, startBackend } from './common.js';

export function registerParity(program: Command): void {
  program
    .command('parity')
    .description('check score, DSM loss and gradients against a PyTorch fixture; exits 1 over tolerance')
    .argument('<fixture>', 'safetensors file made by reference/make_fixture.py')
    .addOption(backendOption())
    .addOption(deviceOption())
    .action(async (fixture: string, opts: { backend: string; device?: string }) => {
      const backend = await startBackend(opts);
      const report = runParity(fixture, backend);
      process.stdout.write(JSON.stringify(report, null, 2) + '\n');
      if (!report.pass) throw new Error(`parity over tolerance on ${backend} (see the JSON above)`);
    });
}
