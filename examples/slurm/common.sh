# shellcheck shell=bash
# Shared body of the sbatch scripts in this directory; they set their settings, then source this
# file and call `train_and_requeue <headless-megatron subcommand> <flags...>`. Not a job by itself.
#
# What a job does, start to end:
#   1. checks the flags, the config and the data for the job's ranks on the first node, as
#      `--nproc-per-node` does before it starts ranks (a wrong flag or key, a missing dataset, a
#      layout that does not divide the ranks: one line, exit 2, in seconds, before any rank or GPU
#      starts), then reads train_iters from the same flags;
#   2. starts the training step with `srun`, in the background, so that this shell can react to
#      signals while it runs (bash runs a trap only after the foreground command returns);
#   3. on SIGUSR1/SIGTERM to this shell (`--signal=B:USR1@120`, `scancel --batch`; `scancel`, the
#      time limit, preemption and a node failure send SIGTERM to every process of the job) passes the signal on to
#      the training step; the trainer finishes its iteration, saves a checkpoint and exits;
#   4. after the step: done if the latest checkpoint is at train_iters; not requeued if this shell
#      got SIGTERM (SLURM is ending the job: `scancel` must stay final, and SLURM requeues
#      preempted jobs itself where it is set up to); requeued (`scontrol requeue`) if this attempt
#      advanced the checkpoint but did not finish (stopped by SIGUSR1, by exit_duration_in_mins or
#      exit_interval, or a crash after a save); failed otherwise. The requeued job runs this script
#      again and the trainer resumes from the checkpoint, because `save` and `load` are the same
#      directory. Requeueing only after progress means a run that fails before its first new
#      checkpoint cannot requeue itself forever.

# The Python environment (inside the container when one is used) that has headless_megatron.
PYTHON=${PYTHON:-python3}
# Optional pyxis/enroot container: the image, and the host paths it needs (the checkout, data and
# SAVE_DIR), as `host:container[,host:container...]`. The checkout is mounted at the same path.
CONTAINER_IMAGE=${CONTAINER_IMAGE:-}
CONTAINER_MOUNTS=${CONTAINER_MOUNTS:-$PROJECT_DIR:$PROJECT_DIR}
# Seconds torchrun waits for its ranks to save and exit after a stop signal before it kills them
# (LAUNCHER=torchrun only). Make it longer than one iteration plus one checkpoint save.
SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT:-600}

# ---- Environment of the ranks ----
# Print log lines as they happen, not when a buffer fills.
export PYTHONUNBUFFERED=1
# One intra-op thread per CPU the task was given: more threads than cores slows every rank down.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
# NCCL and Transformer Engine (no effect on CPU-only nodes):
# - One hardware queue per GPU, so that kernels run in the order they were issued: Megatron-Core and
#   Transformer Engine overlap tensor/sequence-parallel communication with compute relying on it.
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
# - A failed or hung collective raises on every rank instead of blocking the job until its time
#   limit (torch's default in recent releases; set for older ones).
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
# - NCCL prints problems only; NCCL_DEBUG=INFO shows the transports (NVLink, InfiniBand) it chose,
#   the first thing to look at when multi-node bandwidth is low.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# - Site network settings come from your cluster's documentation and are left to the environment:
#   NCCL_SOCKET_IFNAME (interface for NCCL's bootstrap, e.g. ib0 or the management network),
#   NCCL_IB_HCA (which InfiniBand adapters), NCCL_IB_TIMEOUT (raise it on large or busy fabrics).
# - Transformer Engine chooses its attention kernel itself; NVTE_FLASH_ATTN=0 or NVTE_FUSED_ATTN=0
#   rules one out, NVTE_ALLOW_NONDETERMINISTIC_ALGO=0 makes the backward pass reproducible (slower),
#   NVTE_FWD_LAYERNORM_SM_MARGIN / NVTE_BWD_LAYERNORM_SM_MARGIN keep SMs free for overlapped
#   communication kernels.

# The first node hosts the rendezvous (srun: torch's TCP store of rank 0; torchrun: the c10d
# store). Set here rather than by each rank, because a container may not have `scontrol`.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# A port derived from the job id, so that two jobs sharing a node do not collide.
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export MASTER_ADDR MASTER_PORT

CONTAINER_ARGS=()
if [[ -n $CONTAINER_IMAGE ]]; then
    CONTAINER_ARGS=(--container-image="$CONTAINER_IMAGE" --container-mounts="$CONTAINER_MOUNTS"
                    --container-workdir="$PROJECT_DIR")
fi

# Run a short command on the first node, inside the container when one is used.
on_first_node() {
    if [[ -n $CONTAINER_IMAGE ]]; then
        srun --nodes=1 --ntasks=1 "${CONTAINER_ARGS[@]}" "$@"
    else
        "$@"
    fi
}

# The iteration of the latest published checkpoint in SAVE_DIR (0: none yet). The trainer writes
# the tracker only after every rank finished writing, so a half-written checkpoint never counts.
checkpoint_iteration() {
    local tracker=$SAVE_DIR/latest_checkpointed_iteration.txt
    if [[ -f $tracker ]]; then cat "$tracker"; else echo 0; fi
}

