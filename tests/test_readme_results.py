"""Every figure in the README's benchmark tables is a recorded row of benchmarks/results/*.csv,
rounded as printed, so the README cannot quote a number that no run produced."""
import csv
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_table(heading: str, path: str = "README.md") -> list[list[str]]:
    """The body rows (cells, stripped) of the first Markdown table after ``heading`` in ``path``."""
    text = open(os.path.join(ROOT, path)).read()
    start = text.index(heading)
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # header and the |---| line


def recorded(name: str) -> list[dict]:
    with open(os.path.join(ROOT, "benchmarks", "results", f"{name}.csv"), newline="") as f:
        return list(csv.DictReader(f))


def shows(printed: str, value) -> bool:
    """``printed`` ("6.3x", "0.91 ms", "1.001", "0.0002") is ``value`` rounded to its digits."""
    number = re.search(r"-?\d+(\.\d+)?", printed).group(0)
    decimals = len(number.split(".")[1]) if "." in number else 0
    return abs(float(value) - float(number)) <= 0.5 * 10 ** -decimals + 1e-12


def test_loss_table_is_recorded():
    rows = recorded("loss")
    table = readme_table("### Fused KD loss")
    assert len(table) >= 3
    for shape, vs_eager, vs_compile, best in table:
        b, c, dtype = re.fullmatch(r"(\d+) x (\d+) (\w+)", shape).groups()
        dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
        assert any(r["B"] == b and r["C"] == c and r["dtype"] == dtype and r["impl"].startswith("ours")
                   and shows(vs_eager, r["speedup vs eager"]) and shows(vs_compile, r["speedup vs compile"])
                   and shows(best, r["min ms"]) for r in rows), shape


STORE_METHODS = {  # README's words -> the benchmark's method names
    "kdprune gather, 2 threads, new tensor": "ours (TeacherStore.gather), 2 thr",
    "kdprune gather, 2 threads, `out=` reused": "ours, out= reused, 2 thr",
    "kdprune gather, 1 thread, new tensor": "ours (TeacherStore.gather), 1 thr",
    "numpy memmap fancy indexing": "numpy memmap fancy index",
    "`torch.from_file` + `index_select`": "torch.from_file + index_select",
    "memcpy of the same bytes, one block (torch `copy_`, 2 threads)": "memcpy (contiguous block, same bytes)",
}


def test_store_table_is_recorded():
    rows = recorded("store")
    table = readme_table("### Teacher-store gather")
    assert {t[0] for t in table} == set(STORE_METHODS)
    for method, ms, gb_s, x_numpy, of_memcpy in table:
        assert any(r["method"] == STORE_METHODS[method] and shows(ms, r["ms_per_batch"]) and shows(gb_s, r["GB_s"])
                   and shows(x_numpy, r["x_numpy"]) and shows(of_memcpy, r["frac_memcpy"]) for r in rows), method


SCORE_LABELS = {  # README's row -> the benchmark's methods it sums up
    "EL2N / forgetting / AUM (recorded during the training the model does anyway)": ("el2n", "forgetting", "aum"),
    "GraNd, exact (per-sample gradients)": ("grand",),
    "GraNd, last layer (closed form)": ("grand-last",),
    "prototypes (embedding + k-means)": ("prototypes",),
    "teacher EL2N / entropy / margin (from the store)": ("teacher-el2n", "teacher-entropy", "teacher-margin"),
}


def test_score_cost_table_is_recorded():
    rows = recorded("scores")
    table = readme_table("### Cost of each score")
    assert {label for label, _ in table} == set(SCORE_LABELS)
    for label, cost in table:
        for method in SCORE_LABELS[label]:
            assert any(r["method"] == method and shows(cost, r["total_x_epoch"]) for r in rows), (label, method)


@pytest.mark.parametrize("printed, value, ok", [("6.3x", 6.323, True), ("6.3x", 6.36, False),
                                                ("0.91 ms", 0.9134, True), ("0.0002", 0.000165, True)])
def test_rounding_rule(printed, value, ok):
    assert shows(printed, value) is ok


LOADER_NAMES = {"torch DataLoader": "torch", "FFCV stock": "ffcv-stock", "kdprune FFCV": "ffcv",
                "kdprune DALI": "dali", "FFCV stock, uint8": "ffcv-stock-uint8", "kdprune FFCV, uint8": "ffcv-uint8",
                "kdprune DALI, uint8": "dali-uint8"}
FRACTION_NAMES = ("torch DataLoader", "kdprune FFCV", "kdprune DALI", "kdprune FFCV, uint8", "FFCV stock")


def test_loader_tables_are_recorded():
    rows = recorded("loaders")
    table = readme_table("### Loaders")
    assert {t[0] for t in table} == set(LOADER_NAMES)
    for name, per_s, vs_stock, vs_torch in table:
        assert any(r["part"] == "throughput" and r["backend"] == LOADER_NAMES[name] and shows(per_s, r["samples_per_s"])
                   and shows(vs_stock, r["vs_ffcv_stock"]) and shows(vs_torch, r["vs_torch"]) for r in rows), name
    fractions = readme_table("Epoch time on a kept fraction f")
    assert {t[0] for t in fractions} == set(FRACTION_NAMES)
    for name, *ratios in fractions:
        for f, printed in zip(("0.5", "0.3", "0.1"), ratios):
            assert any(r["part"] == "fraction" and r["backend"] == LOADER_NAMES[name] and float(r["fraction"]) == float(f)
                       and shows(printed, r["ratio"]) for r in rows), (name, f)


LOGITS_NAMES = {"one process (`--workers 0`)": "torch-main", "torch DataLoader workers": "torch",
                "FFCV (`--loader ffcv`)": "ffcv", "DALI (`--loader dali`)": "dali"}


def test_logits_table_is_recorded():
    rows = recorded("logits")
    table = readme_table("### Teacher logits")
    assert {t[0] for t in table} == set(LOGITS_NAMES)
    for name, per_s, vs_main, startup in table:
        assert any(r["path"] == LOGITS_NAMES[name] and shows(per_s, r["inputs_per_s"])
                   and shows(vs_main, r["vs_torch_main"]) and shows(startup, r["startup_s"]) for r in rows), name


def test_reproduction_table_is_the_published_run():
    """The README's accuracy grid is the published full reproduction's, cell for cell."""
    published = readme_table("## Accuracy by pruning method", "docs/results/full/results.md")
    shown = readme_table("## Reproducing the paper")
    assert len(shown) == len(published) >= 14
    assert shown == [[c.replace("alpha 0: no KD run", "alpha 0") for c in row] for row in published]
