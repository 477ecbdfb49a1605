"""The One-Cycle schedule: two linear phases, peak at the end of the peak epoch, beta1 cycling."""

import pytest
import torch

from resnet_ocp.config import Config
from resnet_ocp.schedule import MicroBatches, samples_after, schedule_trace, steps_per_epoch


def test_steps_and_samples_follow_the_global_batch():
    """98 steps of batch 512 cover CIFAR-10's 50,000 images (last batch 336 kept)."""
    assert steps_per_epoch(50_000, 512) == 98
    assert samples_after(97, 1, 50_000, 512) == 97 * 512
    assert samples_after(98, 1, 50_000, 512) == 50_000
    assert samples_after(1, 2, 50_000, 512) == 50_512


def test_reference_schedule_shape():
    """24 epochs x 98 steps: start max/100, peak max at the last step of epoch 5, end
    max/1e4, linear in between, beta1 0.95 -> 0.85 -> 0.95 against the LR."""
    cfg = Config()
    trace = schedule_trace(cfg, max_lr=0.01, n_train=50_000)
    lrs = torch.tensor([t[0] for t in trace], dtype=torch.float64)
    betas = torch.tensor([t[1] for t in trace], dtype=torch.float64)
    assert len(trace) == 24 * 98
    peak = int(lrs.argmax())
    assert peak == 5 * 98 - 1
    assert lrs[0].item() == pytest.approx(1e-4)
    assert lrs[peak].item() == pytest.approx(0.01)
    assert lrs[-1].item() == pytest.approx(1e-6)
    assert betas[0].item() == pytest.approx(0.95) and betas[peak].item() == pytest.approx(0.85)
    assert betas[-1].item() == pytest.approx(0.95)
    # Linear phases: constant increments up to the peak, then constant decrements.
    up, down = lrs[: peak + 1].diff(), lrs[peak:].diff()
    assert torch.allclose(up, up[0].expand_as(up)) and (up > 0).all()
    assert torch.allclose(down, down[0].expand_as(down)) and (down < 0).all()


def test_schedule_never_raises_at_its_end():
    """A run steps the scheduler after each of its total_steps optimizer steps: the last of
    those steps does not raise and leaves the final LR (max / div / final_div) applied, while
    one step more would (OneCycleLR refuses to run past total_steps): the trace that the
    recorded steps.csv is compared with covers exactly the run."""
    from resnet_ocp.schedule import build_one_cycle, build_optimizer

    cfg = Config(epochs=3, peak_epoch=1)
    trace = schedule_trace(cfg, max_lr=0.1, n_train=1000)
    assert len(trace) == 3 * 2
    assert trace[-1][0] == pytest.approx(0.1 / cfg.div_factor / cfg.final_div_factor)
    opt = build_optimizer(torch.nn.Linear(1, 1), cfg)
    sched = build_one_cycle(opt, cfg, 0.1, 1000)
    for _ in range(len(trace)):
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="Tried to step"):
        sched.step()


def test_momentum_cycling_can_be_turned_off():
    """--no-cycle-momentum keeps the momentum at --momentum-max throughout."""
    trace = schedule_trace(Config(epochs=2, peak_epoch=1, cycle_momentum=False), max_lr=0.1, n_train=2048)
    assert {t[1] for t in trace} == {0.95}


@pytest.mark.parametrize("name, kind", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_each_optimizer_cycles_its_momentum(name, kind):
    """Adam, AdamW and Nesterov SGD all get the One-Cycle LR and momentum (beta1 or momentum)."""
    from resnet_ocp.schedule import build_optimizer

    cfg = Config(epochs=2, peak_epoch=1, optimizer=name, weight_decay=5e-4)
    assert type(build_optimizer(torch.nn.Linear(2, 2), cfg)) is kind
    trace = schedule_trace(cfg, max_lr=0.1, n_train=1024)
    assert trace[0][1] == pytest.approx(0.95) and min(t[1] for t in trace) == pytest.approx(0.85)
    assert max(t[0] for t in trace) == pytest.approx(0.1)


@pytest.mark.parametrize("n, processes, per_process, grad_accum",
                         [(50000, 2, 256, 1), (50000, 1, 128, 4), (190, 2, 10, 1), (190, 3, 10, 2), (200, 2, 10, 1), (1000, 4, 32, 3)])
def test_micro_batches_train_every_sample_once_and_weigh_each_step_as_one_batch(n, processes, per_process, grad_accum):
    """Over Accelerate's own sharding (BatchSamplerShard, even_batches), the first ``real`` indices
    of every process's micro-batches are the epoch's samples, each exactly once; and within every
    optimizer step each of those samples weighs 1 / (samples in the step) after Accelerate's
    division by grad_accum and DDP's mean over processes, so a factor is exactly 1.0 wherever
    all batches of the step are full."""
    from accelerate.data_loader import BatchSamplerShard

    inner = torch.utils.data.BatchSampler(range(n), per_process, drop_last=False)
    shards = [list(BatchSamplerShard(inner, processes, p, split_batches=False, even_batches=True)) for p in range(processes)]
    plan = MicroBatches(n, processes, per_process, grad_accum)
    trained = [i for p, batches in enumerate(shards) for k, batch in enumerate(batches) for i in batch[:plan.real(k, p)]]
    assert sorted(trained) == list(range(n))
    rounds = len(shards[0])
    assert all(len(batches) == rounds for batches in shards)
    for first in range(0, rounds, grad_accum):
        micro = [(k, p) for k in range(first, min(first + grad_accum, rounds)) for p in range(processes)]
        weights = [plan.factor(k, p) / plan.real(k, p) / grad_accum / processes for k, p in micro if plan.real(k, p)]
        assert weights == pytest.approx([1 / plan.step_samples(first)] * len(weights))
        assert sum(plan.real(k, p) for k, p in micro) == plan.step_samples(first)
        if all(plan.real(k, p) == per_process for k, p in micro) and len(micro) == grad_accum * processes:
            assert {plan.factor(k, p) for k, p in micro} == {1.0}
