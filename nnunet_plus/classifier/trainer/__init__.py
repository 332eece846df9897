"""Training one fold of the PLUS classifier on the candidate bank (PLUS §2.2, Impl. Details).

Recipe (paper defaults, all in :class:`~nnunet_plus.classifier.trainer.settings.TrainerSettings`): AdamW, learning
rate 1e-4, weight decay 0.05, cosine annealing over the epochs (stepped once per epoch, from 1e-4 towards 0), 100
epochs, batches of 2 patients (with all their candidates), loss ``0.5 L_L + 0.3 L_P + 0.2 L_S`` with focal gamma 2
and class weights ``z_c`` = inverse frequency of the training candidates' targets. Mixed precision (float16
autocast + GradScaler) on CUDA only; CPU and MPS train in float32.

One epoch = every training patient once, in an order drawn from ``(seed, epoch)``; crop augmentation draws
depend on ``(seed, epoch, patient)`` (:mod:`nnunet_plus.classifier.data`), so resuming from
``checkpoint_latest.pth`` (which also holds the optimizer, scheduler, scaler and RNG states) continues exactly
as the uninterrupted run would (bitwise on CPU).

After each epoch the validation patients are scored (loss, and on the bank arrays: lesion F1 and patient
malignant / benign F1 of the refinement rule, :mod:`nnunet_plus.classifier.rule_scores`).
``checkpoint_best.pth`` keeps the epoch with the best validation **lesion F1** (``best_metric``; ties keep the
earlier epoch): lesion F1 is the headline PLUS is meant to raise, and it moves with every candidate decision,
whereas patient F1 on a few dozen validation patients changes in steps of one patient. ``patient_f1`` can be
chosen instead. At the end ``checkpoint_final.pth`` is written (what inference uses by default, like nnU-Net;
a new training always replaces it), the decision rule is fitted on the validation cases
(:mod:`nnunet_plus.classifier.operating_point`: ``fold_k/operating_point.json`` for this fold and
``operating_point.json`` beside the folds, pooled over every finished fold's validation cases) and the final
model is evaluated end to end with the fold's rule (:mod:`nnunet_plus.classifier.fold_validation`):
``validation/summary.json`` compares nnU-Net alone with nnU-Net + PLUS on the validation cases. The rule was
chosen on these same cases, so that comparison is in-sample for the rule's three thresholds (out-of-sample for
the network); held-out figures come from ``nnunet_plus_evaluate`` on test cases (benchmarks/bench_efficacy.py).

Output folder (``fold_k``): ``training_log_<time>.txt``, ``progress.png``, ``checkpoint_{latest,best,final}.pth``
(:mod:`nnunet_plus.classifier.checkpoint`), ``history.json`` (per-epoch records; ``"done": true`` is the fold's
last write), ``operating_point.json``, ``validation/`` (with ``candidate_probabilities.npz``), and
``skipped.json`` when the training cases held no candidate (:mod:`~nnunet_plus.classifier.trainer.fold_files`).

Modules (import from them; this package re-exports nothing):

=================  ==========================================================================================
``train_fold``     :func:`train_classifier_fold`: bank build, split check and training of one fold (the CLI's job)
``fold_trainer``   :class:`PLUSClassifierTrainer`: set-up, the epoch loop, the run of one fold
``settings``       :class:`TrainerSettings`: the training options stored in every checkpoint
``scoring``        scoring the validation cases: per epoch, the operating points, the final end-to-end summary
``training_state`` what a training checkpoint holds beyond the weights (RNG states) and resuming from one
``fold_files``     the fold folder's JSON records (``history.json``, ``skipped.json``), :class:`NoCandidateError`
=================  ==========================================================================================
"""
