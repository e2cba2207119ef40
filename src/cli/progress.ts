import cliProgress from 'cli-progress';

/** A progress bar on stderr (silent when stderr is not a terminal, e.g. in CI logs). */
export function progressBar(label: string, extraFormat = ''): cliProgress.SingleBar {
  return new cliProgress.SingleBar(
    {
      format: `${label} [{bar}] {percentage}% {value}/{total} eta {eta_formatted}${extraFormat}`,
      stream: process.stderr,
      hideCursor: false,
      etaBuffer: 20,
    },
    cliProgress.Presets.shades_classic,
  );
}
