"""Pre-training (MLM + NSP): `python -m training.pretrain` runs it (training/trainer.py)."""

from groupbert_tf.models import GroupBertPretrainer
from training.tasks.base import TrainingTask


class PretrainingTask(TrainingTask):
    name = "pretraining"
    finetuning = False

    @classmethod
    def restore_model(cls, config, model_dir):
        del model_dir
        return GroupBertPretrainer(config=config)
