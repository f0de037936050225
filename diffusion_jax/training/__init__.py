"""Training: the state, the pure steps, and the one host loop that drives them.

    from diffusion_jax.training import train
    state = train.train(config, "runs/digits")      # resumes from runs/digits/checkpoints

`state` (the TrainState pytree, its sharded initialisation from `setup.Parts`, the guarded
optimizer/EMA update), `step` (the diffusion and classifier train steps, compilation over the
mesh), `loop` (`fit`: resume, step, log, checkpoint, for both models), `hooks` (sample grids and
evaluations during training), `preemption` (SIGTERM -> checkpoint and stop), `train` and
`classifier` (the two drivers). Training sits above sampling and evaluation, which its hooks
call: it may import core, configs, models, data, parallel, perf, checkpoint, setup, sampling and
evaluation; only pretrained and cli are above it.
"""
