"""The training engine around the adaptation step (spec section 3; issue 4): the configuration
tree (:mod:`.config`), the loop (:mod:`.trainer`, entry point :func:`cordaseg.engine.trainer.train`),
one iteration of it, shared with ``benchmarks/train_step.py`` (:mod:`.iteration`),
training checkpoints and exact resume (:mod:`.checkpoint`), torchrun / DDP (:mod:`.distributed`),
run logging (:mod:`.logging`) and the ``cordaseg train`` command (:mod:`.cli`)."""
