"""Checks of the reference itself: closed forms where they exist, the committed PyTorch fixture
otherwise. Run: cd reference && /usr/bin/python3 -m unittest -v test_reference
(test/reference.test.ts runs it under npm test).
"""
import gzip
import json
import math
import os
import struct
import tempfile
import unittest

import numpy as np
import torch

from checkpoint import load_model
from idx import read_idx_images
from likelihood import ode_bpd, prior_logp
from losses import dsm_loss
from safetensors_io import encode_safetensors, load_safetensors, save_safetensors
from samplers import em_sampler, ode_sampler
from scorenet import ScoreNet, num_trainable
from sde import VESDE

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "test", "fixtures", "scorenet_parity.safetensors")


class GaussianScore(torch.nn.Module):
    """The exact score of data ~ N(0, s0^2 I) perturbed by the VE SDE: p_t = N(0, v(t) I) with
    v(t) = s0^2 + std(t)^2, so s(x, t) = -x / v(t). (s0 = 0: data at the single point 0.)"""

    def __init__(self, s0, sde):
        super().__init__()
        self.s0, self.sde = s0, sde

    def v(self, t):
        return self.s0 ** 2 + self.sde.marginal_std(t) ** 2

    def forward(self, x, t):
        return -x / self.v(t)[:, None, None, None]


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


class ZeroScore(torch.nn.Module):
    sde = VESDE()

    def forward(self, x, t):
        return torch.zeros_like(x)


class SafetensorsTest(unittest.TestCase):
    def test_round_trip_of_every_dtype_scalar_and_empty_shapes(self):
        tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "d": np.array([math.pi, -1e300]),
                   "i": np.array([-(2 ** 62), 7], dtype=np.int64), "j": np.array([-5, 2 ** 31 - 1], dtype=np.int32),
                   "u": np.array([0, 128, 255], dtype=np.uint8), "s": np.array(2.5, dtype=np.float32),
                   "e": np.zeros((0, 4), dtype=np.float32), "big": np.array([1.5, -2], dtype=">f4")}
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "t.safetensors")
            save_safetensors(p, tensors, {"seed": 5, "note": "σ ✓"})
            back, meta = load_safetensors(p)
            raw = read(p)
        self.assertEqual(meta, {"seed": "5", "note": "σ ✓"})
        self.assertEqual(sorted(back), sorted(tensors))
        for k, v in tensors.items():
            self.assertEqual(back[k].shape, v.shape, k)
            np.testing.assert_array_equal(back[k], v, k)
        self.assertEqual(back["s"].shape, ())
        self.assertEqual(back["big"].dtype, np.dtype("float32"))  # written little-endian, read native
        n = struct.unpack("<Q", raw[:8])[0]
        self.assertEqual(n % 8, 0)
        self.assertTrue(raw[8:8 + n].isascii())  # non-ASCII metadata is escaped, as json.dumps does
        self.assertEqual(list(json.loads(raw[8:8 + n]))[-1], "__metadata__")  # metadata last

    def test_bad_input_is_one_line(self):
        with self.assertRaisesRegex(ValueError, r"^tensor 'c': dtype complex64"):
            encode_safetensors({"c": np.zeros(2, dtype=np.complex64)})
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "bad.safetensors")
            good = encode_safetensors({"a": np.ones(4, dtype=np.float32)})
            for data, msg in [(good[:4], "too short"), (good[:-1], "do not fit"), (struct.pack("<Q", 99) + b"{}", "runs past")]:
                write(p, data)
                with self.assertRaises(ValueError) as e:
                    load_safetensors(p)
                self.assertIn(msg, str(e.exception))
                self.assertNotIn("\n", str(e.exception))


class IdxTest(unittest.TestCase):
    def test_raw_and_gzipped_and_bad_magic(self):
        imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 1, 3, 4)
        body = struct.pack(">IIII", 2051, 2, 3, 4) + imgs.tobytes()
        with tempfile.TemporaryDirectory() as d:
            for name, data in [("raw", body), ("gz", gzip.compress(body))]:
                p = os.path.join(d, name)
                write(p, data)
                np.testing.assert_array_equal(read_idx_images(p), imgs)
            p = os.path.join(d, "labels")
            write(p, struct.pack(">IIII", 2049, 2, 3, 4) + imgs.tobytes())
            with self.assertRaisesRegex(ValueError, "not an IDX image file"):
                read_idx_images(p)


class SdeTest(unittest.TestCase):
    def test_closed_forms(self):
        sde = VESDE()
        t = torch.tensor([0.0, 0.3, 1.0])
        np.testing.assert_allclose(sde.sigma(t).numpy(), 0.01 * (2200.0 ** t.numpy()), rtol=1e-6)
        self.assertEqual(float(sde.marginal_std(0.0)), 0.0)
        self.assertAlmostEqual(sde.prior_std(), math.sqrt(22.0 ** 2 - 0.01 ** 2), places=4)

    def test_diffusion_is_the_derivative_of_sigma_squared(self):
        sde = VESDE()
        h = 1e-4
        for t in [0.05, 0.5, 0.95]:
            sig2 = lambda s: (0.01 * 2200.0 ** s) ** 2  # noqa: E731 (float64)
            fd = (sig2(t + h) - sig2(t - h)) / (2 * h)
            self.assertAlmostEqual(float(sde.diffusion_sq(t)) / fd, 1.0, places=5)


