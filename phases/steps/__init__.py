"""The steps of the cai-stage1 pipeline (data steps here; SFT/eval in train_eval.py)."""
