"""hybrids.load_run: a trained run's model back from its workdir, for one row of each kind."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import gin
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `tests._tiny_components` must be importable under one name
    sys.path.insert(0, str(REPO_ROOT))

import hybrids  # noqa: E402
from experiments.runner import experiment, parse_gin, run_experiment  # noqa: E402
from hybrids.models.base import ARConditionalScoreModel  # noqa: E402
from hybrids.runs import Run, checkpoint_steps, load_run  # noqa: E402
from hybrids.sdes import SDE  # noqa: E402
from hybrids.training import Trainer, load_checkpoint, load_ema  # noqa: E402

TINY = str(REPO_ROOT / "tests" / "gin" / "tiny.gin")
PRESETS = ["presets/cpu_small.gin", "presets/smoke.gin"]
# Two checkpoints (steps 2 and 4), and an EMA that differs from the raw weights.
BINDINGS = ["Trainer.checkpoint_every = 2", "Trainer.ema_decay = 0.9"]
# One row of each kind: (row file, model class, objective class, carries an SDE).
ROWS = [
    ("pixelcnnpp_mle.gin", "PixelCNNpp", "MLE", False),
    ("ncml_vp.gin", "NCPN", "NCML", True),
    ("scoreflow_vp_likelihood_is.gin", "ScoreModel", "DSM", True),
    ("arcsm_made_mnist.gin", "MADEConditionalScore", "CSM", False),
    ("made_mle_gaussian_mnist.gin", "MADEDensity", "MLE", False),
    ("walkjump_mnist.gin", "GPSModel", "MultimeasurementDenoising", False),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Each row trained at smoke scale (4 updates on the digits) in its own workdir."""
    root = tmp_path_factory.mktemp("rows")
    workdirs = {}
    for row, *_ in ROWS:
        gin.clear_config()
        workdirs[row] = root / Path(row).stem
        run_experiment([row, *PRESETS], BINDINGS, workdir=workdirs[row], mode="train")
    gin.clear_config()
    return workdirs


def _runner_ema_model(row: str, workdir: Path) -> torch.nn.Module:
    """The model as the runner evaluates it: built from the gin files, EMA weights loaded."""
    gin.clear_config()
    parse_gin([row, *PRESETS], BINDINGS)
    Trainer().seed_everything()
    model = experiment().model
    load_ema(model, workdir)
    gin.clear_config()
    return model.eval()


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    """The model's score at fixed digits-shaped inputs (the univariate scores and their
    derivatives for autoregressive conditional score models, which have no joint score)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    t = torch.full((3,), 0.1)
    if isinstance(model, ARConditionalScoreModel):
        return torch.cat([s.flatten() for s in model.conditional_scores(x, t)])
    return model.score(x, t)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("row, model_cls, objective_cls, has_sde", ROWS, ids=[r[0] for r in ROWS])
def test_load_run_gives_the_runners_ema_model(trained, row, model_cls, objective_cls, has_sde):
    workdir = trained[row]
    run = hybrids.load_run(workdir)
    assert isinstance(run, Run)
    assert type(run.model).__name__ == model_cls and run.objective_name == objective_cls
    assert run.step == 4 and run.dataset_name == "digits" and run.workdir == workdir
    assert not run.model.training and not any(p.requires_grad for p in run.model.parameters())
    assert run.config_text == (workdir / "config.gin").read_text()
    assert isinstance(run.sde, SDE) if has_sde else run.sde is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.step = 0

    reference = _runner_ema_model(row, workdir)
    assert _same_weights(run.model.state_dict(), reference.state_dict())
    torch.testing.assert_close(_outputs(run.model), _outputs(reference), rtol=0, atol=0)

    raw = load_run(workdir, ema=False)
    checkpoint = load_checkpoint(workdir / "checkpoints" / "ckpt_00000004.pt")
    assert _same_weights(raw.model.state_dict(), checkpoint["model"])
    assert not _same_weights(raw.model.state_dict(), run.model.state_dict())

    assert list(checkpoint_steps(workdir)) == [2, 4]
    early = load_run(workdir, step=2)
    assert early.step == 2
    assert _same_weights(early.model.state_dict(),
                         load_checkpoint(workdir / "checkpoints" / "ckpt_00000002.pt")["ema"])


@pytest.fixture
def tiny_run(tmp_path) -> Path:
    workdir = tmp_path / "tiny"
    run_experiment([TINY], workdir=workdir, mode="train")  # checkpoints 15 and 20
    gin.clear_config()
    return workdir


def test_load_run_leaves_gin_and_the_random_stream_as_found(tiny_run):
    parse_gin([TINY], ["Trainer.lr = 0.123"])  # a locked config, as inside a run
    before = gin.config_str()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    run = load_run(tiny_run)
    assert torch.equal(torch.rand(3), expected)
    assert gin.config_str() == before and gin.query_parameter("Trainer.lr") == 0.123
    assert gin.config_is_locked()
    # and on an empty config, it stays empty
    gin.clear_config()
    load_run(tiny_run, step=15)
    assert gin.config_str().strip() == "" and not gin.config_is_locked()
    assert run.model.num_levels == 17 and run.objective_name == "TinyNLL"


def test_load_run_restores_gin_after_an_error(tiny_run):
    parse_gin([TINY], ["Trainer.lr = 0.5"])
    before = gin.config_str()
    config = (tiny_run / "config.gin").read_text()
    (tiny_run / "config.gin").write_text(config + "\nTinyCategorical.shape = (1, 4, 4)\n")
    with pytest.raises(ValueError, match="does not fit the configured model"):
        load_run(tiny_run)
    assert gin.config_str() == before
    (tiny_run / "config.gin").write_text("import tests._tiny_components\nNoSuchThing.x = 1\n")
    with pytest.raises(ValueError, match=r"load_run: gin rejected .*config.gin.*NoSuchThing"):
        load_run(tiny_run)
    assert gin.config_str() == before


def test_load_run_errors_name_the_problem(tmp_path, tiny_run):
    with pytest.raises(FileNotFoundError, match=r"workdir .*nowhere does not exist"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config.gin not found, so .*empty is not the workdir of a run"):
        load_run(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"no checkpoint of step 7 in .*; steps available: 15, 20\."):
        load_run(tiny_run, step=7)
    for path in (tiny_run / "checkpoints").iterdir():
        path.unlink()
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*checkpoints .*train first"):
        load_run(tiny_run)
