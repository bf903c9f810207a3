"""What the reproduction runs: presets (sizes) and the cells (one student run each) they expand to.

A cell is identified by what decides its outcome: pruning method, keep fraction, distillation weight
alpha, teacher (and whether it runs online), epochs and seed. Studies share cells: the alpha sweep's
``alpha = 0`` cells are the grid's "without KD" cells, and at ``f = 1`` every method keeps all samples,
so those cells are one "full data" cell per (alpha, teacher, seed), not one per method.

Training budget rule (the paper's, through the DeepCore framework it builds on): the same number of
epochs at every keep fraction, so a run on a fraction f of the data takes f of the steps (and, on a
loader that reads only the kept ids, about f of the wall time). One control breaks the rule on
purpose: at the smallest fraction, random pruning trained for ``epochs / f`` epochs, as many steps as
a full-data run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from kdprune.errors import ConfigError

METHODS = ("random", "el2n", "grand", "forgetting", "ccs", "teacher-el2n", "rs2")
# which score file each method prunes by, and how (scores are oriented: higher = harder)
METHOD_SCORE = {"el2n": ("el2n", "hardest"), "grand": ("grand", "hardest"),
                "forgetting": ("forgetting", "hardest"), "ccs": ("aum", "ccs"),
                "teacher-el2n": ("teacher-el2n", "hardest")}
FULL = "full"  # the method name of an f = 1 cell: every method keeps everything
RS2 = "rs2"  # a fresh random subset each epoch (no score, no fixed subset)
ALPHA_SOURCES = ("fit", "shipped")


@dataclass(frozen=True)
class ModelSpec:
    """A network and its training length."""

    model: str = "cnn"
    width: int = 8
    epochs: int = 3

    @property
    def name(self) -> str:
        return f"{self.model}-w{self.width}-e{self.epochs}"


@dataclass(frozen=True)
class ScoreSpec:
    """How a training-dynamics score is computed: ``runs`` independent models (seeds 0..runs-1, scores
    averaged), each trained ``epochs`` epochs on all the data (0: scored at initialisation)."""

    epochs: int
    runs: int = 1


def _scores(e: int) -> dict:
    """The scores as their papers compute them, for a student trained ``e`` epochs: EL2N early in
    training (Paul et al.: epoch 20 of 200) averaged over 4 runs; GraNd at initialisation averaged over
    4 initialisations; forgetting and AUM over one whole training run."""
    return {"el2n": ScoreSpec(max(1, round(e / 10)), 4), "grand": ScoreSpec(0, 4),
            "forgetting": ScoreSpec(e, 1), "aum": ScoreSpec(e, 1)}


@dataclass
class Preset:
    """The size of one reproduction.

    ``teacher`` None means self-distillation: the teacher is the student's own architecture and
    training length, trained on all the data. ``capacity_teachers`` are compared with it at
    ``capacity_fractions`` (random pruning). ``alpha_source``: ``"fit"`` runs the alpha sweep (every
    alpha in ``alphas`` at each of ``alpha_fractions``, for each method of ``alpha_methods``: one per
    method family) and uses the rule it fits; ``"shipped"`` uses :func:`kdprune.alpha_for_fraction`.
    """

    name: str
    dataset: str = "fashion-mnist"
    synthetic_samples: int = 2000
    synthetic_shape: tuple = (28, 28, 1)
    fractions: tuple = (0.1, 0.3, 0.5, 1.0)
    methods: tuple = METHODS
    seeds: tuple = (0, 1, 2)
    student: ModelSpec = field(default_factory=lambda: ModelSpec("cnn", 8, 8))
    teacher: ModelSpec | None = None
    capacity_teachers: tuple = (ModelSpec("cnn", 4, 8), ModelSpec("cnn", 16, 8))
    capacity_fractions: tuple = (0.1,)
    alpha_source: str = "fit"
    alphas: tuple = (0.0, 0.3, 0.6, 0.9)
    alpha_fractions: tuple = (0.1, 0.5)
    alpha_methods: tuple = ("random", "el2n")
    alpha_seeds: tuple = (0, 1)
    fixed_steps_control: bool = True
    control_seeds: tuple = (0, 1)  # the control's runs cost a full-data run each: fewer seeds than the grid
    online_teacher: bool = True  # random f + KD with a teacher forward each step, for the time table
    convergence_epochs: tuple = (4, 16)  # extra full-data no-KD runs (first seed) beside student.epochs
    amortise_runs: int = 10  # the teacher's one-off cost is also shown shared by this many student runs
    time_targets: tuple = (0.98, 0.99)  # time-to-accuracy targets, as shares of the full-data no-KD accuracy
    batch_size: int = 64
    lr: float = 0.2
    temperature: float = 4.0
    scores: dict = field(default_factory=lambda: _scores(8))

    @property
    def main_teacher(self) -> ModelSpec:
        return self.teacher or self.student

    def validate(self) -> "Preset":
        from kdprune.selection import check_fraction

        for f in (*self.fractions, *self.capacity_fractions, *self.alpha_fractions):
            check_fraction(f)
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ConfigError(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
        if not self.seeds:
            raise ConfigError("a preset needs at least one seed")
        if self.alpha_source not in ALPHA_SOURCES:
            raise ConfigError(f"alpha_source must be one of {', '.join(ALPHA_SOURCES)}, got {self.alpha_source!r}")
        if any(not 0.0 <= a <= 1.0 for a in self.alphas) or 0.0 not in self.alphas:
            raise ConfigError(f"alphas must lie in [0, 1] and include 0 (the no-KD baseline), got {self.alphas}")
        if self.alpha_source == "fit" and len(set(self.alpha_fractions)) < 2:
            raise ConfigError("the alpha rule has two coefficients: fitting it needs alpha_fractions with at least "
                              f"2 fractions, got {self.alpha_fractions} (or use alpha_source='shipped')")
        if self.fixed_steps_control and not self.control_seeds:
            raise ConfigError("fixed_steps_control needs control_seeds")
        if self.alpha_source == "fit" and (not self.alpha_seeds or not self.alpha_methods):
            raise ConfigError("alpha_source='fit' needs alpha_seeds and alpha_methods")
        missing = {METHOD_SCORE[m][0] for m in self.methods if m in METHOD_SCORE} - set(self.scores)
        missing -= {"teacher-el2n"}
        if missing:
            raise ConfigError(f"scores {sorted(missing)} have no ScoreSpec in the preset's scores")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


def _small(e: int) -> dict:
    return {"el2n": ScoreSpec(1, 2), "grand": ScoreSpec(0, 2), "forgetting": ScoreSpec(e, 1), "aum": ScoreSpec(e, 1)}


PRESETS = {
    # the study: 7 methods x 4 fractions x {no KD, KD} x 3 seeds, alpha sweep per family, self-distillation
    # with a capacity study, fixed-steps control, convergence check, time to accuracy (docs/reproduce.md)
    "full": Preset(name="full"),
    # what `make demo` adds after the pipeline: a few methods at two fractions, one seed, the shipped
    # alpha rule (a sweep of this size could not fit a rule worth using)
    "demo": Preset(name="demo", fractions=(0.1, 0.3, 1.0), methods=("random", "teacher-el2n", "rs2"), seeds=(0,),
                   student=ModelSpec("cnn", 8, 3), capacity_teachers=(), capacity_fractions=(),
                   alpha_source="shipped", fixed_steps_control=False, online_teacher=False,
                   convergence_epochs=(), scores=_small(3)),
    # the tests: synthetic data, every method and study but the sweep (the tests run it on its own), seconds
    "tiny": Preset(name="tiny", dataset="synthetic", synthetic_samples=200, synthetic_shape=(12, 12, 1),
                   fractions=(0.5, 1.0), seeds=(0,), control_seeds=(0,), student=ModelSpec("cnn", 4, 2),
                   capacity_teachers=(ModelSpec("cnn", 2, 2), ModelSpec("cnn", 8, 2)), capacity_fractions=(0.5,),
                   alpha_source="shipped", convergence_epochs=(1,), amortise_runs=2, batch_size=50,
                   scores=_small(2)),
}


@dataclass(frozen=True)
class Cell:
    """One student run. ``teacher`` is None without distillation (then ``alpha`` is 0); ``online``
    runs the teacher model on each batch instead of reading its stored logits."""

    method: str
    fraction: float
    alpha: float
    teacher: str | None
    seed: int
    epochs: int
    online: bool = False

    @property
    def kd(self) -> bool:
        return self.alpha > 0

    @property
    def key(self) -> str:
        t = (self.teacher + ("-online" if self.online else "")) if self.kd else "none"
        return f"{self.method}_f{self.fraction:g}_a{self.alpha:.3f}_t-{t}_e{self.epochs}_s{self.seed}"

    @property
    def curve(self) -> bool:
        """Whether the run is evaluated after every epoch (the time-to-accuracy runs: full data without
        KD, random pruning and RS2 with KD). A function of the cell alone, so a cell shared by several
        studies is the same run whichever study trains it first."""
        return (self.method == FULL and not self.kd) or (self.method in ("random", RS2) and self.kd)


def make_cell(method: str, fraction: float, alpha: float, teacher: str | None, seed: int, epochs: int,
              online: bool = False) -> Cell:
    """A :class:`Cell`, normalised so that equal runs get equal keys (f = 1 -> method ``full``,
    alpha = 0 -> no teacher, alpha rounded to 3 decimals)."""
    alpha = round(float(alpha), 3)
    kd = alpha > 0
    return Cell(FULL if fraction >= 1.0 else method, float(fraction), alpha, teacher if kd else None, int(seed),
                int(epochs), bool(online) and kd)


def grid_cells(p: Preset, alpha_at) -> list[Cell]:
    """Every method and fraction, without KD and with KD at ``alpha_at(method, f)`` (no KD cell where
    the rule gives alpha 0: that run would be the no-KD run)."""
    t, e, cells = p.main_teacher.name, p.student.epochs, []
    for m in p.methods:
        for f in p.fractions:
            a = alpha_at(m, f)
            for s in p.seeds:
                cells.append(make_cell(m, f, 0.0, None, s, e))
                if a > 0:
                    cells.append(make_cell(m, f, a, t, s, e))
    return cells


def alpha_cells(p: Preset) -> list[Cell]:
    """The alpha sweep: each family's method at each sweep fraction and alpha."""
    if p.alpha_source != "fit":
        return []
    t, e = p.main_teacher.name, p.student.epochs
    return [make_cell(m, f, a, t, s, e) for m in p.alpha_methods for f in p.alpha_fractions for a in p.alphas
            for s in p.alpha_seeds]


