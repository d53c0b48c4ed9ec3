"""The geometric analyses (llmlatent.geometry), each against a plain reference."""

import numpy as np
import pandas as pd
import pytest
import torch

from llmlatent import geometry


def _rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_classical_mds_recovers_a_2d_configuration_up_to_rotation_and_reflection():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(40, 2)) * [3.0, 1.0]
    distances = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    coords = geometry.classical_mds(distances)
    centred = points - points.mean(0)
    # best orthogonal map (rotation or reflection) from the MDS coordinates onto the centred truth
    u, _, vh = np.linalg.svd(coords.T @ centred)
    aligned = coords @ (u @ vh)
    assert np.abs(aligned - centred).max() <= 1e-6
    again = np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
    assert np.abs(again - distances).max() <= 1e-6


def test_classical_mds_against_the_full_eigendecomposition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 5))
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    n = len(d)
    j = np.eye(n) - np.ones((n, n)) / n
    b = -0.5 * j @ (d**2) @ j
    values, vectors = np.linalg.eigh(b)
    ref = vectors[:, ::-1][:, :2] * np.sqrt(values[::-1][:2])
    got = geometry.classical_mds(d)
    assert np.allclose(np.abs(got), np.abs(ref), atol=1e-8)
    assert (got[np.abs(got).argmax(0), [0, 1]] > 0).all()  # the sign convention


def test_classical_mds_by_lanczos_equals_the_dense_decomposition(monkeypatch):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(geometry.LANCZOS_FROM + 50, 3)) * [4.0, 2.0, 1.0]
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    lanczos = geometry.classical_mds(d)
    monkeypatch.setattr(geometry, "LANCZOS_FROM", 10**9)
    dense = geometry.classical_mds(d)
    assert np.abs(lanczos - dense).max() <= 1e-8


def test_procrustes_recovers_q_and_every_token_ranks_itself_first():
    torch.manual_seed(0)
    u = torch.randn(300, 16, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)  # equal norms: u_v·u_v > u_v·u_w for every other w (Cauchy–Schwarz)
    q = _rotation(16, 1)
    e = u @ q  # rows: e_v = Qᵀ u_v, i.e. E = Qᵀ·U with vectors in columns
    r = geometry.procrustes(e, u)
    assert torch.allclose(r, q, atol=1e-10)
    assert torch.allclose(r @ r.T, torch.eye(16, dtype=torch.float64), atol=1e-10)
    ids = list(range(300))
    own, other = geometry.procrustes_ranks(u, e, r, ids, ids[::-1])
    assert (own == 1).all()
    assert (other > 1).all()


def test_procrustes_ranks_against_a_plain_sort():
    torch.manual_seed(2)
    u, e = torch.randn(50, 8), torch.randn(50, 8)
    r = geometry.procrustes(e, u)
    ids, partners = [3, 7, 11], [4, 7, 0]
    own, other = geometry.procrustes_ranks(u, e, r, ids, partners, chunk=2)
    for i, (t, o) in enumerate(zip(ids, partners)):
        logits = (u.double() @ (r @ e[t].double())).numpy()
        order = list(np.argsort(-logits, kind="stable"))
        assert own[i] == order.index(t) + 1 and other[i] == order.index(o) + 1
    with pytest.raises(ValueError, match="partners"):
        geometry.procrustes_ranks(u, e, r, [1, 2], [1])


def test_token_probabilities_are_the_full_softmax_read_at_the_sample():
    torch.manual_seed(3)
    lat, u = torch.randn(7, 6), torch.randn(40, 6)
    ids = [5, 0, 5, 39]
    ref = torch.softmax(lat.double() @ u.double().T, -1)[:, ids]
    assert torch.allclose(geometry.token_probabilities(lat, u, ids, chunk=3), ref, atol=1e-6)
    capped = torch.softmax(torch.tanh(lat.double() @ u.double().T / 2) * 2, -1)[:, ids]
    assert torch.allclose(geometry.token_probabilities(lat, u, ids, softcap=2.0), capped, atol=1e-6)


def test_rms_normalise_and_the_scaled_unembedding_give_the_lens_logits(tiny_models):
    m = tiny_models["llama"]
    h = torch.randn(4, m.hidden_size)
    u = geometry.scaled_unembedding(m.unembedding)
    eps = m.unembedding.final_norm.variance_epsilon
    assert torch.allclose(geometry.rms_normalise(h, eps) @ u.T, m.unembedding(h), atol=1e-4)
    assert torch.allclose(geometry.latent_norms(h), torch.sqrt((h**2).sum(-1)))


def test_mds_distances_block_layout_and_the_token_sample():
    p = np.array([[0.5, 0.1, 0.2], [0.05, 0.3, 0.25]])
    d = geometry.mds_distances(p)
    floor = 0.05
    assert d.shape == (5, 5) and np.allclose(d, d.T) and (np.diag(d) == 0).all()
    assert np.isclose(d[1, 3], -np.log(0.1 + floor)) and np.isclose(d[0, 1], -np.log(floor))
    assert np.isclose(d[3, 4], -np.log(floor))
    assert geometry.token_sample(6, [40, 41], 100) == [40, 41, 3, 2, 1, 0]
    with pytest.raises(ValueError):
        geometry.token_sample(1, [4, 5], 100)


def test_rank_summary_is_rs_summary():
    ranks = pd.DataFrame({"rank_zh": [1, 2, 3, 10], "rank_en": [5, 5, 6, 100]})
    s = geometry.rank_summary(ranks).set_index("statistic")
    assert s.loc["Median", "rank_zh"] == 2.5 and s.loc["1st Qu.", "rank_zh"] == 1.75  # R: quantile type 7
    assert s.loc["Mean", "rank_en"] == 29.0 and s.loc["Max.", "rank_en"] == 100
