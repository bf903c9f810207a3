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