def capacity_cells(p: Preset, alpha_at) -> list[Cell]:
    """Random pruning with KD from the main teacher and each capacity teacher at the capacity fractions
    (none where the rule gives alpha 0)."""
    names = [p.main_teacher.name, *(s.name for s in p.capacity_teachers)] if p.capacity_teachers else []
    return [make_cell("random", f, alpha_at("random", f), t, s, p.student.epochs) for t in names
            for f in p.capacity_fractions if alpha_at("random", f) > 0 for s in p.seeds]


def control_cells(p: Preset, alpha_at) -> list[Cell]:
    """The fixed-steps control: random pruning at the smallest fraction f for epochs / f epochs (as many
    steps as a full-data run), without and with KD (unless the rule gives alpha 0 there)."""
    if not p.fixed_steps_control:
        return []
    f = min(p.fractions)
    e = max(1, round(p.student.epochs / f))
    a = alpha_at("random", f)
    return [make_cell("random", f, x, p.main_teacher.name, s, e) for s in p.control_seeds
            for x in ((0.0, a) if a > 0 else (0.0,))]


def online_cells(p: Preset, alpha_at) -> list[Cell]:
    """Random pruning + KD with the teacher run on each batch (the time table's online-teacher rows)."""
    if not p.online_teacher:
        return []
    return [make_cell("random", f, alpha_at("random", f), p.main_teacher.name, s, p.student.epochs, online=True)
            for f in p.fractions if f < 1.0 and alpha_at("random", f) > 0 for s in p.seeds]


def convergence_cells(p: Preset) -> list[Cell]:
    """Full data without KD at other epoch counts (first seed), beside the grid's full-data runs."""
    return [make_cell(FULL, 1.0, 0.0, None, p.seeds[0], e) for e in p.convergence_epochs]


def unique(cells: list[Cell]) -> list[Cell]:
    """``cells`` without repeats, first occurrence first."""
    seen, out = set(), []
    for c in cells:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out
