"""Quickstart: a private federated run in-process, then one user's scores (about 2 minutes).

    python examples/quickstart.py [OUT_DIR] [USERS] [ROUNDS]

10,000 generated users, epsilon 8 per pair with distributed noise inside secure aggregation:
the private recipe of examples/private.toml, which beats non-private FedBTL at this size
(README "Learning under privacy"). The noise comes from the OS CSPRNG, so runs differ: at
10,000 users the latent formed in 4 of 5 runs with the old KL weight (model.beta 0.05) and in 4
of 4 since the default is 0.01 (20,000 users, as `make demo`, is safer still).
With few users (e.g. 60 users, 3 rounds, as its test runs it) accuracy stays near chance.
"""

import json
import sys
import tempfile
from pathlib import Path

import securefvpa

out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="securefvpa-"))
n_users = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 100
users = securefvpa.generate_users(users=n_users, pairs_per_user=16, types=2, seed=0)
securefvpa.write_records(out / "users.jsonl", users)  # your own data: the same JSONL schema
# The private recipe (examples/private.toml) on your own file, in process, at this size.
recipe = Path(__file__).resolve().with_name("private.toml")
result = securefvpa.run(recipe, out / "run", overrides={
    "run_id": "quickstart",
    "data.source": "jsonl", "data.path": str(out / "users.jsonl"),
    "federation.mode": "inprocess", "federation.rounds": rounds, "federation.eval_every": rounds,
    "federation.users_per_client": max(2, n_users // 50),  # 50 silo-style nodes
})
spent = json.loads(result.report_path.read_text())["summary"]
print(f"epsilon spent: {spent['epsilon_max']:.2f} (delta 1e-05, budget 8), report {result.report_path}")
print("accuracy on held-out pairs (chance 0.50):",
      {k: round(v, 3) for k, v in result.accuracy.items() if v is not None})
# Two users of different types score the same two answers, each from their own pairs (z stays
# on their machine): a detailed answer and a short, cautious one.
prompt = "Human: How should I start running as a complete beginner?"
answers = ["Okay, so here's the deal. Start with short sessions that alternate one minute of "
           "running with two minutes of walking. Also, increase your total distance by no more "
           "than about ten percent each week. Anyway, you got this!",
           "Yeah, totally! Get a pair of comfortable shoes. Stay safe, and stop if anything "
           "feels wrong."]
for user_type in sorted({r.user_type for r in users}):
    uid = next(r.user_id for r in users if r.user_type == user_type)
    scores = securefvpa.score(result.run_dir, [r for r in users if r.user_id == uid],
                              prompt=prompt, responses=answers)
    print(f"{uid}: scores {scores.scores[0]:+.4f} / {scores.scores[1]:+.4f}, "
          f"P(prefers the detailed answer) = {scores.probability(0, 1):.3f}")
