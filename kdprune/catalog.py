"""Names the CLI offers as choices, kept free of heavy imports so `kdprune --help` stays fast."""

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "synthetic")
