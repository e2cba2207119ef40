// Kubernetes and container side of deploy/: the kustomizations are rendered, every object is
// validated against the Kubernetes schemas (kubernetes-models), and the rendered set is checked for
// what the deployment relies on: probes, limits, security contexts, GPUs, the NATS token, and
// selectors and ports that meet.
//
// Rendering: Debian has no kustomize package, so test/helpers/kustomize.ts is a small renderer for the subset
// the kustomizations use (resources, namespace, labels, images, strategic-merge patches of named
// objects) and refuses anything else. Where `kubectl` is installed, its `kubectl kustomize` output
// must equal ours.
//
// The Prometheus Operator kinds (ServiceMonitor, PodMonitor, PrometheusRule) are not in
// kubernetes-models and @kubernetes-models/prometheus-operator is not installed: they are validated
// with ajv against the schemas below, written from the Operator's CRDs (v1) for the fields in use
// plus the common ones, with unknown fields rejected.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { Ajv } from 'ajv';
import { parseAllDocuments } from 'yaml';
import { packagePath } from '../src/core/paths.js';
import { containersOf, podSpec, render, WORKLOADS, type Obj } from './helpers/kustomize.js';

const k8sDir = packagePath('deploy', 'k8s');
const KUSTOMIZATIONS = { base: join(k8sDir, 'base'), example: join(k8sDir, 'overlays', 'example') };

const key = (o: Obj) => `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`;
const byKey = (objs: Obj[]) => new Map(objs.map((o) => [key(o), o]));

// ---------------------------------------------------------------------------------------------
// Schemas for the Prometheus Operator kinds (monitoring.coreos.com/v1), a strict subset.

const duration = { type: 'string', pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$' };
const stringMap = { type: 'object', additionalProperties: { type: 'string' } };
const labelSelector = {
  type: 'object',
  additionalProperties: false,
  properties: {
    matchLabels: stringMap,
    matchExpressions: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['key', 'operator'],
        properties: {
          key: { type: 'string' },
          operator: { enum: ['In', 'NotIn', 'Exists', 'DoesNotExist'] },
          values: { type: 'array', items: { type: 'string' } },
        },
      },
    },
  },
};
const relabelings = { type: 'array', items: { type: 'object' } };
const endpointProps = {
  port: { type: 'string' },
  targetPort: { type: ['string', 'integer'] },
  path: { type: 'string', pattern: '^/' },
  scheme: { enum: ['http', 'https'] },
  interval: duration,
  scrapeTimeout: duration,
  honorLabels: { type: 'boolean' },
  honorTimestamps: { type: 'boolean' },
  params: { type: 'object' },
  relabelings,
  metricRelabelings: relabelings,
  tlsConfig: { type: 'object' },
  bearerTokenSecret: { type: 'object' },
  basicAuth: { type: 'object' },
};
const metadata = {
  type: 'object',
  required: ['name'],
  properties: {
    name: { type: 'string', pattern: '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' },
    namespace: { type: 'string' },
    labels: stringMap,
    annotations: stringMap,
  },
};
const crd = (kind: string, spec: object) => ({
  type: 'object',
  additionalProperties: false,
  required: ['apiVersion', 'kind', 'metadata', 'spec'],
  properties: { apiVersion: { const: 'monitoring.coreos.com/v1' }, kind: { const: kind }, metadata, spec },
});
const commonMonitor = {
  jobLabel: { type: 'string' },
  selector: labelSelector,
  namespaceSelector: { type: 'object' },
  sampleLimit: { type: 'integer', minimum: 0 },
  podTargetLabels: { type: 'array', items: { type: 'string' } },
};
const MONITORING_SCHEMAS: Record<string, object> = {
  ServiceMonitor: crd('ServiceMonitor', {
    type: 'object',
    additionalProperties: false,
    required: ['selector', 'endpoints'],
    properties: {
      ...commonMonitor,
      targetLabels: { type: 'array', items: { type: 'string' } },
      endpoints: { type: 'array', minItems: 1, items: { type: 'object', additionalProperties: false, properties: endpointProps } },
    },
  }),
  PodMonitor: crd('PodMonitor', {
    type: 'object',
    additionalProperties: false,
    required: ['selector', 'podMetricsEndpoints'],
    properties: {
      ...commonMonitor,
      podMetricsEndpoints: {
        type: 'array',
        minItems: 1,
        items: { type: 'object', additionalProperties: false, properties: endpointProps },
      },
    },
  }),
  PrometheusRule: crd('PrometheusRule', {
    type: 'object',
    additionalProperties: false,
    properties: {
      groups: {
        type: 'array',
        items: {
          type: 'object',
          additionalProperties: false,
          required: ['name', 'rules'],
          properties: {
            name: { type: 'string', minLength: 1 },
            interval: duration,
            partial_response_strategy: { type: 'string' },
            rules: {
              type: 'array',
              items: {
                type: 'object',
                additionalProperties: false,
                required: ['expr'],
                oneOf: [{ required: ['alert'] }, { required: ['record'] }],
                properties: {
                  alert: { type: 'string' },
                  record: { type: 'string' },
                  expr: { type: ['string', 'integer'] },
                  for: duration,
                  keep_firing_for: duration,
                  labels: stringMap,
                  annotations: stringMap,
                },
              },
            },
          },
        },
      },
    },
  }),
};

