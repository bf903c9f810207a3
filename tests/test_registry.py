"""One list per family of named things: the CLI offers exactly what the registry holds, and the
library refuses anything else with the valid names in the message."""
import pytest

from kdprune.cli import build_parser
from kdprune.errors import ConfigError
from kdprune.registry import LOADER_BACKENDS, LOSS_KERNELS, PRUNE_MODES, SCORE_METHODS, Registry


def choices(command: str, dest: str) -> tuple:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return tuple(next(a for a in sub._actions if a.dest == dest and a.help != "==SUPPRESS==").choices)


@pytest.mark.parametrize("command, dest, registry", [
    ("score", "method", SCORE_METHODS), ("prune", "mode", PRUNE_MODES),
    ("train", "loss_kernel", LOSS_KERNELS), ("train", "loader", LOADER_BACKENDS),
])
def test_the_cli_offers_the_registry(command, dest, registry):
    assert choices(command, dest) == registry.names()


def test_the_library_reads_the_same_lists():
    import kdprune.loaders
    from kdprune.loss.function import KERNELS
    from kdprune.scores import METHODS
    from kdprune.train.config import TrainConfig

    assert kdprune.loaders.BACKENDS == LOADER_BACKENDS.names() and KERNELS == LOSS_KERNELS.names()
    assert METHODS == SCORE_METHODS.names()
    with pytest.raises(ConfigError, match="loss_kernel must be one of auto, triton, cpu, torch"):
        TrainConfig(loss_kernel="fast").validate()
    with pytest.raises(ConfigError, match="unknown loader backend 'tf'; choose one of torch, ffcv, dali"):
        kdprune.loaders.build("tf", None, None, batch_size=1, train=False)


def test_a_registry_loads_lazily_and_refuses_duplicates():
    reg = Registry("widget")
    reg.register("json", "json:dumps", help="serialises")
    reg.register("none", None)

    @reg.register("mine", colour="red")
    def mine():
        return 1

    assert reg.names() == ("json", "none", "mine") and reg.where(colour="red") == ("mine",)
    import json
    assert reg.load("json") is json.dumps and reg.load("mine") is mine and reg.load("none") is None
    assert "json: serialises" in reg.describe()
    with pytest.raises(ConfigError, match="widget 'json' is registered already"):
        reg.register("json", None)
    with pytest.raises(ConfigError, match="unknown widget 'yaml'; choose one of json, none, mine"):
        reg.load("yaml")
