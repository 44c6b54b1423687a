"""Training loops: the supervised backbone phase (``train_lm.py``) and the alternation (``train_rl.py``).

Sits above :mod:`ahm.agents` (the supervised phase takes its memory operations from
any controller, the oracle included) and below the two scripts, which only parse a
typed config and call in here.
"""
