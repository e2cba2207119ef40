// A kustomize subset, for the tests that render deploy/k8s (test/ops-k8s.test.ts validates the
// result, test/container-cluster.test.ts runs its containers with podman). Debian has no kustomize
// package: this renders the subset the kustomizations use (resources, namespace, labels, images,
// strategic-merge patches of named objects) and refuses anything else.
import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseAllDocuments } from 'yaml';

export type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

export function readDocs(file: string): Obj[] {
  return parseAllDocuments(readFileSync(file, 'utf8'))
    .map((d) => d.toJS() as Obj | null)
    .filter((d): d is Obj => d !== null);
}

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const named = (v: unknown): v is Obj[] => Array.isArray(v) && v.every((x) => isObj(x) && typeof x.name === 'string');

/** Strategic merge as kustomize does it for these kinds: maps merge, lists of named items merge by name, the rest is replaced. */
export function strategicMerge(base: unknown, patch: unknown): unknown {
  if (isObj(base) && isObj(patch)) {
    const out: Obj = { ...base };
    for (const [k, v] of Object.entries(patch)) {
      if (v === null) delete out[k];
      else out[k] = strategicMerge(base[k], v);
    }
    return out;
  }
  if (named(base) && named(patch) && patch.length > 0) {
    const out = [...base];
    for (const p of patch) {
      const i = out.findIndex((b) => b.name === p.name);
      if (i >= 0) out[i] = strategicMerge(out[i], p) as Obj;
      else out.push(p);
    }
    return out;
  }
  return structuredClone(patch);
}

export const CLUSTER_SCOPED = new Set([
  'Namespace',
  'ClusterRole',
  'ClusterRoleBinding',
  'PersistentVolume',
  'StorageClass',
  'CustomResourceDefinition',
]);
export const WORKLOADS = new Set(['Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet', 'Job']);

export function podSpec(o: Obj): Obj | undefined {
  if (o.kind === 'Pod') return o.spec;
  if (WORKLOADS.has(o.kind)) return o.spec?.template?.spec;
  if (o.kind === 'CronJob') return o.spec?.jobTemplate?.spec?.template?.spec;
  return undefined;
}

export function containersOf(o: Obj): Obj[] {
  const spec = podSpec(o);
  return spec ? [...(spec.initContainers ?? []), ...(spec.containers ?? [])] : [];
}

export function splitImage(image: string): { name: string; tag?: string } {
  const at = image.indexOf('@');
  const ref = at >= 0 ? image.slice(0, at) : image;
  const colon = ref.lastIndexOf(':');
  return colon > ref.lastIndexOf('/') ? { name: ref.slice(0, colon), tag: ref.slice(colon + 1) } : { name: ref };
}

const SUPPORTED = new Set(['apiVersion', 'kind', 'resources', 'namespace', 'labels', 'images', 'patches']);

export function render(dir: string): Obj[] {
  const k = readDocs(join(dir, 'kustomization.yaml'))[0];
  for (const key of Object.keys(k)) assert.ok(SUPPORTED.has(key), `${dir}: the test renderer does not support "${key}"`);
  let objs: Obj[] = [];
  for (const r of (k.resources ?? []) as string[]) {
    const path = resolve(dir, r);
    objs.push(...(statSync(path).isDirectory() ? render(path) : readDocs(path)));
  }
  objs = structuredClone(objs);

  for (const p of (k.patches ?? []) as Obj[]) {
    assert.ok(p.path && !p.target && !p.patch, `${dir}: only "patches: - path:" strategic-merge patches are supported`);
    for (const patch of readDocs(join(dir, p.path))) {
      const i = objs.findIndex((o) => o.kind === patch.kind && o.metadata?.name === patch.metadata?.name);
      assert.ok(i >= 0, `${p.path}: no ${patch.kind} ${patch.metadata?.name} to patch`);
      objs[i] = strategicMerge(objs[i], patch) as Obj;
    }
  }
  if (k.namespace) for (const o of objs) if (!CLUSTER_SCOPED.has(o.kind)) o.metadata.namespace = k.namespace;
  for (const l of (k.labels ?? []) as Obj[]) {
    assert.ok(!l.includeSelectors, `${dir}: labels with includeSelectors are not supported`);
    for (const o of objs) {
      o.metadata.labels = { ...o.metadata.labels, ...l.pairs };
      if (!l.includeTemplates) continue;
      const template = o.kind === 'CronJob' ? o.spec?.jobTemplate?.spec?.template : WORKLOADS.has(o.kind) ? o.spec?.template : undefined;
      if (template) template.metadata = { ...template.metadata, labels: { ...template.metadata?.labels, ...l.pairs } };
      for (const vct of o.kind === 'StatefulSet' ? (o.spec.volumeClaimTemplates ?? []) : [])
        vct.metadata.labels = { ...vct.metadata.labels, ...l.pairs };
    }
  }
  for (const img of (k.images ?? []) as Obj[]) {
    for (const c of objs.flatMap(containersOf)) {
      const { name, tag } = splitImage(c.image);
      if (name !== img.name) continue;
      const newTag = img.newTag ?? tag;
      c.image = (img.newName ?? name) + (img.digest ? `@${img.digest}` : newTag ? `:${newTag}` : '');
    }
  }
  return objs;
}
