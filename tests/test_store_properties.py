"""Property tests (hypothesis): any batch of valid ids, in any order and with repeats, gathers exactly
the rows a plain numpy reference holds; any batch with an invalid id is refused, whatever else it holds."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdprune.errors import StoreError
from kdprune.store import TeacherStore
from kdprune.store import format as fmt

N, C, VIEWS = 53, 7, 2
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """One store per (dtype, layout) and the numpy reference each should read back as."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((VIEWS, N, C)).astype(np.float32) * 5
    out = {}
    for dtype, topk in [("float32", None), ("float16", None), ("bfloat16", None), ("float16", 2)]:
        path = str(tmp_path_factory.mktemp("p") / f"{dtype}-{topk}")
        with TeacherStore.create(path, N, C, views=VIEWS, dtype=dtype, topk=topk, chunk_rows=5) as w:
            for view in range(VIEWS):
                perm = rng.permutation(N)
                for batch in np.array_split(perm, 4):
                    w.write(batch, torch.from_numpy(logits[view, batch]), view=view)
        ref = torch.from_numpy(logits)
        if topk:
            vals, idx = ref.topk(topk, dim=2)
            ref = torch.full_like(ref, fmt.TOPK_FILL).scatter_(2, idx, vals)
        out[(dtype, topk)] = (TeacherStore.open(path), ref.to(fmt.DTYPES[dtype]))
    return out


KEYS = [("float32", None), ("float16", None), ("bfloat16", None), ("float16", 2)]


@SETTINGS
@given(key=st.sampled_from(KEYS), ids=st.lists(st.integers(0, N - 1), max_size=200),
       view=st.integers(0, VIEWS - 1), as_tensor=st.booleans())
def test_gather_matches_reference(stores, key, ids, view, as_tensor):
    store, ref = stores[key]
    arg = torch.tensor(ids, dtype=torch.int64) if as_tensor else np.array(ids, dtype=np.int64)
    got = store.gather(arg, view=view)
    assert torch.equal(got, ref[view][torch.tensor(ids, dtype=torch.int64)])


@SETTINGS
@given(ids=st.lists(st.integers(0, N - 1), max_size=50),
       bad=st.one_of(st.integers(-2**63, -1), st.integers(N, 2**63 - 1)),
       where=st.integers(0, 50))
def test_any_invalid_id_is_refused(stores, ids, bad, where):
    store, _ = stores[("float16", None)]
    ids.insert(min(where, len(ids)), bad)
    with pytest.raises(StoreError, match=rf"sample id {bad} at position \d+ is out of range \[0, {N}\)"):
        store.gather(ids)


def test_ids_beyond_int64_are_refused(stores):
    store, _ = stores[("float16", None)]
    with pytest.raises(StoreError, match="int64"):
        store.gather([0, 2**70])


@SETTINGS
@given(rows=st.integers(1, 40), cols=st.integers(1, 700), n=st.integers(0, 300),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.uint8]),
       threads=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**31 - 1))
def test_native_gather_matches_index_select(rows, cols, n, dtype, threads, seed):
    """The C++ gather copies rows 8 at a time in 64-byte steps, in chunks shared by helper threads:
    any row width (a tail shorter than 64 bytes, rows narrower than one step), any count (a remainder
    of fewer than 8 rows, several chunks) and any thread count give exactly ``index_select``."""
    from kdprune import _native

    _native.load()
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, 250, (rows, cols), generator=g).to(dtype)
    ids = torch.randint(0, rows, (n,), generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = torch.ops.kdprune.gather_rows(src, ids, torch.empty(n, cols, dtype=dtype))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, src.index_select(0, ids))


def test_native_gather_of_many_chunks_uses_the_helpers_consistently():
    """Batches far larger than one chunk (128 KiB), gathered again and again with two threads: the
    helper pool's jobs never mix up two gathers."""
    from kdprune import _native

    _native.load()
    src = torch.arange(4000 * 300, dtype=torch.float32).view(4000, 300)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for seed in range(30):
            ids = torch.randint(0, 4000, (2000,), generator=torch.Generator().manual_seed(seed))
            assert torch.equal(torch.ops.kdprune.gather_rows(src, ids, torch.empty(2000, 300)), src[ids])
    finally:
        torch.set_num_threads(before)