# Start the training step in the background: `headless-megatron "$@"` on every rank.
start_training_step() {
    case $LAUNCHER in
    srun)
        # One task per GPU; each rank takes RANK/WORLD_SIZE/LOCAL_RANK from SLURM_PROCID/
        # SLURM_NTASKS/SLURM_LOCALID. Every task sees all GPUs of its node and uses cuda:LOCAL_RANK,
        # so do not bind GPUs per task (--gpus-per-task, --gpu-bind=single).
        # --cpus-per-task is repeated because some SLURM releases (22.05 among them) do not pass
        # the job's value on to srun. --kill-on-bad-exit: one crashed rank ends the step instead of
        # leaving the others blocked in a collective until the NCCL timeout.
        srun --nodes="$SLURM_NNODES" --ntasks=$((SLURM_NNODES * GPUS_PER_NODE)) \
            --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
            --kill-on-bad-exit=1 "${CONTAINER_ARGS[@]}" \
            "$PYTHON" -m headless_megatron "$@" &
        ;;
    torchrun)
        # One torchrun per node with all of the node's CPUs; it starts GPUS_PER_NODE ranks and
        # meets the other nodes' torchruns at the first node. torchrun handles SIGUSR1 only when
        # told to (--signals-to-handle, in recent PyTorch releases): it then passes the signal to
        # its ranks and waits SHUTDOWN_TIMEOUT seconds for them to save and exit. It reports that
        # shutdown as a failure; the requeue decision below looks at the checkpoint, not at exit
        # codes.
        srun --nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1 \
            --cpus-per-task="$SLURM_CPUS_ON_NODE" --kill-on-bad-exit=1 "${CONTAINER_ARGS[@]}" \
            "$PYTHON" -m torch.distributed.run --nnodes="$SLURM_NNODES" --nproc-per-node="$GPUS_PER_NODE" \
            --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" \
            --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout="$SHUTDOWN_TIMEOUT" \
            -m headless_megatron "$@" &
        ;;
    *)
        echo "LAUNCHER must be srun or torchrun, not '$LAUNCHER'" >&2
        exit 2
        ;;
    esac
    STEP_PID=$!
}

# A stop signal reached this shell: pass it to every process of the training step (a signal sent
# to `srun` itself is not forwarded reliably: srun ends the step on SIGTERM).
forward_to_step() {
    echo "$(date '+%F %T') batch shell got SIG$1: passing it to the training step"
    scancel --signal="$1" "$SLURM_JOB_ID" || true
}

# train_and_requeue SUBCOMMAND FLAGS...: run `headless-megatron SUBCOMMAND FLAGS...` on every rank
# of the allocation, then finish, requeue or fail the job (see the top of this file).
train_and_requeue() {
    local subcommand=$1
    shift
    local train_iters started_at latest step_rc=0
    cd "$PROJECT_DIR" || exit
    if ! on_first_node "$PYTHON" -c \
        'import sys; from headless_megatron.cli import validate_launch; sys.exit(validate_launch(sys.argv[2:], int(sys.argv[1])))' \
        "$((SLURM_NNODES * GPUS_PER_NODE))" "$subcommand" "$@"; then
        echo "$(date '+%F %T') job $SLURM_JOB_ID: not starting the training step; fix the error above and submit again" >&2
        exit 2
    fi
    train_iters=$(on_first_node "$PYTHON" -c \
        'import sys; from headless_megatron.config import parse_config; print(parse_config(sys.argv[1:]).train_iters)' \
        "$@" | tail -n 1)
    started_at=$(checkpoint_iteration)
    echo "$(date '+%F %T') job $SLURM_JOB_ID attempt $((${SLURM_RESTART_COUNT:-0} + 1)) on $SLURM_NNODES node(s)" \
        "x $GPUS_PER_NODE rank(s), launcher $LAUNCHER${CONTAINER_IMAGE:+, container $CONTAINER_IMAGE}:" \
        "iteration $started_at of $train_iters"
    echo "headless-megatron $subcommand $*"

    local ended_by_slurm=""
    trap 'forward_to_step USR1' USR1
    trap 'ended_by_slurm=1; forward_to_step TERM' TERM
    start_training_step "$subcommand" "$@"
    # `wait` also returns when a trap ran; wait again until the step itself has ended.
    while :; do
        wait "$STEP_PID" && step_rc=0 || step_rc=$?
        kill -0 "$STEP_PID" 2>/dev/null || break
    done
    trap - USR1 TERM

    latest=$(checkpoint_iteration)
    if ((latest >= train_iters)); then
        echo "$(date '+%F %T') training finished: checkpoint at iteration $latest in $SAVE_DIR"
        exit 0
    fi
    if [[ -n $ended_by_slurm ]]; then
        echo "$(date '+%F %T') SLURM is ending the job (SIGTERM: scancel, time limit, preemption or a failed" \
            "node): latest checkpoint at iteration $latest; not requeueing from here (SLURM itself requeues" \
            "a preempted job, or one whose node failed, when it may: --requeue)"
        exit "$step_rc"
    fi
    if ((latest > started_at)); then
        echo "$(date '+%F %T') stopped at iteration $latest of $train_iters (step exit code $step_rc):" \
            "requeueing job $SLURM_JOB_ID to resume from $SAVE_DIR"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
    echo "$(date '+%F %T') the training step failed (exit code $step_rc) without saving a new checkpoint" \
        "(latest: iteration $latest); not requeueing" >&2
    exit $((step_rc ? step_rc : 1))
}
