"""Pretraining: losses, optimizers (AdamW, Muon with Muon Split), the train step, the loop,
checkpointing. This package imports nothing heavy; import from the submodules.

    python -m glm5_jax.train --config=experiments/tiny.py --workdir=/tmp/glm5_tiny

* ``loop.train(config, workdir)``: the loop (resumes from ``workdir`` when it can).
* ``experiment``: ml_collections config -> ModelConfig / DataConfig, the DSA stage rule.
* ``train_step.make_train_step``: the pure step (losses, gradient accumulation, optimizer,
  non-finite skip, routing-bias rule) that the loop jits with named shardings.
* ``losses`` (cross entropy, MTP, sequence balance), ``indexer_loss`` (DSA KL, recall),
  ``routing_bias`` (aux-loss-free rule), ``optimizer`` + ``muon_split`` + ``schedule``,
  ``train_state``, ``checkpointing``, ``metrics_writer``, ``flops`` (MFU).
"""
