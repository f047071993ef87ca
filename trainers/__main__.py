"""`python -m trainers RUN.yaml` (and `torchrun ... -m trainers RUN.yaml`): the same as `surgery train`."""

from trainers.cli import train

if __name__ == "__main__":
    train(prog_name="python -m trainers")
