"""The training loop, top to bottom: one epoch, validation, checkpoint, resume, early stopping.

Images come from the preprocessed uint8 cache (decoded and CLAHE'd once), are augmented as a
batch on the training device, and go through the model; nothing per-image happens in Python
while training, which is what keeps a 2-core CPU busy with the model and not the data path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cxr import distributed
from cxr.augment import augment_batch, mix_batch
from cxr.averaging import WeightAverages
from cxr.checkpoint import (
    CHECKPOINTS,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_weights,
    write_json,
)
from cxr.config import RunConfig, load_config, save_config
from cxr.data.cache import CachedImages
from cxr.data.leakage import HASH_FILE
from cxr.data.prepare import PreparedData, prepare_data
from cxr.errors import CxrError
from cxr.losses import build_loss
from cxr.metrics import choose_thresholds, compute_metrics, metric_intervals
from cxr.models import build_model, check_arch, check_pretrained, probabilities_numpy
from cxr.optim import Schedule, build_optimizer
from cxr.preprocess import normalize
from cxr.progressive import epoch_image_size, resize_batch
from cxr.run import RunDir, load_run
from cxr.runtime import Runtime, autocast, batches, forward, select_runtime, to_device, to_model
from cxr.tracking import open_tracker


def train_one_epoch(
    model: nn.Module,
    images: CachedImages,
    loss_fn,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    cfg: RunConfig,
    generator: torch.Generator,
    rt: Runtime,
    desc: str = "train",
    progress: bool = True,
    world: distributed.World = distributed.SINGLE,
    after_step: Callable[[], None] | None = None,
    image_size: int | None = None,
) -> dict:
    """One pass over the training images; returns mean loss and measured images/s.

    image_size: train at this side (progressive resizing); the cache's size when None.

    One loop for one process and for W (torchrun): every rank draws the same global batches and
    augmentations, and trains on its own rows of each (`distributed.sharded_batches`); one
    process is world size 1, whose rows are the whole batch.
    """
    model.train()
    # The loss is summed on the device and read once at the end (and every 20 steps for the
    # progress bar): reading it each step would make the CPU wait for the GPU every step.
    total_loss = torch.zeros((), dtype=torch.float64, device=rt.device)
    seen, start = 0, time.perf_counter()
    show = progress and world.is_main
    bar = tqdm(total=len(images.table), desc=desc, unit="img", disable=not show, leave=False)
    batches = distributed.sharded_batches(images, cfg.train.batch_size, generator, world)
    for step, (x, y, rows) in enumerate(batches):
        n_batch = len(x)
        x = to_model(x, rt)
        if image_size is not None:
            x = resize_batch(x, image_size)
        x = augment_batch(x, cfg.augment, generator)[rows]
        x, y = mix_batch(x, to_device(y, rt), cfg.augment, generator)
        x = normalize(x, cfg.preprocess.mean, cfg.preprocess.std)
        with autocast(rt):
            logits = model(x)
        # A last batch smaller than W leaves a rank without images: its loss is a zero that
        # still takes part in DDP's gradient all-reduce.
        loss = loss_fn(logits.float(), y) if len(y) else logits.float().sum()
        optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over the W ranks; weighing each rank's mean loss by its share
        # of the batch makes that average the gradient of the mean over the whole batch (a
        # factor of exactly 1 for one process).
        (loss * (len(y) * world.size / n_batch)).backward()
        optimizer.step()
        schedule.after_step()
        if after_step is not None:
            after_step()
        total_loss += loss.detach() * len(y)
        seen += len(y)
        bar.update(n_batch)
        if show and seen and step % 20 == 0:
            bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}")
    bar.close()
    total_loss, seen = distributed.all_reduce_sum(world, [total_loss.item(), float(seen)])
    elapsed = time.perf_counter() - start
    return {"train_loss": total_loss / max(seen, 1), "images_per_s": seen / max(elapsed, 1e-9)}


def predict_cached(model: nn.Module, images: CachedImages, task: str, rt: Runtime) -> np.ndarray:
    """Probabilities (N, K) for every cached image, in table order (float32, no autocast)."""
    logits, _ = forward(model, images.pixels, rt)
    return probabilities_numpy(logits, task)


def validation_metrics(
    model: nn.Module,
    images: CachedImages,
    task: str,
    rt: Runtime,
    world: distributed.World = distributed.SINGLE,
) -> tuple[dict, np.ndarray]:
    """Metrics on validation at thresholds chosen on the same validation scores.

    Under torchrun each process predicts its share of the images and all gather every score.
    """
    if world.distributed:
        scores = _predict_sharded(model, images, task, rt, world)
    else:
        scores = predict_cached(model, images, task, rt)
    y = images.table.labels
    thresholds = choose_thresholds(y, scores, task, findings=images.table.findings)
    return compute_metrics(y, scores, images.table.findings, task, thresholds), scores


def _predict_sharded(model, images: CachedImages, task: str, rt: Runtime, world) -> np.ndarray:
    rows = distributed.share(len(images.table), world)
    index = np.arange(rows.start, rows.stop)
    if len(index):
        part = CachedImages(images.pixels[rows], images.table.subset(index), [], images.path)
        scores = predict_cached(model, part, task, rt)
    else:
        scores = np.zeros((0, len(images.table.findings)))
    return distributed.gather_rows(world, scores)


def _seed_everything(cfg: RunConfig) -> None:
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:  # batches keep one shape: cuDNN times its algorithms once per shape, then reuses them
        torch.backends.cudnn.benchmark = True


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val_auroc: float | None
    history: list[dict]
    val_metrics: dict
    rank: int = 0  # under torchrun: only rank 0 wrote the run folder and holds final metrics


def train(
    cfg: RunConfig,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train per cfg into cfg.out_dir; with resume, continue the run found there exactly.

    on_epoch(epoch, row) is called after each epoch's checkpoint with that epoch's history row
    (val_mean_auroc among it); tuning uses it to report to Optuna and to prune by raising.
    """
    run_dir = Path(cfg.out_dir)
    files = RunDir(run_dir)
    if resume:
        saved = files.config
        if not saved.is_file():
            raise CxrError(f"--resume: no run to resume in {run_dir} (config.json missing)")
        cfg = load_config(saved)
    elif files.config.exists():
        raise CxrError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    # What can fail without reading any data fails first, before the run folder is made.
    if is_run_folder(cfg.model.pretrained):
        cfg = config_for_seed_run(cfg)
    else:
        check_pretrained(cfg.model)
    existed = run_dir.exists()
    try:
        return _train(cfg, run_dir, resume, progress, on_epoch)
    except BaseException:
        if not resume:
            _discard_unfinished_run(run_dir, existed)
        raise


