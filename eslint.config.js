import tseslint from 'typescript-eslint';

/**
 * The rooms of src/ and who may enter which (the map: README.md, "Layout"):
 *   cli -> coordinator | worker -> cluster | protocol -> core;  metrics beside, fed by cli.
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
    rules: rule(['protocol', 'cluster', 'coordinator', 'worker', 'cli', 'metrics'], ['nats', 'prom-client', 'commander', 'node:http']),
  },
  { files: ['src/protocol/**'], rules: rule(['cluster', 'coordinator', 'worker', 'cli', 'metrics']) },
  { files: ['src/cluster/**'], rules: rule(['coordinator', 'worker', 'cli', 'metrics']) },
  { files: ['src/coordinator/**'], rules: rule(['worker', 'cli', 'metrics']) },
  { files: ['src/worker/**'], rules: rule(['coordinator', 'cli', 'metrics']) },
  { files: ['src/metrics/**'], rules: rule(['cluster', 'coordinator', 'worker', 'cli']) },
);
