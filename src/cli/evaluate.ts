/**
 * `scoreflow classifier`: train the MNIST classifier behind the sample-quality metrics and save
 * it (safetensors), reporting its test accuracy.
 *
 * `scoreflow evaluate`: Fréchet distance in that classifier's feature space (the MNIST analogue
 * of FID), classifier confidence and class balance, and the pixel proxies (speckle, histogram
 * TV) of sample files against real images; one JSON line per sample file.
 *
 * All input is read and checked before the backend starts: a bad flag or file is one line on
 * stderr, a non-zero exit, and nothing written.
 */
import { existsSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import { loadImages, loadLabels } from '../core/data/mnist.js';
import { writeFileAtomic } from '../core/io/atomic.js';
import { readNpy } from '../core/io/npy.js';
import { readSafetensors } from '../core/io/safetensors.js';
import {
  CLASSIFIER_DEFAULTS,
  CLASSIFIER_TRAIN_DEFAULTS,
  IMAGE_SIZE,
  checkClassifierConfig,
  MnistClassifier,
  accuracy,
  decodeClassifier,
  saveClassifier,
  trainClassifier,
} from '../core/eval/classifier.js';
import { evaluateSamples, referenceStats, type Images } from '../core/eval/index.js';
import {
  backendOption,
  checkOutDir,
  deviceOption,
  noteUnverified,
  parseFloatArg,
  parseIntArg,
  startBackend,
  threadsOption,
} from './common.js';
import { progressBar } from './progress.js';
import { nativeAdamFor } from '../core/backend/native-adam.js';

function parseTwoInts(v: string): [number, number] {
  const parts = v.split(',').map((s) => Number(s.trim()));
  if (parts.length !== 2 || parts.some((c) => !Number.isInteger(c) || c < 1 || c > 4096)) {
    throw new InvalidArgumentError(`expected two positive integers like 32,64, got '${v}'`);
  }
  return parts as [number, number];
}

// ------------------------------------------------------------------ scoreflow classifier

export interface ClassifierFlags {
  out: string;
  epochs: number;
  seed: number;
  batchSize: number;
  lr: number;
  channels: [number, number];
  hidden: number;
  trainLimit?: number;
  backend: string;
  device?: string;
  threads?: number;
}

async function classifier(f: ClassifierFlags): Promise<void> {
  if (!f.out.endsWith('.safetensors')) throw new Error(`--out must name a .safetensors file, got '${f.out}'`);
  checkOutDir('--out', f.out);
  const config = checkClassifierConfig({ channels: f.channels, hidden: f.hidden }, 'scoreflow classifier');
  const train = loadImages('train', { limit: f.trainLimit });
  const trainLabels = loadLabels('train', { limit: f.trainLimit });
  const test = loadImages('test');
  const testLabels = loadLabels('test');
  const backend = await startBackend(f);

  const steps = Math.ceil(train.n / f.batchSize) * f.epochs;
  process.stderr.write(
    `classifier: ${train.n} training images, ${f.epochs} epoch(s) of batch ${f.batchSize} = ${steps} steps, seed ${f.seed}\n`,
  );
  const bar = progressBar('classifier', ' loss {loss}');
  bar.start(steps, 0, { loss: '-' });
  const t0 = performance.now();
  let trained;
  try {
    trained = trainClassifier(train.data, trainLabels.labels, {
      seed: f.seed,
      epochs: f.epochs,
      batchSize: f.batchSize,
      lr: f.lr,
      config,
      nativeAdam: nativeAdamFor(backend),
      onStep: (done, _total, loss) => bar.update(done, { loss: loss.toFixed(4) }),
    });
  } finally {
    bar.stop();
  }
  const trainSeconds = (performance.now() - t0) / 1000;
  const model = new MnistClassifier(trained.config, trained.params);
  let testAccuracy: number;
  try {
    testAccuracy = accuracy(model.run(test.data, test.n).logits, testLabels.labels);
  } finally {
    model.dispose();
  }
  process.stderr.write(
    `classifier: test accuracy ${(100 * testAccuracy).toFixed(2)}% on ${test.n} images, trained in ${trainSeconds.toFixed(1)} s\n`,
  );
  const meta = {
    seed: String(f.seed),
    epochs: String(f.epochs),
    steps: String(trained.steps),
    batch_size: String(f.batchSize),
    lr: String(f.lr),
    train: `${train.source} (${train.n} images)`,
    test_accuracy: String(testAccuracy),
    backend,
  };
  await saveClassifier(f.out, trained.config, trained.params, meta);
  const report = {
    out: f.out,
    test_accuracy: testAccuracy,
    test_n: test.n,
    train_n: train.n,
    epochs: f.epochs,
    steps: trained.steps,
    seed: f.seed,
    final_loss: trained.finalLoss,
    seconds: trainSeconds,
    backend,
  };
  process.stdout.write(JSON.stringify(report) + '\n');
}

// ------------------------------------------------------------------ scoreflow evaluate

export interface EvaluateFlags {
  samples: string[];
  classifier: string;
  ref: string;
  refLimit: number;
  batchSize: number;
  backend: string;
  device?: string;
  threads?: number;
  out?: string;
}

/** A sample .npy: float32 [N,1,28,28] or [N,28,28], N >= 2, no NaN (values outside [0,1] are allowed and clipped later). */
export function readSamples(path: string): Images & { source: string } {
  if (!existsSync(path)) throw new Error(`${path}: no such file`);
  const { shape, data } = readNpy(path);
  const s = IMAGE_SIZE;
  const ok =
    (shape.length === 4 && shape[1] === 1 && shape[2] === s && shape[3] === s) || (shape.length === 3 && shape[1] === s && shape[2] === s);
  if (!ok) throw new Error(`${path}: samples have shape [${shape.join(',')}], expected [N,1,${s},${s}] or [N,${s},${s}]`);
  if (shape[0] < 2) throw new Error(`${path}: ${shape[0]} sample(s); the Fréchet distance needs at least 2`);
  const bad = data.findIndex((v) => Number.isNaN(v));
  if (bad >= 0) throw new Error(`${path}: value NaN at image ${Math.floor(bad / (s * s))}, pixel ${bad % (s * s)}`);
  return { n: shape[0], data, source: path };
}

async function evaluate(f: EvaluateFlags): Promise<void> {
  if (f.out !== undefined) {
    if (!f.out.endsWith('.json')) throw new Error(`--out must name a .json file, got '${f.out}'`);
    checkOutDir('--out', f.out);
  }
  const sets = f.samples.map(readSamples);
  const classifierFile = readSafetensors(f.classifier);
  const weights = decodeClassifier(classifierFile); // checks it is ours first: then a missing digest means an old file
  noteUnverified('evaluate', f.classifier, classifierFile.digest === 'none');
  const ref = loadImages(f.ref, { limit: f.refLimit });
  if (ref.h !== IMAGE_SIZE || ref.w !== IMAGE_SIZE)
    throw new Error(`${ref.source}: reference images are ${ref.h}x${ref.w}, the classifier takes ${IMAGE_SIZE}x${IMAGE_SIZE}`);
  if (ref.n < 2) throw new Error(`${ref.source}: the reference needs at least 2 images, got ${ref.n}`);
  const backend = await startBackend(f);

  const model = new MnistClassifier(weights.config, weights.params);
  try {
    const t0 = performance.now();
    const reference = referenceStats(model, ref, ref.source, { batchSize: f.batchSize });
    process.stderr.write(`evaluate: reference ${ref.n} images of ${ref.source} (${((performance.now() - t0) / 1000).toFixed(1)} s)\n`);
    const lines: string[] = [];
    for (const set of sets) {
      const t1 = performance.now();
      const metrics = evaluateSamples(set, model, reference, { batchSize: f.batchSize });
      const seconds = (performance.now() - t1) / 1000;
      lines.push(JSON.stringify({ samples: set.source, ...metrics, classifier: f.classifier, seconds, backend }) + '\n');
    }
    const text = lines.join('');
    if (f.out !== undefined) await writeFileAtomic(f.out, text);
    process.stdout.write(text);
  } finally {
    model.dispose();
  }
}

// ------------------------------------------------------------------ registration

/** Both commands: `scoreflow classifier` and `scoreflow evaluate`. */
export function registerEvaluate(program: Command): void {
  program
    .command('classifier')
    .description('train the MNIST classifier whose features `scoreflow evaluate` uses; prints its test accuracy')
    .requiredOption('--out <file.safetensors>', 'where to save the weights (atomically)')
    .option('--epochs <n>', 'passes over the MNIST training set', parseIntArg(1), CLASSIFIER_TRAIN_DEFAULTS.epochs)
    .option('--seed <s>', 'seed of the initialisation and the batch order', parseIntArg(0), CLASSIFIER_TRAIN_DEFAULTS.seed)
    .option('--batch-size <b>', 'images per Adam step', parseIntArg(1), CLASSIFIER_TRAIN_DEFAULTS.batchSize)
    .option('--lr <lr>', 'initial Adam learning rate (cosine decay to 0)', parseFloatArg({ exclusiveMin: 0 }), CLASSIFIER_TRAIN_DEFAULTS.lr)
    .option('--channels <c1,c2>', 'output channels of the two convolutions', parseTwoInts, CLASSIFIER_DEFAULTS.channels)
    .option('--hidden <h>', 'width of the feature layer (the features of the Fréchet distance)', parseIntArg(1), CLASSIFIER_DEFAULTS.hidden)
    .option('--train-limit <n>', 'train on the first n training images only', parseIntArg(1))
    .addOption(backendOption())
    .addOption(deviceOption())
    .addOption(threadsOption())
    .action((opts: ClassifierFlags) => classifier(opts));

  program
    .command('evaluate')
    .description(
      'sample quality against real images: Fréchet distance of classifier features (MNIST FID), ' +
        'confidence, class balance, speckle and pixel-histogram TV; one JSON line per file',
    )
    .requiredOption('--samples <files...>', 'sample .npy files, float32 [N,1,28,28] (as written by `scoreflow sample`); clipped to [0,1]')
    .requiredOption('--classifier <path>', 'classifier weights from `scoreflow classifier`')
    .option('--ref <source>', "reference images: 'test', 'train', another data set name, an IDX image file or a [0,1] .npy", 'test')
    .option('--ref-limit <n>', 'the first n reference images', parseIntArg(2), 10000)
    .option('--batch-size <b>', 'images per classifier batch', parseIntArg(1), 500)
    .addOption(backendOption())
    .addOption(deviceOption())
    .addOption(threadsOption())
    .option('--out <file.json>', 'also write the JSON lines here (atomically)')
    .action((opts: EvaluateFlags) => evaluate(opts));
}