def is_run_folder(pretrained: str) -> bool:
    """`model.pretrained` names a finished run folder (fine-tune it) rather than a weights file."""
    return pretrained not in ("none", "imagenet") and RunDir(pretrained).is_finished()


def config_for_seed_run(cfg: RunConfig) -> RunConfig:
    """`--pretrained RUN`: the architecture and the preprocessing (input contract: size, crop,
    CLAHE, mean / std) are the seed run's, since its weights mean nothing under others."""
    seed = load_config(RunDir(cfg.model.pretrained).config)
    if seed.model.arch in ("ensemble",):
        raise CxrError(f"--pretrained {cfg.model.pretrained}: an ensemble cannot be fine-tuned")
    if (seed.model.arch, seed.preprocess) != (cfg.model.arch, cfg.preprocess):
        print(
            f"pretrained run {cfg.model.pretrained}: using its architecture "
            f"({seed.model.arch}) and preprocessing (image size {seed.preprocess.image_size}, "
            f"{seed.preprocess.resize}, clahe {seed.preprocess.clahe}, mean "
            f"{seed.preprocess.mean:g}, std {seed.preprocess.std:g})"
        )
    model = cfg.model.model_copy(update={"arch": seed.model.arch})
    return cfg.model_copy(update={"model": model, "preprocess": seed.preprocess})


def seed_pretraining(cfg: RunConfig) -> dict | None:
    """What a fine-tuned run's weights saw before: the seed run's "pretrained_on" (data sets of
    an imported model), so `evaluate` and `report` can warn about overlap; None otherwise."""
    if not is_run_folder(cfg.model.pretrained):
        return None
    info = json.loads(RunDir(cfg.model.pretrained).model_json.read_text())
    return info.get("pretrained_on")


