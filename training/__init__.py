"""Training loops: the supervised backbone phase (``train_lm.py``) and the alternation (``train_rl.py``).

Sits above :mod:`ahm.agents` (the supervised phase takes its memory operations from
any controller, the oracle included) and below the two scripts, which only parse a
typed config and call in here.

* :mod:`~ahm.training.config`: ``TrainLMConfig`` (``train_lm.py``'s command line) and ``build_model``;
* :mod:`~ahm.training.data`: text and task batches, the length curriculum;
* :mod:`~ahm.training.window_loss`: the loss of one truncated-backpropagation window;
* :mod:`~ahm.training.supervised`: the supervised loop (``train``; resume, DDP, logging);
* :mod:`~ahm.training.evaluation`: bits per byte and task accuracy (``train_lm.py --eval``);
* :mod:`~ahm.training.checkpoint`: the trainer's resumable checkpoints;
* :mod:`~ahm.training.alternation`: ``TrainRLConfig`` and the rounds of ``train_rl.py``.
"""
