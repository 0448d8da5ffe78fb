"""Cold start: meta-learned initial UDG embeddings for new users (the UDG paper's Eq. 10–11,
Algorithm 1, after Meta-Embedding, Pan et al., SIGIR 2019) and the Table 5 / Figure 4 study.

    >>> from udg_fast import coldstart, data, models
    >>> gen = coldstart.MetaGenerator.for_model(model)            # f_meta: one-hot profile → ê
    >>> coldstart.train_generator(model, gen, active_split)       # Algorithm 1, model frozen
    >>> model.init_new_users(new_ids, profiles, generator=gen)    # serving: write ê into E^UDG
    >>> coldstart.run_table5("ml-100k", ["pnn", "deepfm"], Path("runs/table5"), seeds=3)

Pieces: `MetaGenerator` (Eq. 11), `user_profiles` (profile ids per user id), `meta_loss` /
`train_generator` / `MetaConfig` (Algorithm 1), `merge_splits` / `split_users` / `phase_split` /
`split_halves` (the study's users, phases and D^A / D^B), `run_table5` (the study), and
`CTRModel.init_new_users` in `udg_fast.models.base`. See docs/coldstart.md.
"""
from udg_fast.coldstart.generator import ColdStartError, MetaGenerator, require_profiles, user_profiles
from udg_fast.coldstart.meta import MetaConfig, PairSampler, meta_loss, train_generator
from udg_fast.coldstart.split import (PhaseSplit, UserSplit, merge_splits, phase_split, resolve_thresholds,
                                      split_halves, split_users)
from udg_fast.coldstart.study import StudyConfig, check_study, prepare_study_data, run_one, run_table5


def init_new_users(model, user_ids, profiles=None, generator=None, **kw):
    """`model.init_new_users(user_ids, profiles, generator, **kw)`: the new users' initial E^UDG
    rows — the generator's output for their profiles, or the table's random initialisation without
    a generator (see `udg_fast.models.base.CTRModel.init_new_users`)."""
    return model.init_new_users(user_ids, profiles, generator, **kw)


__all__ = ["ColdStartError", "MetaConfig", "MetaGenerator", "PairSampler", "PhaseSplit", "StudyConfig", "UserSplit",
           "check_study", "init_new_users", "merge_splits", "meta_loss", "phase_split", "prepare_study_data",
           "require_profiles", "resolve_thresholds", "run_one", "run_table5", "split_halves", "split_users",
           "train_generator", "user_profiles"]
