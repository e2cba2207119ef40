/**
 * How a step's gradient sums move between workers (the plan names one, a Join lists those a
 * worker can take part in):
 *   nats  GradChunk messages through the broker (reduce-scatter + all-gather, rank order)
 *   gloo  a c10d ProcessGroupGloo of the plan's members: direct TCP between workers
 *   nccl  a c10d ProcessGroupNCCL: GPU workers
 */
export const TRANSPORT_NAMES = ['nats', 'gloo', 'nccl'] as const;
export type TransportName = (typeof TRANSPORT_NAMES)[number];

/**
 * gloo/nccl: the gradient is all-reduced in buckets of at least this many floats during the
 * backward pass (the plan's bucket_floats, `coordinator start --bucket-kb`): DDP's first bucket
 * size, 1 MiB (its later ones are 25 MB, beyond our whole 4 MB gradient).
 */
export const BUCKET_FLOATS = 1 << 18;

/** What a run may ask for: one of them, or `auto` (the coordinator picks per membership). */
export const TRANSPORT_CHOICES = ['auto', ...TRANSPORT_NAMES] as const;
export type TransportChoice = (typeof TRANSPORT_CHOICES)[number];