const ajv = new Ajv({ allErrors: true });
const monitoringValidators = Object.fromEntries(Object.entries(MONITORING_SCHEMAS).map(([k, s]) => [k, ajv.compile(s)]));

async function validate(o: Obj): Promise<void> {
  const where = key(o);
  if (o.apiVersion === 'monitoring.coreos.com/v1') {
    const v = monitoringValidators[o.kind];
    assert.ok(v, `${where}: no schema for ${o.kind}`);
    assert.ok(v(o), `${where}: ${ajv.errorsText(v.errors)}`);
    return;
  }
  const mod = (await import(`kubernetes-models/${o.apiVersion}`)) as Record<string, new (data: Obj) => { validate(): void }>;
  const Model = mod[o.kind];
  assert.ok(Model, `${where}: kubernetes-models has no ${o.apiVersion} ${o.kind}`);
  try {
    new Model(o).validate();
  } catch (e) {
    assert.fail(`${where} does not validate: ${(e as Error).message}`);
  }
}

// ---------------------------------------------------------------------------------------------

const arg = (args: string[], flag: string) => {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
};
const matches = (selector: Obj | undefined, labels: Obj | undefined) =>
  !!selector && Object.entries(selector).every(([k, v]) => labels?.[k] === v);

function checkDeployment(name: string, objs: Obj[]): void {
  const find = (kind: string, n: string) => {
    const o = objs.find((x) => x.kind === kind && x.metadata.name === n);
    assert.ok(o, `${name}: no ${kind} ${n}`);
    return o;
  };
  const coordinator = find('Job', 'scoreflow-coordinator');
  const workers = find('StatefulSet', 'scoreflow-worker');
  const nats = find('StatefulSet', 'scoreflow-nats');
  const natsService = find('Service', 'scoreflow-nats');

  for (const o of objs.filter(podSpec)) {
    const spec = podSpec(o)!;
    const where = `${name} ${key(o)}`;
    assert.equal(spec.securityContext?.runAsNonRoot, true, `${where}: runAsNonRoot`);
    assert.equal(spec.securityContext?.seccompProfile?.type, 'RuntimeDefault', `${where}: seccomp`);
    assert.equal(spec.automountServiceAccountToken, false, `${where}: no service-account token`);
    const volumes = new Set((spec.volumes ?? []).map((v: Obj) => v.name));
    for (const vct of o.spec.volumeClaimTemplates ?? []) volumes.add(vct.metadata.name);
    for (const c of containersOf(o)) {
      const at = `${where} container ${c.name}`;
      assert.match(c.image, /^[^:]+(:[\w.-]+)$/, `${at}: image ${c.image} needs a tag`);
      assert.doesNotMatch(c.image, /:latest$/, `${at}: no :latest`);
      assert.equal(c.securityContext?.allowPrivilegeEscalation, false, `${at}: allowPrivilegeEscalation`);
      assert.equal(c.securityContext?.readOnlyRootFilesystem, true, `${at}: readOnlyRootFilesystem`);
      assert.deepEqual(c.securityContext?.capabilities?.drop, ['ALL'], `${at}: drop ALL capabilities`);
      for (const r of ['cpu', 'memory']) {
        assert.ok(c.resources?.requests?.[r] && c.resources?.limits?.[r], `${at}: ${r} request and limit`);
      }
      const ports = new Set((c.ports ?? []).map((p: Obj) => p.name));
      for (const probe of ['livenessProbe', 'readinessProbe']) {
        assert.ok(c[probe]?.httpGet, `${at}: ${probe}`);
        assert.ok(ports.has(c[probe].httpGet.port), `${at}: ${probe} port ${c[probe].httpGet.port} is not a named port`);
      }
      for (const m of c.volumeMounts ?? []) assert.ok(volumes.has(m.name), `${at}: mounts unknown volume ${m.name}`);
      // nats-server's config reads $NATS_TOKEN; scoreflow's processes read $SCOREFLOW_NATS_TOKEN (src/cluster/auth.ts).
      const tokenVar = /scoreflow/.test(c.image) ? 'SCOREFLOW_NATS_TOKEN' : 'NATS_TOKEN';
      const token = (c.env ?? []).find((e: Obj) => e.name === tokenVar);
      assert.deepEqual(
        token?.valueFrom?.secretKeyRef,
        { name: 'scoreflow-nats', key: 'token' },
        `${at}: ${tokenVar} from Secret scoreflow-nats`,
      );
    }
    for (const v of spec.volumes ?? []) {
      if (v.persistentVolumeClaim) find('PersistentVolumeClaim', v.persistentVolumeClaim.claimName);
      if (v.configMap) find('ConfigMap', v.configMap.name);
    }
  }

  // The scoreflow processes: metrics port, /healthz and /readyz.
  const [cc] = containersOf(coordinator);
  const [wc] = containersOf(workers);
  for (const c of [cc, wc]) {
    assert.match(c.image, /scoreflow/);
    assert.equal(c.livenessProbe.httpGet.path, '/healthz');
    assert.equal(c.readinessProbe.httpGet.path, '/readyz');
    const port = c.ports.find((p: Obj) => p.name === 'metrics');
    assert.equal(String(port?.containerPort), arg(c.args, '--metrics-port'), `${c.name}: --metrics-port is the metrics containerPort`);
    assert.ok(existsSync(packagePath('bin', c.command[1].replace('/app/bin/', ''))), `${c.name}: ${c.command[1]} is not in bin/`);
    assert.equal(c.args[0], 'start');
    const url = new URL(arg(c.args, '--nats')!);
    assert.equal(url.hostname, natsService.metadata.name);
    assert.ok(
      natsService.spec.ports.some((p: Obj) => String(p.port) === url.port),
      `${c.name}: NATS port ${url.port}`,
    );
  }
  assert.ok(cc.args.includes('--no-spawn'), 'the coordinator must not spawn workers in a pod');
  assert.equal(arg(cc.args, '--gpus'), String(workers.spec.replicas), `${name}: coordinator --gpus must equal the worker replicas`);
  assert.equal(arg(cc.args, '--run'), arg(wc.args, '--run'), `${name}: coordinator and workers on the same --run`);
  assert.ok(
    cc.volumeMounts.some((m: Obj) => arg(cc.args, '--out')!.startsWith(m.mountPath + '/') && m.name === 'checkpoints'),
    'the coordinator writes --out to its checkpoint volume',
  );
  assert.equal(String(wc.resources.limits['nvidia.com/gpu']), '1', 'one GPU per worker');
  assert.equal(coordinator.spec.template.spec.restartPolicy, 'OnFailure');

  // NATS: JetStream on the volume, token from the environment.
  const conf = find('ConfigMap', 'scoreflow-nats-config').data['nats.conf'] as string;
  assert.match(conf, /token:\s*\$NATS_TOKEN/);
  const store = /store_dir:\s*(\S+)/.exec(conf)?.[1];
  const [nc] = containersOf(nats);
  const dataMount = nc.volumeMounts.find((m: Obj) => m.name === 'data');
  assert.ok(store && dataMount && store.startsWith(dataMount.mountPath), 'JetStream store_dir on the data volume');
  assert.ok(nats.spec.volumeClaimTemplates.some((v: Obj) => v.metadata.name === 'data'));

  // Services select pods and name their ports; monitors select services and pods.
  const pods = objs.filter((o) => WORKLOADS.has(o.kind));
  for (const s of objs.filter((o) => o.kind === 'Service')) {
    const target = pods.find((p) => matches(s.spec.selector, p.spec.template.metadata.labels));
    assert.ok(target, `${name} Service ${s.metadata.name} selects no pods`);
    const ports = new Set(containersOf(target).flatMap((c) => (c.ports ?? []).map((p: Obj) => p.name)));
    for (const p of s.spec.ports) assert.ok(ports.has(p.targetPort), `Service ${s.metadata.name}: targetPort ${p.targetPort}`);
  }
  assert.equal(find('Service', 'scoreflow-worker').spec.clusterIP, 'None');
  assert.equal(workers.spec.serviceName, 'scoreflow-worker');
  const sm = find('ServiceMonitor', 'scoreflow-coordinator');
  const svc = objs.find((o) => o.kind === 'Service' && matches(sm.spec.selector.matchLabels, o.metadata.labels));
  assert.ok(svc, 'the ServiceMonitor selects no Service');
  assert.ok(sm.spec.endpoints.every((e: Obj) => svc.spec.ports.some((p: Obj) => p.name === e.port)));
  assert.equal(svc.metadata.labels[sm.spec.jobLabel], 'scoreflow-coordinator', 'job label as the alert rules expect');
  const pm = find('PodMonitor', 'scoreflow-worker');
  assert.ok(matches(pm.spec.selector.matchLabels, workers.spec.template.metadata.labels), 'the PodMonitor selects the workers');
  assert.equal(workers.spec.template.metadata.labels[pm.spec.jobLabel], 'scoreflow-worker');
  assert.ok(pm.spec.podMetricsEndpoints.every((e: Obj) => wc.ports.some((p: Obj) => p.name === e.port)));
}

