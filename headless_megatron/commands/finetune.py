"""``headless-megatron finetune --config configs/gpt_headless_ft.yaml --pretrained DIR``: the
pretraining loop started from another run's weights (see :mod:`headless_megatron.commands.pretrain`)."""

from functools import partial

from headless_megatron.commands import pretrain

add_arguments = pretrain.add_arguments
reject_unknown_arguments = pretrain.reject_unknown_arguments
validate_for_launch = partial(pretrain.validate_for_launch, command="finetune")
run = partial(pretrain.run, command="finetune")
dry_run = partial(pretrain.dry_run, command="finetune")
