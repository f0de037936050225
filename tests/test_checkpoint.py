"""Tests of diffusion_jax.checkpoint: exact round trips, retention, refusals and clear errors."""

import json
import os
import signal

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from diffusion_jax.checkpoint import Checkpointer, CheckpointError
from diffusion_jax.configs import base_config
from diffusion_jax.training.preemption import PreemptionGuard
from diffusion_jax.training.resume import ResumeRules, config_changes, model_changes
from diffusion_jax.training.state import create_train_state


def make_state(rows=8, extra=False, seed=0):
    """A TrainState after one Adam step, so that every leaf holds distinct, non-trivial values."""
    rng = np.random.default_rng(seed)
    params = {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(rows, 3)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
        },
        "scale": jnp.float32(0.5),
    }
    if extra:
        params["extra"] = jnp.ones((2,), jnp.float32)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    state = create_train_state(params, tx, jnp.array([7, 11], jnp.uint32))
    grads = jax.tree.map(lambda p: 0.1 * p + 0.3, params)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    return state.replace(
        step=jnp.int32(5),
        params=optax.apply_updates(params, updates),
        opt_state=opt_state,
        skipped=jnp.int32(1),
    )


def abstract(state, sharding=None):
    shapes = jax.eval_shape(lambda: state)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def data_iter():
    return iter(grain.MapDataset.range(100).shuffle(seed=0).batch(4).to_iter_dataset())


def test_round_trip_state_config_and_data(tmp_path):
    state, config = make_state(), base_config()
    it = data_iter()
    for _ in range(3):
        next(it)
    with Checkpointer(tmp_path, save_every=1, keep=2) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(5, state, config, it)
        expected_batches = [next(it), next(it)]  # advancing after save must not change the save
        ckpt.wait()
        assert ckpt.latest_step() == 5
        assert (tmp_path / "checkpoints" / "5" / "state").is_dir()

        fresh = data_iter()
        restored, saved_config = ckpt.restore(abstract(state), fresh)
    assert_same(restored, state)
    assert saved_config == json.loads(json.dumps(config.to_dict()))
    assert saved_config["model"]["ch_mult"] == list(config.model.ch_mult)
    assert model_changes(config_changes(saved_config, config), ResumeRules()) == []
    for batch in expected_batches:
        np.testing.assert_array_equal(next(fresh), batch)


def test_save_interval_force_and_no_double_save(tmp_path):
    state, config = make_state(), base_config()
    with Checkpointer(tmp_path, save_every=3, keep=None, async_save=False) as ckpt:
        assert [ckpt.save(s, state, config) for s in range(1, 7)] == [False] * 2 + [True] + [
            False
        ] * 2 + [True]
        assert ckpt.save(7, state, config, force=True)
        assert not ckpt.save(6, state, config, force=True)  # already there: not an error
        assert ckpt.all_steps() == [3, 6, 7]


def test_retention_keeps_last_and_every_kth(tmp_path):
    state, config = make_state(), base_config()
    with Checkpointer(tmp_path, save_every=1, keep=2, keep_every=4) as ckpt:
        for step in range(1, 10):
            assert ckpt.save(step, state, config)
        ckpt.wait()
        # The last two (8, 9) plus the multiples of 4 (4, 8).
        assert ckpt.all_steps() == [4, 8, 9]
    on_disk = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert on_disk == [4, 8, 9]


def test_nonfinite_state_is_refused(tmp_path):
    good, config = make_state(), base_config()
    bad = good.replace(
        params={
            **good.params,
            "dense": {**good.params["dense"], "bias": jnp.array([0, jnp.nan, 1.0])},
        }
    )
    with Checkpointer(tmp_path, save_every=1, keep=3) as ckpt:
        assert ckpt.save(1, good, config)
        with pytest.raises(CheckpointError, match=r"step 2.*params/dense/bias.*latest: 1"):
            ckpt.save(2, bad, config, force=True)
        ckpt.wait()
        assert ckpt.all_steps() == [1]
        assert not (tmp_path / "checkpoints" / "2").exists()
        restored, _ = ckpt.restore(abstract(good))
    assert_same(restored, good)


def test_different_model_names_the_leaf(tmp_path):
    config = base_config()
    with Checkpointer(tmp_path, save_every=1, keep=1) as ckpt:
        ckpt.save(1, make_state(rows=8), config)
        with pytest.raises(CheckpointError) as err:
            ckpt.restore(abstract(make_state(rows=4)))
        msg = str(err.value)
        assert "params/dense/kernel: saved shape (8, 3), expected (4, 3)" in msg
        assert "opt_state/1/0/mu/dense/kernel" in msg
        assert "--workdir" in msg and str(tmp_path / "checkpoints" / "1") in msg
        with pytest.raises(CheckpointError, match=r"params/extra: not in the checkpoint"):
            ckpt.restore(abstract(make_state(extra=True)))


def test_model_changes_list_model_and_diffusion_keys():
    saved = json.loads(json.dumps(base_config().to_dict()))
    config = base_config()
    config.model.ch = 64
    config.diffusion.num_timesteps = 500
    config.model.dropout = 0.3  # may change on resumption
    config.optim.learning_rate = 1.0  # not a model key
    assert model_changes(config_changes(saved, config), ResumeRules()) == [
        "model.ch: checkpoint 128, config 64",
        "diffusion.num_timesteps: checkpoint 1000, config 500",
    ]