describe('kubernetes manifests', () => {
  const rendered = Object.fromEntries(Object.entries(KUSTOMIZATIONS).map(([n, d]) => [n, render(d)])) as Record<
    keyof typeof KUSTOMIZATIONS,
    Obj[]
  >;

  test('render to the expected objects, in the right namespace, with the right images', () => {
    const kinds = (objs: Obj[]) => objs.map((o) => `${o.kind}/${o.metadata.name}`).sort();
    assert.deepEqual(kinds(rendered.base), [
      'ConfigMap/scoreflow-nats-config',
      'Job/scoreflow-coordinator',
      'Namespace/scoreflow',
      'NetworkPolicy/scoreflow-worker-data-plane',
      'PersistentVolumeClaim/scoreflow-checkpoints',
      'PodMonitor/scoreflow-worker',
      'PrometheusRule/scoreflow',
      'Service/scoreflow-coordinator',
      'Service/scoreflow-nats',
      'Service/scoreflow-worker',
      'ServiceMonitor/scoreflow-coordinator',
      'StatefulSet/scoreflow-nats',
      'StatefulSet/scoreflow-worker',
    ]);
    assert.deepEqual(kinds(rendered.example), kinds(rendered.base));
    for (const o of rendered.example) {
      if (o.kind !== 'Namespace') assert.equal(o.metadata.namespace, 'scoreflow', key(o));
      assert.equal(o.metadata.labels['app.kubernetes.io/instance'], 'example', key(o));
    }
    const images = new Set(rendered.example.flatMap(containersOf).map((c) => c.image));
    assert.deepEqual([...images].sort(), ['nats:2.10-alpine', 'registry.example.com/ml/scoreflow:0.1.0']);
    const workers = rendered.example.find((o) => o.kind === 'StatefulSet' && o.metadata.name === 'scoreflow-worker')!;
    assert.equal(workers.spec.replicas, 4);
    assert.equal(workers.spec.template.spec.containers[0].resources.limits['nvidia.com/gpu'], 1, 'the patch kept the base fields');
  });

  test("the c10d data plane: workers bind their pod IP, and only the run's workers reach them (besides metrics)", () => {
    for (const objs of Object.values(rendered)) {
      const sts = objs.find((o) => o.kind === 'StatefulSet' && o.metadata.name === 'scoreflow-worker')!;
      const c = sts.spec.template.spec.containers[0];
      const port = c.args[c.args.indexOf('--data-port') + 1];
      assert.ok(
        c.ports.some((p: { name: string; containerPort: number }) => p.name === 'c10d' && String(p.containerPort) === port),
        'the store port is not a named container port',
      );
      assert.deepEqual(c.env.find((e: { name: string }) => e.name === 'SCOREFLOW_DATA_HOST')?.valueFrom, {
        fieldRef: { fieldPath: 'status.podIP' },
      });
      const np = objs.find((o) => o.kind === 'NetworkPolicy')!;
      assert.ok(matches(np.spec.podSelector.matchLabels, sts.spec.template.metadata.labels), 'the policy does not select the worker pods');
      assert.deepEqual(np.spec.policyTypes, ['Ingress']);
      const [peers, metrics] = np.spec.ingress;
      assert.equal(np.spec.ingress.length, 2);
      assert.ok(
        matches(peers.from[0].podSelector.matchLabels, sts.spec.template.metadata.labels) && peers.from.length === 1 && !peers.ports,
        'rule 1: every port, from worker pods only',
      );
      assert.ok(
        !metrics.from &&
          metrics.ports.length === 1 &&
          String(metrics.ports[0].port) === c.ports.find((p: { name: string }) => p.name === 'metrics').containerPort.toString(),
        'rule 2: the metrics port only',
      );
    }
  });

  test('every object validates against the Kubernetes schemas', async () => {
    for (const objs of Object.values(rendered)) for (const o of objs) await validate(o);
    // The validators do reject bad objects.
    const bad = structuredClone(rendered.base.find((o) => o.kind === 'StatefulSet')!);
    bad.spec.template.spec.containers[0].ports[0].containerPort = 'http';
    await assert.rejects(validate(bad), /containerPort must be integer/);
    const badMonitor = structuredClone(rendered.base.find((o) => o.kind === 'PodMonitor')!);
    badMonitor.spec.podMetricsEndpoints[0].intervall = '15s';
    await assert.rejects(validate(badMonitor), /must NOT have additional properties/);
  });

  test('the deployment holds together: probes, limits, security, GPUs, token, selectors, ports', () => {
    for (const [name, objs] of Object.entries(rendered)) checkDeployment(name, objs);
  });

  const kubectl = spawnSync('sh', ['-c', 'command -v kubectl'], { encoding: 'utf8' }).stdout.trim();
  test(
    'kubectl kustomize renders the same objects',
    { skip: kubectl ? false : 'kubectl not installed; the test renderer alone was used' },
    () => {
      for (const [name, dir] of Object.entries(KUSTOMIZATIONS)) {
        const r = spawnSync(kubectl, ['kustomize', dir], { encoding: 'utf8', timeout: 30_000 });
        assert.equal(r.status, 0, `kubectl kustomize ${dir}: ${r.stderr}`);
        const theirs = byKey(parseAllDocuments(r.stdout).map((d) => d.toJS() as Obj));
        const ours = byKey(rendered[name as keyof typeof KUSTOMIZATIONS]);
        assert.deepEqual([...ours.keys()].sort(), [...theirs.keys()].sort(), name);
        for (const [k, o] of ours) assert.deepEqual(o, theirs.get(k), `${name}: ${k} differs from kubectl kustomize`);
      }
    },
  );
});

