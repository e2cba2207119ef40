import tseslint from 'typescript-eslint';

/**
 * The rooms of src/ and who may enter which (the map: README.md, "Layout"):
 *   cli -> coordinator | worker -> cluster | protocol -> core;  coordinator and worker report into telemetry,
 *   which metrics (fed by cli) subscribes to.
 * Coordinator and worker never import each other; core imports no networking, HTTP or CLI.
 */
const room = (name) => [`./${name}/**`, `../${name}/**`, `../../${name}/**`, `../../../${name}/**`];
const rule = (forbidden, extra = []) => ({
  'no-restricted-imports': [
    'error',
    {
      patterns: [
        ...forbidden.map((name) => ({ group: room(name), message: `this room may not import src/${name} (see eslint.config.js)` })),
        ...extra.map((name) => ({ group: [name], message: `no ${name} here (see eslint.config.js)` })),
      ],
    },
  ],
});

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'native/build/**', '.device/**'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['src/core/**'],
    rules: rule(
      ['protocol', 'cluster', 'telemetry', 'coordinator', 'worker', 'cli', 'metrics'],
      ['nats', 'prom-client', 'commander', 'node:http'],
    ),
  },
  { files: ['src/protocol/**'], rules: rule(['cluster', 'telemetry', 'coordinator', 'worker', 'cli', 'metrics']) },
  { files: ['src/cluster/**'], rules: rule(['telemetry', 'coordinator', 'worker', 'cli', 'metrics']) },
  { files: ['src/telemetry/**'], rules: rule(['cluster', 'coordinator', 'worker', 'cli', 'metrics'], ['nats', 'prom-client']) },
  { files: ['src/coordinator/**'], rules: rule(['worker', 'cli', 'metrics']) },
  { files: ['src/worker/**'], rules: rule(['coordinator', 'cli', 'metrics']) },
  { files: ['src/metrics/**'], rules: rule(['cluster', 'coordinator', 'worker', 'cli']) },
);
