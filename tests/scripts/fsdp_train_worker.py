"""One process of the FSDP test: ``train_x2ct`` on the config ``argv[1]``, recording how Accelerate wrapped the model.

Launched by ``accelerate launch --use_fsdp ...``; each process writes ``{output_dir}/fsdp_rank{r}.json`` with the
distributed type and the number of FSDP units (the wrap policy's doing) seen when training begins."""

import json
import sys
from pathlib import Path

from torch.distributed.fsdp import FullyShardedDataParallel

from x2ctclip.train.training.config import X2CTTrainConfig
from x2ctclip.train.training.stage import TrainerCallback
from x2ctclip.train.training.x2ct_stage import train_x2ct


class RecordWrapping(TrainerCallback):
    def on_train_begin(self, trainer):
        acc = trainer.accelerator
        model = trainer.model
        units = [type(m.module).__name__ for m in acc._models[0].modules() if isinstance(m, FullyShardedDataParallel)]
        record = {"distributed_type": str(acc.distributed_type), "num_processes": acc.num_processes,
                  "fsdp_units": units, "model": type(model).__name__}
        Path(trainer.output_dir, f"fsdp_rank{acc.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    train_x2ct(X2CTTrainConfig.from_yaml(sys.argv[1]), [RecordWrapping()])
