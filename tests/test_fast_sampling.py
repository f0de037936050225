"""The fast solvers behind `generate` and `diffusion-jax sample --sampler ... --spacing ...`:
the same samples as calling the solver directly, and one-line errors for combinations that do
not fit."""

import jax
import numpy as np
import pytest

from diffusion_jax import cli, parallel
from diffusion_jax.sampling import generate, karras, runs, samplers, solvers

FAST = (
    "--config.training.batch_size=16", "--config.training.log_every=1",
    "--config.training.checkpoint_every=2", "--config.training.async_checkpoints=False",
)  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("toy2d")
    argv = ["train", "--config", "toy2d", "--workdir", str(workdir), *FAST]
    assert cli.main([*argv, "--config.training.num_steps=2"]) == 0
    return workdir


@pytest.fixture(scope="module")
def run(workdir):
    return runs.load_run(workdir)


def _direct(run, sample_fn, num, **kw):
    """What generate's first chunk should hold: the solver called as generate calls it."""
    mesh = parallel.local_mesh()
    chunk = -(-num // mesh.size) * mesh.size
    d = run.config.diffusion
    denoiser = samplers.Denoiser(d.mean_type, d.var_type, clip_denoised=False)  # 2-D data
    key = jax.random.fold_in(jax.random.PRNGKey(0), 0)
    sched = generate.sampling_schedule(run.config)
    x = sample_fn(
        run.apply_fn, run.params, sched, (chunk, *run.shape), key, denoiser=denoiser, **kw
    )
    return np.asarray(x)[:num]


@pytest.mark.parametrize(
    "sampler, spacing, direct",
    [
        ("dpmpp_2m", "trailing", (solvers.sample_dpmpp, {"order": 2, "spacing": "trailing"})),
        ("unipc_3", "logsnr", (solvers.sample_unipc, {"order": 3, "spacing": "logsnr"})),
        ("heun", "karras", (karras.sample_heun, {"use_karras_sigmas": True})),
    ],
)
def test_generate_draws_what_the_solver_draws(run, sampler, spacing, direct):
    got, _ = generate.generate(
        run, num=4, sampler=sampler, steps=5, spacing=spacing, progress=False
    )
    fn, kw = direct
    np.testing.assert_allclose(got, _direct(run, fn, 4, steps=5, **kw), rtol=1e-5, atol=1e-6)


def test_sample_cli_takes_a_solver_and_refuses_what_does_not_fit(workdir, tmp_path, capsys):
    out = tmp_path / "s.npz"
    base = ["sample", "--workdir", str(workdir), "--num", "4", "--out", str(out)]
    assert cli.main([*base, "--sampler", "dpmpp_2m", "--steps", "5", "--spacing", "trailing"]) == 0
    assert np.load(out)["arr_0"].shape == (4, 2)
    capsys.readouterr()
    for bad, says in [
        (["--sampler", "euler", "--steps", "5", "--spacing", "logsnr"], "takes the spacings"),
        (["--sampler", "dpmpp_3m"], "needs steps >= 1"),
        (["--sampler", "ddim", "--spacing", "karras"], "takes the spacings"),
    ]:
        assert cli.main([*base, "--overwrite", *bad]) == 2, bad
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_command_line_offers_every_sampler():
    parser = cli.flags.Parser()
    cli.flags.add_sampling_flags(parser, num=1)
    (action,) = [a for a in parser._actions if "--sampler" in a.option_strings]
    assert tuple(action.choices) == generate.SAMPLERS
