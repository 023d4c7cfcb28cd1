"""The hook contract (hybrids.hooks.base): the Budget, result keys with gin scopes, and sampler hooks
built from plain score-based samplers."""
from __future__ import annotations

import math

import gin
import pytest
import torch

from hybrids.data import ArrayDataset
from hybrids.hooks.base import Budget, evaluator, hook_keys, sampler, samples_output, score_sampler_hook
from hybrids.models.analytic import GaussianDataModel
from hybrids.sdes import VPSDE

CPU = torch.device("cpu")


@evaluator
def _sizes_eval(model, data, *, device, generator, num_examples=None, num_samples=None, rtol=None, other=3):
    return {"num_examples": num_examples, "num_samples": num_samples, "rtol": rtol, "other": other}


def test_budget_fills_only_unset_budget_named_parameters():
    """Catches: a hook ignoring the budget (preset cannot shrink it) or the budget overriding an
    explicit binding or argument."""
    default = Budget()
    out = _sizes_eval(None, None, device=CPU, generator=None)
    assert out == {"num_examples": default.num_examples, "num_samples": default.num_samples,
                   "rtol": default.rtol, "other": 3}
    gin.parse_config("Budget.num_samples = 3\nBudget.rtol = 0.5")
    assert _sizes_eval(None, None, device=CPU, generator=None)["num_samples"] == 3
    gin.parse_config("_sizes_eval.num_samples = 9")
    out = _sizes_eval(None, None, device=CPU, generator=None)
    assert out["num_samples"] == 9 and out["rtol"] == 0.5  # the hook's own binding wins over the budget
    assert _sizes_eval(None, None, device=CPU, generator=None, num_samples=4)["num_samples"] == 4


def test_hooks_must_take_the_runtime_arguments_as_keywords():
    def no_generator(model, data, *, device):
        return {}

    with pytest.raises(TypeError, match="generator"):
        evaluator(no_generator)

    def no_num_samples(model, data, *, device, generator):
        return {}

    with pytest.raises(TypeError, match="num_samples"):
        sampler(no_num_samples)


@gin.configurable
def _hook_list(hooks=()):
    return hooks


def test_result_keys_carry_gin_scopes_and_number_repeats():
    """Catches: two scoped uses of one hook collapsing into name, name_2 (the scope lost)."""
    gin.parse_config("""
        import hybrids.hooks
        _hook_list.hooks = [@al/sample_fd_eval, @pc/sample_fd_eval, @pi_perturbation_eval,
                                  @pi_perturbation_eval, @a/b/ode_sampler]
    """)
    keys = hook_keys(_hook_list())
    assert keys == ["sample_fd_eval[al]", "sample_fd_eval[pc]", "pi_perturbation_eval",
                    "pi_perturbation_eval_2", "ode_sampler[a/b]"]


def test_samples_output_levels_and_points():
    x = torch.tensor([[-1.5, -1.0, 0.0, 0.999, 2.0]]).reshape(1, 1, 1, 5)
    assert samples_output(x, 4).tolist() == [[[[0, 0, 2, 3, 3]]]]
    pts = torch.randn(3, 2, dtype=torch.float64)
    assert torch.equal(samples_output(pts, None), pts)


def _langevin(score_fn, sde, x_init, *, generator, n_steps=200, step_size=0.01):
    """Overdamped Langevin at t = 1e-3 (a test sampler written against the plain-sampler contract)."""
    x = x_init
    t = torch.full((x.shape[0],), 1e-3, dtype=x.dtype)
    for _ in range(n_steps):
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x + step_size * score_fn(x, t) + math.sqrt(2 * step_size) * z
    return x


langevin_test_sampler = score_sampler_hook(_langevin, name="langevin_test_sampler", init="normal")


def test_score_sampler_hook_samples_the_model_and_exposes_settings_to_gin():
    """Catches: the hook not passing the model's score (a sign flip or the prior's score would
    leave the samples at N(0, 1) instead of N(2, 0.25)) or gin not seeing the sampler's settings."""
    sde = VPSDE()
    model = GaussianDataModel(torch.full((2,), 2.0, dtype=torch.float64), torch.full((2,), 0.25, dtype=torch.float64), sde)
    data = ArrayDataset("moons", torch.zeros(5, 2), None, None)
    gin.parse_config("langevin_test_sampler.n_steps = 400")
    out = langevin_test_sampler(model, data, device=CPU, generator=torch.Generator().manual_seed(0),
                                num_samples=4000)
    x = out["samples"]
    assert x.shape == (4000, 2) and x.dtype == torch.float64
    assert torch.allclose(x.mean(0), torch.full((2,), 2.0, dtype=torch.float64), atol=0.05)
    assert torch.allclose(x.var(0), torch.full((2,), 0.25, dtype=torch.float64), rtol=0.15)
    with pytest.raises(ValueError, match="doesn't have a parameter"):
        gin.parse_config("langevin_test_sampler.bogus = 1")


def test_score_sampler_hook_levels_for_images_and_clear_errors():
    sde = VPSDE()
    model = GaussianDataModel(torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.1), sde)
    data = ArrayDataset("digits", torch.zeros(3, 1, 2, 2, dtype=torch.int64), None, 17)
    out = langevin_test_sampler(model, data, device=CPU, generator=torch.Generator().manual_seed(0),
                                num_samples=3, n_steps=2)
    assert out["samples"].dtype == torch.int64 and out["samples"].shape == (3, 1, 2, 2)

    class NoSDE(torch.nn.Module):
        def score(self, x, t):
            return -x

    with pytest.raises(ValueError, match="langevin_test_sampler.sde"):
        langevin_test_sampler(NoSDE(), data, device=CPU, generator=torch.Generator(), num_samples=1)
    with pytest.raises(ValueError, match="init"):
        score_sampler_hook(_langevin, init="zeros")


def test_shape_sampler_hooks_expose_the_functions_settings_and_no_unused_sde():
    """ancestral_sampler / hybrid_sampler are built from ancestral_sample / hybrid_sample: gin sees
    their settings, only the SDE-driven one takes `sde`, and both need integer images."""
    import inspect

    from hybrids.hooks import ancestral_sampler, hybrid_sampler

    anc = inspect.signature(ancestral_sampler).parameters
    hyb = inspect.signature(hybrid_sampler).parameters
    assert {"method", "t"} <= set(anc) and "sde" not in anc and "dtype" not in anc
    assert {"sde", "t0", "step_size", "corrector", "method"} <= set(hyb) and "num_levels" not in hyb
    gin.parse_config("import hybrids.hooks\nancestral_sampler.method = 'naive'\nhybrid_sampler.t0 = 0.05")
    with pytest.raises(ValueError, match="doesn't have a parameter"):
        gin.parse_config("ancestral_sampler.sde = None")
    toy = ArrayDataset("moons", torch.zeros(3, 2), None, None)
    with pytest.raises(ValueError, match="integer images"):
        ancestral_sampler(torch.nn.Linear(1, 1), toy, device=CPU, generator=torch.Generator(), num_samples=1)


def test_non_finite_samples_are_reported_with_the_hook():
    """Catches: a diverged sampler silently written as a black or white picture."""
    x = torch.zeros(4, 1, 2, 2)
    x[2, 0, 1, 1] = float("nan")
    with pytest.raises(FloatingPointError, match="pc_sampler produced non-finite values in 1 of 4"):
        samples_output(x, 17, "pc_sampler")