class LossTest(unittest.TestCase):
    def test_dsm_loss_vanishes_at_the_exact_score_of_a_point_mass(self):
        # data at 0: x(t) = std z, score -x/std^2, so std * s + z = 0 for every t and z
        model = GaussianScore(0.0, VESDE())
        g = torch.Generator().manual_seed(0)
        x = torch.zeros(4, 1, 5, 5)
        t = torch.rand(4, generator=g) * 0.99 + 0.01
        z = torch.randn(x.shape, generator=g)
        self.assertLess(float(dsm_loss(model, x, t, z)), 1e-9)
        # and with a zero score the loss is ||z||^2 exactly: the mean over the batch of sum z^2
        zero = ZeroScore()
        self.assertAlmostEqual(float(dsm_loss(zero, x, t, z)), float((z ** 2).sum() / 4), places=3)


class LikelihoodAndOdeTest(unittest.TestCase):
    """For N(0, s0^2 I) data the probability flow is linear: x(t) = x(eps) sqrt(v(t) / v(eps)), and
    with a fixed probe e the Hutchinson integral is exactly 1/2 ln(v(1)/v(eps)) ||e||^2."""

    s0 = 0.5
    shape = (3, 1, 4, 4)

    def test_bits_per_dim_matches_the_closed_form(self):
        sde = VESDE()
        model = GaussianScore(self.s0, sde)
        x = torch.rand(self.shape, generator=torch.Generator().manual_seed(1))
        bpd, nfe = ode_bpd(model, x, rtol=1e-6, atol=1e-6, generator=torch.Generator().manual_seed(2))
        probe = torch.randn(self.shape, generator=torch.Generator().manual_seed(2))  # ode_bpd's first draw
        v_eps, v_1 = float(model.v(torch.tensor([1e-3]))), float(model.v(torch.tensor([1.0])))
        z = x.double() * math.sqrt(v_1 / v_eps)
        delta = 0.5 * math.log(v_1 / v_eps) * (probe.double() ** 2).sum(dim=(1, 2, 3))
        d = 16
        want = -(prior_logp(z, sde.prior_std()) + delta) / math.log(2) / d + 8
        np.testing.assert_allclose(bpd.double().numpy(), want.numpy(), rtol=2e-5)
        self.assertGreater(nfe, 10)

    def test_ode_sampler_follows_the_linear_flow(self):
        sde = VESDE()
        model = GaussianScore(self.s0, sde)
        out, _ = ode_sampler(model, 3, rtol=1e-6, atol=1e-6, shape=self.shape[1:], generator=torch.Generator().manual_seed(3))
        x1 = torch.randn(self.shape, generator=torch.Generator().manual_seed(3)) * sde.prior_std()
        want = x1 * math.sqrt(float(model.v(torch.tensor([1e-3]))) / float(model.v(torch.tensor([1.0]))))
        np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)

    def test_em_sampler_lands_near_the_data_variance(self):
        # statistical and discretised (500 steps): the sample std of 4000 values within 10% of s0
        model = GaussianScore(self.s0, VESDE())
        out = em_sampler(model, 250, num_steps=500, shape=(1, 4, 4), generator=torch.Generator().manual_seed(4))
        self.assertAlmostEqual(float(out.std()) / self.s0, 1.0, delta=0.1)


class FixtureTest(unittest.TestCase):
    """The committed fixture was made by PyTorch with this architecture: the reference reproduces it."""

    def test_score_loss_and_gradients_of_the_fixture(self):
        tensors, _ = load_safetensors(FIXTURE)
        model = load_model(FIXTURE)
        self.assertEqual(num_trainable(model), 1_049_505)
        self.assertEqual(sum(p.numel() for p in model.parameters()), 1_049_633)
        x, t, z = (torch.from_numpy(tensors[k]) for k in ("input.x", "input.t", "input.z"))
        with torch.no_grad():
            score = model(x, t).numpy()
        ref = tensors["output.score"]
        self.assertLess(np.abs(score - ref).max() / np.abs(ref).max(), 1e-5)
        model.train()
        loss = dsm_loss(model, x, t, z)
        loss.backward()
        self.assertAlmostEqual(loss.item() / float(tensors["output.loss"][0]), 1.0, places=5)
        scale = max(np.abs(v).max() for k, v in tensors.items() if k.startswith("grad."))
        for name, p in model.named_parameters():
            if p.requires_grad:
                self.assertLess(np.abs(p.grad.numpy() - tensors["grad." + name]).max() / scale, 1e-5, name)

    def test_same_seed_same_weights(self):
        torch.manual_seed(0)
        fresh = ScoreNet().state_dict()
        tensors, _ = load_safetensors(FIXTURE)
        for k, v in fresh.items():
            np.testing.assert_array_equal(v.numpy(), tensors[k], k)


if __name__ == "__main__":
    unittest.main()
