"""Evaluation of generative models, as the papers do it: sample quality and likelihood.

    extractor = features.get_extractor("inception")
    scores = evaluate.sample_metrics(samples_uint8, extractor, reference)   # fid, is, kid, ...
    bpd.dataset_bpd(run, split="test")                                      # the NLL bound

`evaluate` (reference statistics, sample metrics), `bpd` (bits/dim), `metrics` (FID, IS, KID,
statistics files), `precision_recall`, `two_sample` (kernel MMD tests), `extractor` (protocol,
batching), `features` (extractors, dataset images), `inception` (FID's Inception-v3 in Flax),
`inception_weights` (pytorch-fid's weights). Evaluation may import core, configs, models, data,
parallel, checkpoint, setup and sampling; never training (whose hooks call it), pretrained or the
command line.
"""
