"""Run ``x2ctclip train x2ct`` with the config in argv[1] and SIGKILL this process right after optimiser step argv[2]
(before any checkpoint of that step is written), to test that ``--resume latest`` continues exactly."""

import os
import signal
import sys

from x2ctclip.train.training.config import X2CTTrainConfig
from x2ctclip.train.training.stage import TrainerCallback
from x2ctclip.train.training.x2ct_stage import train_x2ct


class KillAfterStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, step, logs):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    config = X2CTTrainConfig.from_yaml(sys.argv[1])
    train_x2ct(config, [KillAfterStep(int(sys.argv[2]))])
    sys.exit(3)  # not reached: the callback kills the process
