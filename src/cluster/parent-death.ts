/**
 * Children that die with their parent, however it dies. A process SIGKILLed gets no chance to
 * stop what it spawned, so the kernel has to: Linux's parent-death signal (prctl
 * PR_SET_PDEATHSIG), set by util-linux `setpriv --pdeathsig SIGKILL` just before it execs the
 * real command (the pid stays the command's; the setting survives the exec). Where setpriv
 * lacks the option (not Linux, old util-linux) commands run unwrapped, and callers should
 * have another way (a worker watches its stdin pipe: see `worker start --parent-pipe`).
 */
import { execFileSync } from 'node:child_process';

let setpriv: string | null | undefined;

/** The setpriv binary if it supports --pdeathsig (checked once), else null. */
export function findSetpriv(): string | null {
  if (setpriv !== undefined) return setpriv;
  setpriv = null;
  for (const c of ['/usr/bin/setpriv', '/bin/setpriv']) {
    try {
      if (execFileSync(c, ['--help'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 }).includes('--pdeathsig')) {
        setpriv = c;
        break;
      }
    } catch {
      /* next */
    }
  }
  return setpriv;
}

/** [command, args] that run `cmd args` and deliver SIGKILL to it when this process dies. */
export function dieWithParent(cmd: string, args: string[]): [string, string[]] {
  const s = findSetpriv();
  return s ? [s, ['--pdeathsig', 'SIGKILL', '--', cmd, ...args]] : [cmd, args];
}
