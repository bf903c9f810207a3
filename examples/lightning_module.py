"""Distil a teacher into a student on a pruned subset with PyTorch Lightning.

    python examples/lightning_module.py --data DATA --fraction 0.3 --out runs/lightning

DATA holds ``train/<class>/<image>`` and ``val/<class>/<image>`` (torchvision's ImageFolder layout).
The teacher is your trained model (``--teacher-weights teacher.pt``, a state dict of
``--teacher-arch``); without one it is trained here on all of ``train/`` first.

The LightningModule reads the teacher's stored logits by sample id (``store.gather(ids)``) and trains
with :class:`kdprune.KDLoss`; its training DataLoader draws the pruned subset through a
:class:`kdprune.KeptIdSampler`, which also shards the subset over DDP ranks itself, so the Trainer is
told not to put a DistributedSampler in front of it (``use_distributed_sampler=False``).
"""
import argparse
import os

import lightning as L
import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

import kdprune


class KDStudent(L.LightningModule):
    """A student trained with KD from stored teacher logits on the kept ids of ``train_set``."""

    def __init__(self, student, store, train_set, val_set, subset, *, fraction, lr=0.05, batch_size=64,
                 workers=2, seed=0):
        super().__init__()
        self.student, self.store, self.subset = student, store, subset
        self.train_set, self.val_set = train_set, val_set
        self.loss_fn = kdprune.KDLoss(alpha="auto", fraction=fraction, temperature=4.0)
        self.lr, self.batch_size, self.workers, self.seed = lr, batch_size, workers, seed

    def forward(self, x):
        return self.student(x)

    def train_dataloader(self):
        # made here, after Lightning has set up the process group: the sampler shards over its ranks
        sampler = kdprune.KeptIdSampler(self.subset, seed=self.seed)
        return DataLoader(kdprune.with_ids(self.train_set), batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.workers)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=2 * self.batch_size, num_workers=self.workers)

    def training_step(self, batch, batch_idx):
        x, y, ids = batch
        logits = self.student(x)
        out = self.loss_fn(logits, self.store.gather(ids).to(self.device), y)
        self.log("train_loss", out.loss, prog_bar=True)
        self.log("train_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)
        return out.loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.student(x)
        self.log("val_loss", torch.nn.functional.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.student.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.trainer.max_epochs)
        return [opt], [sched]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder with train/ and val/ image folders")
    p.add_argument("--out", default="runs/lightning", help="where the teacher logits and the checkpoints go")
    p.add_argument("--fraction", type=float, default=0.3, help="keep fraction of the training set (default 0.3)")
    p.add_argument("--epochs", type=int, default=10, help="student epochs (default 10)")
    p.add_argument("--teacher-arch", default="resnet18", help="torchvision model name of the teacher")
    p.add_argument("--student-arch", default="resnet18", help="torchvision model name of the student")
    p.add_argument("--teacher-weights", help="the teacher's state dict; without it the teacher is trained here")
    p.add_argument("--teacher-epochs", type=int, default=10, help="epochs of the teacher trained here (default 10)")
    p.add_argument("--image-size", type=int, default=64, help="images are resized to this square (default 64)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    L.seed_everything(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tf = transforms.Compose([transforms.Resize((args.image_size, args.image_size)), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    train_set = torchvision.datasets.ImageFolder(os.path.join(args.data, "train"), tf)
    val_set = torchvision.datasets.ImageFolder(os.path.join(args.data, "val"), tf)
    num_classes = len(train_set.classes)

    teacher = torchvision.models.get_model(args.teacher_arch, num_classes=num_classes)
    if args.teacher_weights:
        teacher.load_state_dict(torch.load(args.teacher_weights, map_location="cpu", weights_only=True))
    else:
        print(f"training the teacher ({args.teacher_arch}) on all {len(train_set)} training images")
        kdprune.fit(teacher, DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=args.workers),
                    epochs=args.teacher_epochs, lr=args.lr, device=device, desc="teacher",
                    eval_loader=DataLoader(val_set, batch_size=2 * args.batch_size))

    store = kdprune.write_teacher_logits(teacher, train_set, os.path.join(args.out, "teacher_logits"),
                                         batch_size=2 * args.batch_size, device=device, workers=args.workers)
    subset = kdprune.prune(None, args.fraction, mode="random", labels=train_set.targets, class_balanced=True,
                           seed=args.seed)
    student = torchvision.models.get_model(args.student_arch, num_classes=num_classes)
    module = KDStudent(student, store, train_set, val_set, subset, fraction=args.fraction, lr=args.lr,
                       batch_size=args.batch_size, workers=args.workers, seed=args.seed)
    trainer = L.Trainer(max_epochs=args.epochs, default_root_dir=args.out, use_distributed_sampler=False,
                        logger=False, num_sanity_val_steps=0)
    trainer.fit(module)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print(f"after {args.epochs} epochs on {len(subset)} of {len(train_set)} images: "
          f"val accuracy {100 * metrics['val_acc']:.2f}%")
    return metrics


if __name__ == "__main__":
    main()
