/** `scoreflow`: train, sample, evaluate and check the score model in one process. */
import { main, newProgram } from './common.js';
import { registerEncode } from './encode.js';
import { registerEvaluate } from './evaluate.js';
import { registerLikelihood } from './likelihood.js';
import { registerParity } from './parity.js';
import { registerSample } from './sample.js';
import { registerTrain } from './train.js';
import { registerWatch } from './watch.js';

const program = newProgram('scoreflow', 'score-based generative modelling on tfjs (Song et al. 2021)');
registerTrain(program);
registerParity(program);
registerSample(program);
registerLikelihood(program);
registerEncode(program);
registerEvaluate(program);
registerWatch(program);
await main(program);
