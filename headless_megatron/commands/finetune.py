"""``headless-megatron finetune --config configs/gpt_headless_ft.yaml --pretrained DIR``: the
pretraining loop started from another run's weights (see :mod:`headless_megatron.commands.pretrain`)."""

from functools import partial

from headless_megatron.commands import pretrain

add_arguments = pretrain.add_arguments
reject_unknown_arguments = partial(pretrain.reject_unknown_arguments, command="finetune")
run = partial(pretrain.run, command="finetune")
