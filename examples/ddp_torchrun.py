"""Distil a teacher into a student on a pruned subset with DistributedDataParallel, launched by torchrun.

    torchrun --standalone --nproc_per_node=4 examples/ddp_torchrun.py --data DATA --fraction 0.3

DATA holds ``train/<class>/<image>`` and ``val/<class>/<image>`` (torchvision's ImageFolder layout).
The teacher is your trained model (``--teacher-weights teacher.pt``, a state dict of
``--teacher-arch``); without one it is trained here first, on all of ``train/``, by ``kdprune.fit``
(which runs DDP itself under torchrun). The ranks share the work of computing the teacher's logits,
written once into one store; every rank then reads them by sample id. Each rank's :class:`kdprune.KeptIdSampler` yields its own shard of the subset:
disjoint, equal-length, covering it, in a fresh order every epoch. NCCL on GPUs, gloo on CPUs.
"""
import argparse
import os

import torch
import torch.distributed as dist
import torchvision
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

import kdprune


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder with train/ and val/ image folders")
    p.add_argument("--out", default="runs/ddp", help="where the teacher logits and the student go")
    p.add_argument("--fraction", type=float, default=0.3, help="keep fraction of the training set (default 0.3)")
    p.add_argument("--epochs", type=int, default=10, help="student epochs (default 10)")
    p.add_argument("--teacher-arch", default="resnet18", help="torchvision model name of the teacher")
    p.add_argument("--student-arch", default="resnet18", help="torchvision model name of the student")
    p.add_argument("--teacher-weights", help="the teacher's state dict; without it the teacher is trained here")
    p.add_argument("--teacher-epochs", type=int, default=10, help="epochs of the teacher trained here (default 10)")
    p.add_argument("--image-size", type=int, default=64, help="images are resized to this square (default 64)")
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per rank (default 2)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    tf = transforms.Compose([transforms.Resize((args.image_size, args.image_size)), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    train_set = torchvision.datasets.ImageFolder(os.path.join(args.data, "train"), tf)
    val_set = torchvision.datasets.ImageFolder(os.path.join(args.data, "val"), tf)
    num_classes = len(train_set.classes)
    # evaluation: every world-th image on each rank; kdprune.evaluate adds the counts over the ranks
    val_loader = DataLoader(Subset(val_set, range(rank, len(val_set), world)), batch_size=2 * args.batch_size,
                            num_workers=args.workers)

    teacher = torchvision.models.get_model(args.teacher_arch, num_classes=num_classes)
    if args.teacher_weights:
        teacher.load_state_dict(torch.load(args.teacher_weights, map_location="cpu", weights_only=True))
    else:
        everything = kdprune.KeptIdSampler(range(len(train_set)), seed=args.seed)  # this rank's shard of all
        kdprune.fit(teacher, DataLoader(kdprune.with_ids(train_set), batch_size=args.batch_size, sampler=everything,
                                        num_workers=args.workers),
                    epochs=args.teacher_epochs, lr=args.lr, device=device, eval_loader=val_loader, desc="teacher")

    # every rank computes its share of the teacher's logits; rank 0 writes the store, all ranks read it
    store = kdprune.write_teacher_logits(teacher, train_set, os.path.join(args.out, "teacher_logits"),
                                         batch_size=2 * args.batch_size, device=device, workers=args.workers)

    subset = kdprune.prune(None, args.fraction, mode="random", labels=train_set.targets, class_balanced=True,
                           seed=args.seed)  # the same subset on every rank: it is seeded
    sampler = kdprune.KeptIdSampler(subset, seed=args.seed)  # shards over the process group's ranks
    loader = DataLoader(kdprune.with_ids(train_set), batch_size=args.batch_size, sampler=sampler,
                        num_workers=args.workers, pin_memory=cuda)
    loss_fn = kdprune.KDLoss(alpha="auto", fraction=args.fraction, temperature=4.0)
    student = torchvision.models.get_model(args.student_arch, num_classes=num_classes).to(device)
    model = DDP(student, device_ids=[device.index] if cuda else None)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * len(loader))
    if rank == 0:
        print(f"student ({args.student_arch}) on {len(subset)} of {len(train_set)} images over {world} ranks "
              f"({len(sampler)} each per epoch), alpha {loss_fn.alpha:.2f}", flush=True)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for x, y, ids in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = loss_fn(model(x), store.gather(ids).to(device), y)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            sched.step()
        res = kdprune.evaluate(student, val_loader, device)  # collective: every rank takes part
        if rank == 0:
            print(f"epoch {epoch + 1}/{args.epochs}: val accuracy {100 * res['accuracy']:.2f}% "
                  f"on {res['samples']} images", flush=True)
    if rank == 0:
        torch.save(student.state_dict(), os.path.join(args.out, "student.pt"))
        print(f"student weights: {os.path.join(args.out, 'student.pt')}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
