"""Fine-tuning a :class:`~earthembed.models.dense.Segmenter` on labelled chips (Lightning), and scoring it.

One LightningModule per (init, label fraction, seed) cell of ``segment``. Images and masks are augmented with
one geometry (:func:`earthembed.augment.augment_batch` returns its affine, :func:`earthembed.augment.warp_mask`
applies it to the mask with nearest-neighbour sampling, so a class is never blended); unlabelled pixels
(the mask's nodata value) are the loss's ignore index and never a class. With a val split, the weights with
the best val mIoU (checked every ``val_every_n_steps`` and at the end) are the ones scored on test, so no
choice is made on test chips. AdamW groups and warmup-cosine come from :mod:`earthembed.optim`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from earthembed.augment import AugmentConfig, augment_batch, warp_mask
from earthembed.contract import ChipBatch, as_chip_batch
from earthembed.data.dataset import ChipDataset
from earthembed.evaluate.metrics import confusion_matrices, segmentation_scores
from earthembed.models.dense import Segmenter
from earthembed.optim import adamw_warmup_cosine, param_groups


def _present(batch: ChipBatch, keys: Sequence[str], device: torch.device) -> dict[str, Tensor]:
    return {k: batch.present(k).to(device) for k in keys}


def labelled_mask(batch: Mapping[str, Any], task: str, ignore_index: int) -> Tensor:
    """The ``[B, H, W]`` mask of label ``task`` (a :class:`~earthembed.contract.ChipBatch`, or a dict with
    ``mask_<task>``) with every pixel of chips without a mask set to ``ignore_index``."""
    f = as_chip_batch(batch).masks[task]
    m, have = f.x, f.present.to(f.x.device)
    if not bool(have.all()):
        m = m.masked_fill(~have[:, None, None], ignore_index)
    return m


def _inputs(batch: ChipBatch, bands: Mapping[str, Sequence[str]]) -> tuple[list[str], ChipBatch]:
    """(the modalities of ``bands`` the batch has, a batch of just those observations)."""
    keys = [k for k in bands if k in batch.obs]
    return keys, ChipBatch({k: batch.obs[k] for k in keys}, idx=batch.idx)


class SegmentationModule(L.LightningModule):
    """Trains ``segmenter`` with cross-entropy (ignore index = unlabelled) on augmented batches.

    Args:
        segmenter: encoder + decoder + head; ``segmenter.freeze_encoder`` decides what trains.
        bands: band names of the batch tensors per modality (checked by name against the encoder).
        task: mask label name (batches carry ``mask_<task>``), ``num_classes`` and ``ignore_index``.
        lr, weight_decay, warmup_steps, betas: AdamW + warmup-cosine over the run's steps.
        encoder_lr_scale: the encoder's learning rate relative to ``lr`` (pretrained weights often want less).
        augment: :class:`~earthembed.augment.AugmentConfig` fields.
        val_data, val_every_n_steps, eval_batch_size: val chips for checkpoint selection (None: last weights).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        bands: Mapping[str, Sequence[str]],
        task: str,
        num_classes: int,
        ignore_index: int = -1,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        betas: Sequence[float] = (0.9, 0.999),
        encoder_lr_scale: float = 1.0,
        augment: Mapping[str, Any] | None = None,
        val_data: ChipDataset | None = None,
        val_every_n_steps: int = 0,
        eval_batch_size: int = 64,
    ) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.bands = {k: list(v) for k, v in bands.items()}
        self.task, self.num_classes, self.ignore_index = task, int(num_classes), int(ignore_index)
        self.lr, self.weight_decay, self.warmup_steps = float(lr), float(weight_decay), int(warmup_steps)
        self.betas = [float(b) for b in betas]
        self.encoder_lr_scale = float(encoder_lr_scale)
        self.aug = AugmentConfig.from_dict(augment)
        enc = segmenter.encoder
        self._groups = {k: enc.group_channel_indices(k) for k in self.bands}
        self.val_data, self.val_every, self.eval_batch_size = val_data, int(val_every_n_steps), int(eval_batch_size)
        self.best: tuple[float, int, dict[str, Tensor]] | None = None  # (val mIoU, step, weights)
        self.val_history: list[tuple[int, float]] = []

    # -- training --------------------------------------------------------------------------------------
    def step(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, statistics) of one batch; also what bare-loop benchmarks call."""
        batch = as_chip_batch(batch)
        keys, inputs = _inputs(batch, self.bands)
        present = _present(batch, keys, self.device)
        x = augment_batch(inputs, {k: self._groups[k] for k in keys}, self.aug)
        assert isinstance(x, ChipBatch) and x.affine is not None
        mask = warp_mask(labelled_mask(batch, self.task, self.ignore_index), x.affine)
        gp = {k: g for k in keys if (g := x.group_present(k)) is not None}
        logits = self.segmenter(x, bands={k: self.bands[k] for k in keys}, present=present, group_present=gp)
        valid = mask != self.ignore_index
        if not bool(valid.any()):  # no labelled pixel in this batch: a zero loss that keeps the graph
            return logits.sum() * 0.0, {"labelled_px": torch.tensor(0.0)}
        loss = F.cross_entropy(logits.float(), mask.long(), ignore_index=self.ignore_index)
        with torch.no_grad():
            acc = (logits.argmax(1) == mask)[valid].float().mean()
        return loss, {"pixel_acc": acc, "labelled_px": valid.sum().float()}

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss, stats = self.step(batch)
        n = as_chip_batch(batch).batch_size
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for k, v in stats.items():
            self.log(f"train/{k}", torch.as_tensor(v, dtype=torch.float32).to(self.device), batch_size=n)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        seg = self.segmenter
        enc_names = {f"encoder.{n}" for n in seg.encoder.no_weight_decay()}
        groups = param_groups(seg, self.weight_decay, enc_names)
        if self.encoder_lr_scale != 1.0:
            enc = {id(p) for p in seg.encoder.parameters()}
            split = []
            for g in groups:
                mine = [p for p in g["params"] if id(p) in enc]
                split.append({**g, "params": mine, "lr": self.lr * self.encoder_lr_scale})
                split.append({**g, "params": [p for p in g["params"] if id(p) not in enc]})
            groups = split
        groups = [g for g in groups if g["params"]]
        trainer = self._trainer
        total = int(trainer.estimated_stepping_batches) if trainer is not None else 1
        return adamw_warmup_cosine(groups, self.lr, self.betas, self.warmup_steps, total)

    # -- checkpoint selection on val -------------------------------------------------------------------
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.val_data is None or not len(self.val_data) or self.val_every <= 0:
            return
        trainer = self._trainer
        step = int(trainer.global_step) if trainer is not None else batch_idx + 1
        last = trainer is not None and trainer.max_steps > 0 and step >= trainer.max_steps
        if step % self.val_every and not last:
            return
        conf, _ = predict_confusions(self.segmenter, self.val_data, self.bands, self.task, self.num_classes,
                                     self.ignore_index, self.eval_batch_size, self.device)
        miou = float(segmentation_scores(conf.sum(0, keepdims=True))["miou"][0])
        self.val_history.append((step, miou))
        self.log("val/miou", miou, batch_size=len(self.val_data))
        if self.best is None or miou > self.best[0]:
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.segmenter.state_dict().items()}
            self.best = (miou, step, state)

    def restore_best(self) -> dict[str, Any]:
        """Load the best val weights (if any were kept); returns ``{"best_step", "val_miou"}`` (None without val)."""
        if self.best is None:
            return {"best_step": None, "val_miou": None}
        miou, step, state = self.best
        self.segmenter.load_state_dict(state)
        return {"best_step": step, "val_miou": miou}


@torch.no_grad()
def predict_confusions(
    segmenter: Segmenter,
    data: ChipDataset,
    bands: Mapping[str, Sequence[str]],
    task: str,
    num_classes: int,
    ignore_index: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    keep: Sequence[int] = (),
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Per-chip confusion matrices [N, K, K] of ``segmenter`` on every chip of ``data`` (in order) and the
    predicted label maps of the dataset positions in ``keep`` (for figures). The module's train/eval mode is
    restored afterwards."""
    was_training = segmenter.training
    segmenter.eval()
    confs: list[np.ndarray] = []
    kept: dict[int, np.ndarray] = {}
    want = set(int(i) for i in keep)
    try:
        for s in range(0, len(data), batch_size):
            pos = np.arange(s, min(s + batch_size, len(data)))
            batch = data.read_batch(pos)
            keys, x = _inputs(batch, bands)
            x = x.to(device)
            present = _present(batch, keys, torch.device(device))
            pred = segmenter(x, bands={k: list(bands[k]) for k in keys}, present=present).argmax(1).cpu().numpy()
            mask = labelled_mask(batch, task, ignore_index).numpy()
            confs.append(confusion_matrices(mask, pred, num_classes, ignore_index))
            for j, p in enumerate(pos):
                if int(p) in want:
                    kept[int(p)] = pred[j].astype(np.int16)
    finally:
        segmenter.train(was_training)
    k = num_classes
    return (np.concatenate(confs) if confs else np.zeros((0, k, k), dtype=np.int64)), kept
