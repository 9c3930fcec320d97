"""Training: one loop file per method, and the shared engine they are built from.

    sft.py  reward.py  preference.py (DPO family)  kto.py          offline loops on the engine's `fit`
    ppo.py  group.py (RLOO, GRPO, REINFORCE++)  online_dpo.py  rs.py (rejection sampling)
                                                                    online loops on online.py's frame
    engine.py (device, precision, optimizer, schedule, `fit`)  online.py  rl.py (reward sources, KL controller)
    data.py (where a run's records come from)  reference.py (cached reference log-probs)
    rundir.py  checkpoint.py  guard.py  parallel.py                 run directories that survive kill -9
    policy_eval.py                                                  in-loop evaluation (gold, KL to a reference)

May import: config, data, tasks, models/loading, the shared machinery (rollout, logprobs, sampling, dist),
losses, errors. Never eval/, serve/, feedback/, study/ or cli (tests/test_layout.py checks it).
"""