def _no_seed(model_cfg):
    if is_run_folder(model_cfg.pretrained):
        return model_cfg.model_copy(update={"pretrained": "none"})
    return model_cfg


def starting_model(cfg: RunConfig, findings: list[str]) -> nn.Module:
    """The model training starts from: built per cfg.model, or a run's weights with a new head
    whose rows for the findings the run also predicts (same canonical name) are the run's."""
    model = build_model(_no_seed(cfg.model), len(findings), cfg.preprocess)
    if is_run_folder(cfg.model.pretrained):
        seed_from_run(model, cfg.model.pretrained, findings)
    return model


@torch.no_grad()
def seed_from_run(model: nn.Module, run_dir: str, findings: list[str]) -> list[str]:
    """Copy a finished run's backbone into `model`, and its head rows for the shared findings;
    returns the findings that kept their row."""
    from cxr.labelmap import canonical

    seed = load_run(run_dir, "cpu")
    own = model.state_dict()
    head = {f"{model.head_name}.weight", f"{model.head_name}.bias"}
    backbone = {
        k: v
        for k, v in seed.model.state_dict().items()
        if k not in head and k in own and own[k].shape == v.shape
    }
    model.load_state_dict(backbone, strict=False)
    index = {canonical(f): i for i, f in enumerate(seed.findings)}
    kept = []
    for j, name in enumerate(findings):
        i = index.get(canonical(name))
        if i is not None:
            model.head.weight[j] = seed.model.head.weight[i]
            model.head.bias[j] = seed.model.head.bias[i]
            kept.append(name)
    print(
        f"pretrained run {run_dir}: backbone loaded; head rows kept for "
        f"{', '.join(kept) if kept else 'no finding (none shared)'}, new for the rest"
    )
    return kept