def test_incomplete_checkpoints_are_skipped(tmp_path):
    state, config = make_state(), base_config()
    with Checkpointer(tmp_path, save_every=1, keep=5) as ckpt:
        ckpt.save(1, make_state(seed=1), config)
        ckpt.save(2, state, config)
    root = tmp_path / "checkpoints"
    # A save killed midway (orbax writes into <step>.orbax-checkpoint-tmp, then renames) ...
    (root / "3.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
    (root / "3.orbax-checkpoint-tmp" / "state" / "_METADATA").write_text("{")
    # ... and a step directory that no completed save wrote (e.g. an interrupted copy).
    (root / "4" / "state").mkdir(parents=True)
    (root / "4" / "state" / "_METADATA").write_text("{")
    with Checkpointer(tmp_path, save_every=1, keep=5) as ckpt:
        assert ckpt.latest_step() == 2
        restored, _ = ckpt.restore(abstract(state))
        assert_same(restored, state)
        assert (root / "4.incomplete").is_dir()
        assert not (root / "3.orbax-checkpoint-tmp").exists()  # cleaned up on opening
        assert ckpt.save(3, state, config) and ckpt.save(4, state, config)  # not blocked
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2, 3, 4]
    # A reader (e.g. sampling while the run trains) leaves a save in progress alone.
    (root / "5.orbax-checkpoint-tmp").mkdir()
    with Checkpointer(tmp_path, read_only=True) as reader:
        assert reader.latest_step() == 4
        with pytest.raises(CheckpointError, match="read-only"):
            reader.save(6, state, config, force=True)
    assert (root / "5.orbax-checkpoint-tmp").is_dir()


# orbax's event loop may report a late callback of the failed read after it closed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_checkpoint_gives_clear_error(tmp_path):
    state, config = make_state(), base_config()
    with Checkpointer(tmp_path, save_every=1, keep=5) as ckpt:
        ckpt.save(1, state, config)
        ckpt.save(2, state, config)
    step_dir = tmp_path / "checkpoints" / "2"
    data_files = [
        p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"
    ]
    assert data_files
    for path in data_files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with Checkpointer(tmp_path, save_every=1, keep=5) as ckpt:
        with pytest.raises(CheckpointError) as err:
            ckpt.restore(abstract(state))
        msg = str(err.value)
        assert str(step_dir) in msg and "saved: [1]" in msg and len(msg) < 1000
        restored, _ = ckpt.restore(abstract(state), step=1)
    assert_same(restored, state)


def test_missing_checkpoint_or_data_item(tmp_path):
    state, config = make_state(), base_config()
    with Checkpointer(tmp_path, save_every=1, keep=5) as ckpt:
        with pytest.raises(CheckpointError, match="No checkpoint in"):
            ckpt.restore(abstract(state))
        ckpt.save(1, state, config)  # without a data iterator
        with pytest.raises(CheckpointError, match="data_iterator=None"):
            ckpt.restore(abstract(state), data_iter())
        with pytest.raises(CheckpointError, match=r"saved steps: \[1\]"):
            ckpt.restore(abstract(state), step=7)


def _place(state, mesh):
    """Arrays whose first axis divides the mesh are sharded along it; the rest are replicated."""

    def spec(x):
        if x.ndim and x.shape[0] % mesh.size == 0:
            return NamedSharding(mesh, PartitionSpec("data"))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(spec, state)


def test_restore_onto_other_device_counts(tmp_path):
    assert jax.device_count() == 8
    state, config = make_state(rows=8), base_config()
    mesh8 = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(state, _place(state, mesh8))
    assert len(sharded.params["dense"]["kernel"].sharding.device_set) == 8
    with Checkpointer(tmp_path, save_every=1, keep=1) as ckpt:
        ckpt.save(1, sharded, config)
        ckpt.wait()

        one = SingleDeviceSharding(jax.devices()[0])
        restored, _ = ckpt.restore(abstract(state, one))
        assert_same(restored, state)
        assert all(x.sharding == one for x in jax.tree.leaves(restored))

        mesh4 = Mesh(np.array(jax.devices()[:4]), ("data",))
        target = _place(state, mesh4)
        shapes = jax.eval_shape(lambda: state)
        target_abstract = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, target
        )
        restored, _ = ckpt.restore(target_abstract)
        assert_same(restored, state)
        kernel = restored.params["dense"]["kernel"]
        assert kernel.sharding == target.params["dense"]["kernel"]
        assert {s.data.shape for s in kernel.addressable_shards} == {(2, 3)}

        restored, _ = ckpt.restore(jax.eval_shape(lambda: state))  # no sharding: replicated
        assert_same(restored, state)


def test_preemption_guard_sets_flag_and_restores_handler():
    def previous(signum, frame):
        raise AssertionError("the guard's handler should have been called instead")

    original = signal.signal(signal.SIGTERM, previous)
    try:
        with PreemptionGuard() as guard:
            assert not guard.requested and not guard.should_stop(0)
            os.kill(os.getpid(), signal.SIGTERM)
            # Python runs the handler between bytecodes of the main thread, i.e. by now.
            assert guard.requested and guard.should_stop(1)
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, original)


def test_a_run_of_another_process_count_is_told_why_the_data_position_does_not_restore(tmp_path):
    state, config = make_state(), base_config()
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        ckpt.save(5, state, config, data_iter())
    data_dir = tmp_path / "checkpoints" / "5" / "data"
    assert [p.name for p in data_dir.iterdir() if p.name.startswith("process")] == [
        "process_0-of-1.json"
    ]
    # As a 2-process run would have left it: one position per process.
    text = (data_dir / "process_0-of-1.json").read_text()
    (data_dir / "process_0-of-1.json").unlink()
    for i in (0, 1):
        (data_dir / f"process_{i}-of-2.json").write_text(text)
    with Checkpointer(tmp_path, read_only=True) as ckpt:
        with pytest.raises(CheckpointError, match=r"written by 2 process\(es\) and this run has 1"):
            ckpt.restore(abstract(state), data_iter())
        restored, _ = ckpt.restore(abstract(state))  # the state alone restores
    assert_same(restored, state)
