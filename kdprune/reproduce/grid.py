"""What the reproduction runs: presets (sizes) and the cells (one student run each) they expand to.

A cell is identified by what decides its outcome: pruning method, keep fraction, distillation weight
alpha, teacher and seed. The three studies share cells: the alpha study's ``alpha = 0`` cells are the
grid's random "without KD" cells, and at ``f = 1`` every method keeps all samples, so those cells are
one "full data" cell per (alpha, teacher, seed), not one per method.

Training budget rule (the paper's, through the DeepCore framework it builds on): the same number of
epochs at every keep fraction, so a run on a fraction f of the data takes f of the steps (and, on a
loader that reads only the kept ids, about f of the wall time). That is the saving kdprune exists for.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from kdprune.errors import ConfigError

METHODS = ("random", "el2n", "grand", "forgetting", "ccs", "teacher-el2n")
# which score file each method prunes by, and how (scores are oriented: higher = harder)
METHOD_SCORE = {"el2n": ("el2n", "hardest"), "grand": ("grand", "hardest"),
                "forgetting": ("forgetting", "hardest"), "ccs": ("aum", "ccs"),
                "teacher-el2n": ("teacher-el2n", "hardest")}
FULL = "full"  # the method name of an f = 1 cell: every method keeps everything


@dataclass(frozen=True)
class ModelSpec:
    """A network and its training length."""

    model: str = "cnn"
    width: int = 8
    epochs: int = 3

    @property
    def name(self) -> str:
        return f"{self.model}-w{self.width}-e{self.epochs}"


@dataclass
class Preset:
    """The size of one reproduction. ``teacher`` is the full-data teacher of the grid and the alpha
    study; ``capacity_teachers`` are the extra teachers of the capacity study (compared with
    ``teacher`` at ``capacity_fractions``, random pruning, alpha from the fitted rule)."""

    name: str
    dataset: str = "fashion-mnist"
    synthetic_samples: int = 2000
    synthetic_shape: tuple = (28, 28, 1)
    fractions: tuple = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    methods: tuple = METHODS
    seeds: tuple = (0, 1, 2)
    alphas: tuple = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
    student: ModelSpec = field(default_factory=lambda: ModelSpec("cnn", 8, 3))
    teacher: ModelSpec = field(default_factory=lambda: ModelSpec("cnn", 16, 6))
    capacity_teachers: tuple = (ModelSpec("cnn", 4, 6), ModelSpec("cnn", 8, 6))
    capacity_fractions: tuple = (0.1, 0.5)
    capacity_alpha: float | None = None  # None: the fitted rule's alpha at each fraction
    # batch 64 at lr 0.2: at f = 0.1 and 3 epochs, batch 128 at lr 0.05 (the trainer's defaults) left
    # the student at 61.6% after 141 steps; batch 64 at lr 0.2 reached 75.3% (and 86.2% vs 85.6% on
    # all the data), see docs/reproduce.md
    batch_size: int = 64
    lr: float = 0.2
    temperature: float = 4.0
    # epochs of the scoring runs (kdprune.scores.compute_score); a method not named takes its default
    score_epochs: dict = field(default_factory=lambda: {"el2n": 2, "grand": 0, "forgetting": 3, "aum": 3})

    def validate(self) -> "Preset":
        from kdprune.selection import check_fraction

        for f in (*self.fractions, *self.capacity_fractions):
            check_fraction(f)
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ConfigError(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
        if not self.seeds:
            raise ConfigError("a preset needs at least one seed")
        if any(not 0.0 <= a <= 1.0 for a in self.alphas) or 0.0 not in self.alphas:
            raise ConfigError(f"alphas must lie in [0, 1] and include 0 (the no-KD baseline), got {self.alphas}")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # the grid: 6 fractions x 6 methods x {no KD, KD} x 3 seeds, alpha study, capacity study
    "full": Preset(name="full"),
    # an end-to-end check of every step at a fraction of the cost (run before the batch/lr change above,
    # so it keeps the trainer's defaults: its results in docs/results were made with them)
    "reduced": Preset(name="reduced", fractions=(0.1, 0.3, 1.0), methods=("random", "el2n"), seeds=(0,),
                      alphas=(0.0, 0.5, 0.9), teacher=ModelSpec("cnn", 16, 4),
                      capacity_teachers=(ModelSpec("cnn", 4, 4),), capacity_fractions=(0.1,),
                      batch_size=128, lr=0.05, score_epochs={}),
    # what `make demo` adds after the pipeline: teacher, alpha sweep and grid at two fractions
    # (7 min 52 s with fractions {0.1, 0.3} and a 3-epoch teacher on the shared 2-core box: cut to fit
    # the demo's 10 minutes next to the pipeline)
    "demo": Preset(name="demo", fractions=(0.1, 0.2), methods=("random", "teacher-el2n"), seeds=(0,),
                   alphas=(0.0, 0.5, 0.9), teacher=ModelSpec("cnn", 8, 2), capacity_teachers=(),
                   capacity_fractions=()),
    # the tests: synthetic data, every method and study, seconds
    "tiny": Preset(name="tiny", dataset="synthetic", synthetic_samples=200, synthetic_shape=(12, 12, 1),
                   fractions=(0.5, 1.0), seeds=(0,), alphas=(0.0, 1.0), student=ModelSpec("cnn", 4, 1),
                   teacher=ModelSpec("cnn", 4, 1), capacity_teachers=(ModelSpec("cnn", 2, 1),),
                   capacity_fractions=(0.5,), capacity_alpha=1.0, batch_size=50,
                   score_epochs={"el2n": 1, "grand": 0, "forgetting": 2, "aum": 1}),
}


@dataclass(frozen=True)
class Cell:
    """One student run. ``teacher`` is None without distillation (then ``alpha`` is 0)."""

    method: str
    fraction: float
    alpha: float
    teacher: str | None
    seed: int

    @property
    def kd(self) -> bool:
        return self.alpha > 0

    @property
    def key(self) -> str:
        t = self.teacher if self.kd else "none"
        return f"{self.method}_f{self.fraction:g}_a{self.alpha:.3f}_t-{t}_s{self.seed}"


def make_cell(method: str, fraction: float, alpha: float, teacher: str | None, seed: int) -> Cell:
    """A :class:`Cell`, normalised so that equal runs get equal keys (f = 1 -> method ``full``,
    alpha = 0 -> no teacher, alpha rounded to 3 decimals)."""
    alpha = round(float(alpha), 3)
    return Cell(FULL if fraction >= 1.0 else method, float(fraction), alpha, teacher if alpha > 0 else None,
                int(seed))


def alpha_cells(p: Preset, teacher: str) -> list[Cell]:
    """The alpha study: random pruning at every fraction and alpha."""
    return [make_cell("random", f, a, teacher, s) for f in p.fractions for a in p.alphas for s in p.seeds]


def grid_cells(p: Preset, teacher: str, alpha_at) -> list[Cell]:
    """The grid: every method and fraction, without KD and with KD at ``alpha_at(f)``."""
    cells = []
    for m in p.methods:
        for f in p.fractions:
            for s in p.seeds:
                cells += [make_cell(m, f, 0.0, None, s), make_cell(m, f, alpha_at(f), teacher, s)]
    return cells


def capacity_alpha(p: Preset, alpha_at, f: float) -> float:
    """The distillation weight of the capacity study at keep fraction ``f``."""
    return alpha_at(f) if p.capacity_alpha is None else float(p.capacity_alpha)


def capacity_cells(p: Preset, teachers: list[str], alpha_at) -> list[Cell]:
    """The capacity study: random pruning with KD from each teacher at the capacity fractions, at
    ``p.capacity_alpha`` when set, else at ``alpha_at(f)``."""
    return [make_cell("random", f, capacity_alpha(p, alpha_at, f), t, s) for t in teachers for f in p.capacity_fractions
            for s in p.seeds]


def unique(cells: list[Cell]) -> list[Cell]:
    """``cells`` without repeats, first occurrence first."""
    seen, out = set(), []
    for c in cells:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out