def _train(cfg: RunConfig, run_dir: Path, resume: bool, progress: bool, on_epoch) -> TrainResult:
    files = RunDir(run_dir)
    # Under torchrun: refuse a bad launch before any work, meet the other processes, check
    # that all run the same config; rank 0 alone writes the run folder (cxr.distributed).
    check_arch(cfg.model.arch)  # before any work: a typo must not cost a cache build
    world = distributed.world_from_env()
    distributed.check_launch(world, cfg.train.batch_size, cfg.train.device)
    device = distributed.device_for(world, cfg.train.device)
    created = distributed.setup(
        world, device, {"config": cfg.model_dump_json(), "torch": torch.__version__}
    )
    # Opened first: a missing tensorboard/mlflow package fails before any work is done.
    tracker = open_tracker(cfg.train.log, run_dir, cfg.model_dump()) if world.is_main else None
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, files.config)
    _seed_everything(cfg)
    rt = select_runtime(device, cfg.train.amp, cfg.train.channels_last)

    data = distributed.prepare_in_turn(
        world,
        run_dir,
        lambda folder: prepare_data(
            cfg.data,
            cfg.preprocess,
            cfg.train.cache_dir,
            RunDir(folder).split,
            progress and world.is_main,
        ),
    )
    distributed.agree(world, _data_identity(data), "data")
    if cfg.data.val_source == "auto" and data.val_source in ("official", "fraction"):
        # config.json says which validation split "auto" chose, so a resume or a re-run agrees.
        chosen = cfg.data.model_copy(update={"val_source": data.val_source})
        cfg = cfg.model_copy(update={"data": chosen})
        if world.is_main:
            save_config(cfg, files.config)
    model = starting_model(cfg, data.findings).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.train, data.task, data.train.table.labels)
    optimizer = build_optimizer(model, cfg.train)
    steps = len(distributed.training_batches(len(data.train.table), cfg.train.batch_size))
    schedule = Schedule(optimizer, cfg.train, steps)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    state = {"epoch": 0, "history": [], "best": None, "best_epoch": 0, "stale": 0}
    averages = WeightAverages(model, cfg.train)

    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        saved_state = load_checkpoint(checkpoint, model)
        optimizer.load_state_dict(saved_state["optimizer"])
        schedule.load_state_dict(saved_state["scheduler"])
        generator.set_state(saved_state["generator"])
        averages.load_state_dict(saved_state.get("averages", {}))
        state = json.loads(saved_state["loop"])
        if world.is_main:
            print(f"resuming {run_dir} after epoch {state['epoch']}")

    net = distributed.wrap_model(model, world, rt.device)  # `model` itself for one process
    if cfg.train.compile == "on":
        # After the DDP wrap (PyTorch's advice: DDP then splits the graph at its buckets).
        # Validation stays eager: it runs once an epoch and would compile a second graph.
        net = torch.compile(net)
    best_metrics: dict = {}
    if world.is_main:
        _print_data_summary(data)
    for epoch in range(state["epoch"] + 1, cfg.train.epochs + 1):
        size = epoch_image_size(
            epoch,
            cfg.train.epochs,
            cfg.preprocess.image_size,
            cfg.train.progressive_start_size,
            cfg.train.progressive_fraction,
        )
        row = {"epoch": epoch, "image_size": size}
        row |= train_one_epoch(
            net,
            data.train,
            loss_fn,
            optimizer,
            schedule,
            cfg,
            generator,
            rt,
            desc=f"epoch {epoch}/{cfg.train.epochs}",
            progress=progress,
            world=world,
            after_step=lambda: averages.after_step(model, optimizer, epoch),  # noqa: B023
            image_size=size,
        )
        distributed.sync_buffers(model, world)
        averages.after_epoch(model, epoch)
        scored = averages.evaluated(model)  # the EMA when on: what is validated is what is saved
        metrics, _ = validation_metrics(scored, data.val, data.task, rt, world)
        row |= {"val_mean_auroc": metrics["mean_auroc"], "val_accuracy": metrics["accuracy"]}
        row["lr"] = optimizer.param_groups[0]["lr"]
        schedule.after_epoch(metrics["mean_auroc"] or 0.0)
        improved = state["best"] is None or (metrics["mean_auroc"] or 0.0) > state["best"]
        if improved:
            state |= {"best": metrics["mean_auroc"] or 0.0, "best_epoch": epoch, "stale": 0}
            best_metrics = metrics
            if world.is_main:
                save_weights(scored, files.weights)
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        state["history"].append(row)
        if world.is_main:
            save_checkpoint(
                run_dir,
                epoch,
                model,
                {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": schedule.state_dict(),
                    "generator": generator.get_state(),
                    "loop": json.dumps(state),
                    "averages": averages.state_dict(),
                },
            )
            _log_epoch(run_dir, state["history"])
        if tracker is not None:
            tracker.log_epoch(epoch, row, metrics, augmented_samples(data.train, cfg, rt, epoch))
        if on_epoch is not None:
            on_epoch(epoch, row)
        patience = cfg.train.early_stopping_patience
        if patience and state["stale"] >= patience:
            if world.is_main:
                print(f"early stopping: validation AUROC has not improved for {patience} epochs")
            break

    if tracker is not None:
        tracker.close()
    result = None
    if world.is_main:
        swa = averages.swa_model(data.train, rt, cfg.train.batch_size)
        if swa is not None:  # the SWA average is the run's model, whatever the best epoch was
            save_weights(swa, files.weights)
            state["best_epoch"] = state["epoch"]
        result = finish_run(run_dir, cfg, data, state, rt, averages.describe())
    distributed.barrier(world)  # every rank returns once the run folder is complete
    distributed.teardown(created)
    if result is None:
        result = TrainResult(
            run_dir, state["best_epoch"], state["best"], state["history"], best_metrics, world.rank
        )
    return result


def augmented_samples(
    images: CachedImages, cfg: RunConfig, rt: Runtime, epoch: int, n: int = 4
) -> np.ndarray:
    """The first n training images as augmentation shows them this epoch, float (n, 1, S, S) in
    [0, 1], for the training log; their own generator, so training's is untouched."""
    generator = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
    x, _ = next(batches(images, n, None))
    with torch.no_grad():
        x = augment_batch(to_model(x, rt), cfg.augment, generator)
    return x.float().clamp(0, 1).cpu().numpy()


