/**
 * The Fréchet distance between two Gaussians fitted to feature rows (FID's formula):
 *
 *   d² = ||mu1 − mu2||² + tr(S1 + S2 − 2 (S1 S2)^{1/2})
 *
 * S1 S2 is not symmetric, but it is similar to the symmetric positive semi-definite
 * A = S1^{1/2} S2 S1^{1/2} (S1^{1/2} (S1 S2) S1^{−1/2} = A when S1 is invertible, and by
 * continuity otherwise), so tr((S1 S2)^{1/2}) = tr(A^{1/2}) = Σ sqrt(λ_i(A)). Both square roots
 * come from symmetric eigendecompositions (ml-matrix), with the tiny negative eigenvalues that
 * round-off leaves on rank-deficient covariances clamped to zero; no general (Schur-based)
 * matrix square root and no complex parts, unlike scipy's sqrtm route.
 *
 * Statistics are float64 throughout; the covariance is the unbiased one (divisor n − 1), as
 * numpy's np.cov, which FID implementations use.
 */
import { EigenvalueDecomposition, Matrix } from 'ml-matrix';

export interface GaussianStats {
  /** Rows the statistics were computed from. */
  n: number;
  /** Feature dimension. */
  d: number;
  mu: Float64Array;
  /** d x d, row-major. */
  sigma: Float64Array;
}

/** Mean and unbiased covariance of n rows of d features (row-major), in float64, by two passes. */
export function featureStats(rows: ArrayLike<number>, n: number, d: number): GaussianStats {
  if (!Number.isSafeInteger(n) || !Number.isSafeInteger(d) || d < 1) throw new Error(`featureStats: bad dimensions n = ${n}, d = ${d}`);
  if (n < 2) throw new Error(`featureStats: need at least 2 rows for a covariance, got ${n}`);
  if (rows.length !== n * d) throw new Error(`featureStats: ${rows.length} values is not n*d = ${n}*${d}`);
  const mu = new Float64Array(d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) mu[j] += rows[i * d + j];
  for (let j = 0; j < d; j++) mu[j] /= n;
  if (!mu.every(Number.isFinite)) throw new Error('featureStats: features are not all finite');
  const sigma = new Float64Array(d * d);
  const c = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) c[j] = rows[i * d + j] - mu[j];
    // upper triangle only; mirrored below
    for (let j = 0; j < d; j++) {
      const cj = c[j];
      if (cj === 0) continue;
      const row = j * d;
      for (let k = j; k < d; k++) sigma[row + k] += cj * c[k];
    }
  }
  for (let j = 0; j < d; j++) {
    for (let k = j; k < d; k++) {
      const v = sigma[j * d + k] / (n - 1);
      sigma[j * d + k] = v;
      sigma[k * d + j] = v;
    }
  }
  return { n, d, mu, sigma };
}

function toMatrix(a: Float64Array, d: number): Matrix {
  const m = new Matrix(d, d);
  for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) m.set(i, j, a[i * d + j]);
  return m;
}

/** Eigenvalues (clamped at 0) and eigenvectors of a symmetric matrix, symmetrised first against round-off. */
function symmetricEigen(m: Matrix): { values: number[]; vectors: Matrix } {
  const sym = m.add(m.transpose()).div(2);
  const evd = new EigenvalueDecomposition(sym, { assumeSymmetric: true });
  return { values: evd.realEigenvalues.map((v) => Math.max(v, 0)), vectors: evd.eigenvectorMatrix };
}

/** The symmetric square root V diag(sqrt(max(λ, 0))) Vᵀ of a symmetric positive semi-definite matrix. */
export function sqrtPsd(m: Matrix): Matrix {
  const { values, vectors } = symmetricEigen(m);
  const scaled = vectors.clone();
  for (let j = 0; j < values.length; j++) {
    const s = Math.sqrt(values[j]);
    for (let i = 0; i < scaled.rows; i++) scaled.set(i, j, scaled.get(i, j) * s);
  }
  return scaled.mmul(vectors.transpose());
}

/** tr((S1 S2)^{1/2}) for symmetric PSD S1, S2, via the eigenvalues of S1^{1/2} S2 S1^{1/2}. */
export function traceSqrtProduct(s1: Matrix, s2: Matrix): number {
  const r = sqrtPsd(s1);
  const { values } = symmetricEigen(r.mmul(s2).mmul(r));
  return values.reduce((acc, v) => acc + Math.sqrt(v), 0);
}

export interface FrechetParts {
  /** The distance (squared, as FID reports it), clamped at 0 against round-off. */
  fd: number;
  /** ||mu1 − mu2||². */
  meanTerm: number;
  /** tr(S1 + S2 − 2 (S1 S2)^{1/2}). */
  covTerm: number;
}

/** Fréchet distance between the Gaussians N(mu1, S1) and N(mu2, S2), with its two terms. */
export function frechetParts(a: GaussianStats, b: GaussianStats): FrechetParts {
  if (a.d !== b.d) throw new Error(`frechetDistance: feature dimensions differ (${a.d} vs ${b.d})`);
  const d = a.d;
  let meanTerm = 0;
  for (let j = 0; j < d; j++) meanTerm += (a.mu[j] - b.mu[j]) ** 2;
  let trace = 0;
  for (let j = 0; j < d; j++) trace += a.sigma[j * d + j] + b.sigma[j * d + j];
  const covTerm = trace - 2 * traceSqrtProduct(toMatrix(a.sigma, d), toMatrix(b.sigma, d));
  if (!Number.isFinite(meanTerm) || !Number.isFinite(covTerm)) throw new Error('frechetDistance: statistics are not finite');
  return { fd: Math.max(0, meanTerm + covTerm), meanTerm, covTerm };
}

export function frechetDistance(a: GaussianStats, b: GaussianStats): number {
  return frechetParts(a, b).fd;
}
