"""Evaluation of generative models.

`metrics`: FID, Inception Score, KID, precision/recall and statistics files. `inception`: FID's
Inception-v3 in Flax with pytorch-fid's weights. `features`: the feature-extractor protocol and the
classifier features for small data. `two_sample`: kernel MMD two-sample tests. The run-level
functions (reference statistics, sample metrics, bits/dim over a dataset) are in
`diffusion_jax.evaluation.evaluate`.
"""
