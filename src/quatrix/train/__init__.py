"""Training stages, one module each (pretrain, sft, grpo, world), on one Trainer
(trainer.py) with typed options (options.py); the pieces they share live once: processes and
threads (distributed.py), optimizers and schedule (optim.py), metrics and plots
(metrics.py), crash-safe checkpoints and exact resume (resume.py), progress lines
(progress.py). Stages never import each other (an import-linter contract)."""
