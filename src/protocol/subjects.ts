/**
 * NATS subjects and JetStream names of a run, and the ids that go into them. Run and worker
 * ids are subject tokens, so they are restricted to [A-Za-z0-9_-].
 *
 *   sf.R.coord        workers -> coordinator   join, heartbeat, synced, ack, checkpoint state
 *   sf.R.ctl          coordinator -> workers   hello, step plan, state request, stop
 *   sf.R.w.W          -> one worker            welcome, reduce-scatter chunks, state transfer
 *   sf.R.ag           range owner -> workers   all-gather chunks
 *   sf.R.jobs.T.todo  the work queue of task T (stream SF_JOBS_R)
 *   sf.R.jobs.T.result  its results (stream SF_RESULTS_R)
 */
const TOKEN = /^[A-Za-z0-9_-]{1,64}$/;

export function checkId(what: 'run' | 'worker', id: string): string {
  if (!TOKEN.test(id)) throw new Error(`bad ${what} id ${JSON.stringify(id)}: use 1-64 characters from A-Z a-z 0-9 _ -`);
  return id;
}

export const subjects = {
  coord: (run: string) => `sf.${run}.coord`,
  ctl: (run: string) => `sf.${run}.ctl`,
  worker: (run: string, w: string) => `sf.${run}.w.${w}`,
  gather: (run: string) => `sf.${run}.ag`,
};

/** The durable pull consumer every worker of a run binds to. */
export const WORKERS_CONSUMER = 'workers';

export const streams = {
  jobs: (run: string) => `SF_JOBS_${run}`,
  results: (run: string) => `SF_RESULTS_${run}`,
};

export const jobSubjects = {
  todo: (run: string, task: string) => `sf.${run}.jobs.${task}.todo`,
  result: (run: string, task: string) => `sf.${run}.jobs.${task}.result`,
  allTodo: (run: string) => `sf.${run}.jobs.*.todo`,
  allResults: (run: string) => `sf.${run}.jobs.*.result`,
};
