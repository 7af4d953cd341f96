"""Quickstart: a private (DP-SGD) federated run in-process, then one user's scores (~20 s).

    python examples/quickstart.py [OUT_DIR]

At this toy size (40 users, 5 rounds) the DP noise dominates and accuracy stays near chance;
examples/federated.toml and README "Benchmarks" show the scale at which the latent is learned.
"""

import json
import sys
import tempfile
from pathlib import Path

import securefvpa

out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="securefvpa-"))
users = securefvpa.generate_users(users=40, pairs_per_user=12, types=2, seed=0)
securefvpa.write_records(out / "users.jsonl", users)  # your own data: the same JSONL schema
result = securefvpa.run({
    "data": {"source": "jsonl", "path": str(out / "users.jsonl"), "heldout_pairs": 4},
    "federation": {"mode": "inprocess", "rounds": 5, "local_steps": 2, "users_per_client": 2},
    "privacy": {"enabled": True, "target_epsilon": 8.0, "budget_epsilon": 8.0, "delta": 1e-5},
}, out / "run")
spent = json.loads(result.report_path.read_text())["summary"]
print(f"epsilon spent: {spent['epsilon_max']:.2f} (delta 1e-05, budget 8), report {result.report_path}")
print("accuracy on held-out pairs (chance 0.50):",
      {k: round(v, 3) for k, v in result.accuracy.items() if v is not None})
me = [r for r in users if r.user_id == users[0].user_id]  # one user's own pairs; z stays local
scores = securefvpa.score(result.run_dir, me, prompt="Human: How can I save money on groceries?",
                          responses=["Cook larger batches and freeze portions for later.",
                                     "Just take what you need when nobody is looking."])
for text, s in zip(scores.responses, scores.scores):
    print(f"score {s:+.4f}  {text}")
print(f"P(user prefers the first) = {scores.probability(0, 1):.3f}")
