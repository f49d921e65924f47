"""A DPO training job for the SIGKILL test: python tests/crash/dpo_job.py MODEL_DIR SFT_ADAPTER WORK OUT SEED.

Loads the SFT-merged policy, computes and stores the reference log-probs (once: refs.json in
WORK), trains with checkpoints in WORK/trainer (resuming from the newest complete one) and
writes OUT/adapter. Slowed per optimizer step by CAI_SFT_STEP_DELAY_S (phases/sft.py's knob).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from dpo_fixtures import PAIRS, PARAMS  # noqa: E402

from phases.dpo import build_pair_examples, load_policy, sequence_logps, train_dpo  # noqa: E402
from state.files import atomic_write_json  # noqa: E402

model_dir, sft, work, out, seed = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
loaded, model, dev, q, gc = load_policy(model_dir, sft, PARAMS, seed)
ex, _ = build_pair_examples(loaded, PAIRS, PARAMS["max_seq_len"])
refs_path = work / "refs.json"
if refs_path.is_file():
    refs = json.loads(refs_path.read_text())
else:
    refs = sequence_logps(model, ex, loaded.eos_token_id, PARAMS["ref_batch_size"])
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(refs_path, refs)
ex = [{**e, **r} for e, r in zip(ex, refs)]
res = train_dpo(loaded, model, ex, PAIRS, PARAMS, work, out, seed, dev, q, gc, sft,
                lambda msg, **k: print(json.dumps({"msg": msg, **k}), flush=True))
print(json.dumps({"result": {"resumed_from": res["resumed_from"], "global_step": res["metrics"]["global_step"]}}), flush=True)
