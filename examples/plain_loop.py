"""Distil a teacher into a student on a pruned subset of your own image folder, in a plain PyTorch loop.

    python examples/plain_loop.py --data DATA --fraction 0.3 --out runs/plain_loop

DATA holds ``train/<class>/<image>`` and ``val/<class>/<image>`` (torchvision's ImageFolder layout).
The teacher is your trained model (``--teacher-weights teacher.pt``, a state dict of
``--teacher-arch``); without one it is trained here on all of ``train/`` first. kdprune adds four
things to the loop: the teacher's logits stored once, a pruned subset, a sampler over it that yields
sample ids, and the KD loss.

The stored logits are the teacher's outputs on the images as the dataset returns them, so the
training transform here is deterministic; for random augmentation, store several views
(``write_teacher_logits(..., views=V, augment=kdprune.data.Augment())``) and apply view
``epoch % V`` to each batch with ``augment.apply(x, view, ids)``.
"""
import argparse
import os

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

import kdprune


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder with train/ and val/ image folders")
    p.add_argument("--out", default="runs/plain_loop", help="where the teacher logits and the student go")
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


def image_folders(root: str, size: int):
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    return (torchvision.datasets.ImageFolder(os.path.join(root, "train"), tf),
            torchvision.datasets.ImageFolder(os.path.join(root, "val"), tf))


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train_set, val_set = image_folders(args.data, args.image_size)
    num_classes = len(train_set.classes)
    val_loader = DataLoader(val_set, batch_size=2 * args.batch_size, num_workers=args.workers)

    teacher = torchvision.models.get_model(args.teacher_arch, num_classes=num_classes)
    if args.teacher_weights:
        teacher.load_state_dict(torch.load(args.teacher_weights, map_location="cpu", weights_only=True))
    else:
        print(f"training the teacher ({args.teacher_arch}) on all {len(train_set)} training images")
        kdprune.fit(teacher, DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=args.workers),
                    epochs=args.teacher_epochs, lr=args.lr, device=device, eval_loader=val_loader, desc="teacher")

    # 1. the teacher's logits for every training image, computed once (a re-run resumes or reuses them)
    store = kdprune.write_teacher_logits(teacher, train_set, os.path.join(args.out, "teacher_logits"),
                                         batch_size=2 * args.batch_size, device=device, workers=args.workers)
    # 2. the subset to train on, and a sampler that yields its ids in a fresh order every epoch
    subset = kdprune.prune(None, args.fraction, mode="random", labels=train_set.targets, class_balanced=True,
                           seed=args.seed)
    sampler = kdprune.KeptIdSampler(subset, seed=args.seed)
    loader = DataLoader(kdprune.with_ids(train_set), batch_size=args.batch_size, sampler=sampler,
                        num_workers=args.workers, pin_memory=device == "cuda")
    # 3. the KD loss, with alpha picked for the keep fraction
    loss_fn = kdprune.KDLoss(alpha="auto", fraction=args.fraction, temperature=4.0)

    student = torchvision.models.get_model(args.student_arch, num_classes=num_classes).to(device)
    opt = torch.optim.SGD(student.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * len(loader))
    print(f"student ({args.student_arch}) on {len(subset)} of {len(train_set)} images, alpha {loss_fn.alpha:.2f}")
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        student.train()
        for x, y, ids in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = loss_fn(student(x), store.gather(ids).to(device), y)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            sched.step()
        res = kdprune.evaluate(student, val_loader, device)
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {out.loss.item():.4f}, "
              f"val accuracy {100 * res['accuracy']:.2f}%", flush=True)
    os.makedirs(args.out, exist_ok=True)
    torch.save(student.state_dict(), os.path.join(args.out, "student.pt"))
    print(f"student weights: {os.path.join(args.out, 'student.pt')}")
    return res


if __name__ == "__main__":
    main()
