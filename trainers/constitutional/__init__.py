"""Constitutional AI (Bai et al. 2022, https://arxiv.org/abs/2212.08073): a policy critiques and revises
its own answers to red-team prompts under a written constitution (`sl.py`: SFT data), and a feedback
model labels pairs of its answers under the constitution (`rl.py`: preference data for reward models,
DPO or PPO). `spec.py` the spec, constitution and prompts; `run.py` the command's run and its card;
`constitution.yaml` and `red_team.jsonl` the shipped inputs."""