describe('the container image', () => {
  const dockerfile = readFileSync(packagePath('deploy', 'docker', 'Dockerfile'), 'utf8');
  const lines = dockerfile
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));

  test('is multi-stage, ends on a slim Node 20 runtime with a non-root user, and copies paths that exist', () => {
    const froms = lines.filter((l) => /^FROM /i.test(l));
    assert.ok(froms.length >= 2, 'multi-stage');
    // The runtime base is a build argument whose default is a slim Node 20 image.
    const runtimeFrom = /^FROM \$\{(\w+)\}/.exec(froms.at(-1)!)?.[1];
    const runtimeBase = runtimeFrom
      ? new RegExp(`^ARG ${runtimeFrom}=(\\S+)$`, 'm').exec(lines.join('\n'))?.[1]
      : froms.at(-1)!.split(/\s+/)[1];
    assert.match(runtimeBase ?? '', /^node:20[\w.-]*slim$/, `runtime base ${runtimeBase}`);
    const runtime = lines.slice(lines.lastIndexOf(froms.at(-1)!));
    assert.ok(!runtime.some((l) => /npm (ci|install)/.test(l)), 'no npm install in the runtime stage');
    const user = runtime.filter((l) => /^USER /.test(l)).at(-1);
    const uid = Number(/^USER (\d+)/.exec(user ?? '')?.[1]);
    assert.ok(uid > 0, `the runtime runs as a numeric non-root USER, not "${user}"`);
    for (const l of lines.filter((x) => /^COPY (?!--from)/.test(x))) {
      for (const src of l.split(/\s+/).slice(1, -1)) assert.ok(existsSync(packagePath(src)), `COPY ${src}: not in the repository`);
    }
    // The pods run as the image's user.
    const base = render(KUSTOMIZATIONS.base);
    for (const n of ['scoreflow-coordinator', 'scoreflow-worker']) {
      const o = base.find((x) => x.metadata.name === n && podSpec(x))!;
      assert.equal(podSpec(o)!.securityContext.runAsUser, uid, `${n} runAsUser`);
    }
    const ignore = readFileSync(packagePath('deploy', 'docker', 'Dockerfile.dockerignore'), 'utf8');
    assert.match(ignore, /node_modules/);
  });
});