def _discard_unfinished_run(run_dir: Path, existed: bool) -> None:
    """After a failure before any weights were saved, remove what this run wrote (config.json,
    split.csv, ...), and its folder if it made it and it is now empty, so that the same --out
    can be used again. A run with a checkpoint is kept for --resume."""
    if distributed.world_from_env().rank != 0:
        return  # rank 0 alone writes the run folder
    files = RunDir(run_dir)
    if files.weights.exists() or (run_dir / CHECKPOINTS).exists():
        return
    for path in (files.config, files.split, files.history, run_dir / HASH_FILE):
        path.unlink(missing_ok=True)
    if not existed and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def _data_identity(data: PreparedData) -> dict[str, str]:
    """What every rank must have read identically: the caches' keys (hashes of the files and
    the preprocessing) and the labels."""
    return {
        "train cache": data.train.path.name,
        "val cache": data.val.path.name,
        "findings": json.dumps(data.findings),
        "train/val images": f"{len(data.train)}/{len(data.val)}",
    }


def finish_run(
    run_dir: Path,
    cfg: RunConfig,
    data: PreparedData,
    state: dict,
    rt: Runtime,
    averaging: str | None = None,
):
    """Reload the best weights, choose thresholds on validation, write metrics and plots."""
    from cxr.checkpoint import load_weights
    from cxr.plots import plot_pr, plot_roc, plot_training_curves

    model = build_model(_no_seed(cfg.model), len(data.findings), cfg.preprocess).to(rt.device)
    load_weights(model, RunDir(run_dir).weights)
    metrics, scores = validation_metrics(model, data.val, data.task, rt)
    state["best"] = metrics["mean_auroc"]  # the saved model's (the SWA average's, with SWA)
    thresholds = [metrics["per_finding"][f]["threshold"] for f in data.findings]
    write_json(
        RunDir(run_dir).model_json,
        {
            "findings": data.findings,
            "task": data.task,
            "thresholds": dict(zip(data.findings, thresholds, strict=True)),
            "threshold_method": "youden, middle of the tied interval (validation split, float32)",
            "decision": metrics["decision"],
            "arch": cfg.model.arch,
            "image_size": cfg.preprocess.image_size,
            "training_data": {
                "path": cfg.data.path,
                "source": data.table.source,
                "n_train": len(data.train.table),
                "n_val": len(data.val.table),
                "val_source": data.val_source,
            },
            "best_epoch": state["best_epoch"],
            "pretrained_on": seed_pretraining(cfg),
            "weight_averaging": averaging,
        },
    )
    if cfg.train.val_bootstrap:  # the model card's intervals (web /api/model, cxr serve)
        tick = time.perf_counter()
        metrics["intervals"] = metric_intervals(
            metrics,
            data.val.table.labels,
            scores,
            data.val.table.patient_ids,
            cfg.train.val_bootstrap,
            cfg.train.seed,
        )
        metrics["intervals"]["seconds"] = round(time.perf_counter() - tick, 3)
    write_json(RunDir(run_dir).val_metrics, metrics)
    y = data.val.table.labels
    plot_roc(y, scores, data.findings, np.asarray(thresholds), run_dir / "val_roc.png")
    plot_pr(y, scores, data.findings, np.asarray(thresholds), run_dir / "val_pr.png")
    plot_training_curves(state["history"], run_dir / "training_curves.png")
    return TrainResult(run_dir, state["best_epoch"], state["best"], state["history"], metrics)


def _print_data_summary(data: PreparedData) -> None:
    skipped = len(data.train.skipped) + len(data.val.skipped)
    print(
        f"data: {len(data.train.table)} train / {len(data.val.table)} val images, "
        f"{len(data.findings)} {'findings' if data.task == 'multilabel' else 'classes'}"
        + (f", {skipped} unreadable file(s) skipped" if skipped else "")
    )


def _log_epoch(run_dir: Path, history: list[dict]) -> None:
    """Rewrite history.jsonl from the checkpointed history, so log and checkpoint agree."""
    tmp = run_dir / "history.jsonl.tmp"
    tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    tmp.replace(RunDir(run_dir).history)
    row = history[-1]
    auroc = row["val_mean_auroc"]
    print(
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
        f"{row['images_per_s']:.1f} img/s, val mean AUROC "
        + ("n/a" if auroc is None else f"{auroc:.4f}")
        + f", val accuracy {row['val_accuracy']:.4f}"
    )
