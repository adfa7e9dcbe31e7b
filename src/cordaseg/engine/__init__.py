"""The training engine around the adaptation step (docs/method.md, "Training step"): the
configuration tree (:mod:`.config`), the loop (:mod:`.trainer`, entry point
:func:`cordaseg.engine.trainer.train`), one iteration of it, shared with
``benchmarks/train_step.py`` (:mod:`.iteration`), the optimiser (:mod:`.optim`), training
checkpoints and exact resume (:mod:`.checkpoint`, :mod:`.run_folder`), synchronised batch norm
(:mod:`.sync_batchnorm`) and run logging (:mod:`.logging`)."""
