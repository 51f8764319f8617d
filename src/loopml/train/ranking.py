"""Ranking metrics over queries: ``precision@k``, ``map``, ``ndcg@k``, ``mrr``.

A *query* is a set of items ranked by score, with binary relevance. With an
``evaluation.group`` column, rows sharing its value form a query. For event
data without one, the query is a calendar day and the items are the entities
active that day, each with its highest score and relevant when it had at
least one positive label that day (the fraud handbook's "per card per day"
view; ``precision@100`` there is card precision@100).

Definitions, per query, items sorted by decreasing score:

* ``precision@k``: relevant items among the top ``min(k, n)``, divided by
  ``min(k, n)``; averaged over **all** queries (as card precision@k is);
* ``map``: scikit-learn's ``average_precision_score`` of the query (tied
  scores form one threshold), averaged over queries with a relevant item;
* ``ndcg@k``: scikit-learn's ``ndcg_score(k=k)`` (tied scores share their
  discounts evenly), averaged over queries with a relevant item;
* ``mrr``: 1 / position of the first relevant item (ties broken by row
  order), averaged over queries with a relevant item.

scikit-learn computes these one query at a time (``ndcg_score`` needs every
query padded to the same length); here every query is handled in one
vectorised pass (a sort by query then score, and segment sums with
``np.add.reduceat``), so thousands of queries cost one sort. The tests check
each query against scikit-learn to 1e-9.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Queries:
    """Items grouped into queries: ``query`` ids (0..q-1), relevance and scores, aligned."""

    query: npt.NDArray[np.int64]
    relevant: npt.NDArray[np.int64]
    scores: FloatArray
    described: str


def queries_by_group(group: npt.ArrayLike, y: npt.ArrayLike, scores: npt.ArrayLike, name: str) -> Queries:
    """One query per distinct value of ``group`` (NULL is a value of its own)."""
    codes, _ = pd.factorize(pd.Series(np.asarray(group, dtype=object)), use_na_sentinel=False)
    return Queries(
        np.asarray(codes, dtype=np.int64),
        np.asarray(y, dtype=np.int64),
        np.asarray(scores, dtype=np.float64),
        f"rows grouped by {name}",
    )


def queries_by_day(timestamps: npt.ArrayLike, entities: npt.ArrayLike, y: npt.ArrayLike, scores: npt.ArrayLike) -> Queries:
    """One query per calendar day over that day's entities (max score, any positive)."""
    frame = pd.DataFrame(
        {
            "day": np.asarray(timestamps).astype("datetime64[D]"),
            "entity": np.asarray(entities),
            "y": np.asarray(y, dtype=np.int64),
            "score": np.asarray(scores, dtype=np.float64),
        }
    )
    items = frame.groupby(["day", "entity"], sort=True, dropna=False).agg(y=("y", "max"), score=("score", "max")).reset_index()
    codes, _ = pd.factorize(items["day"], sort=True)
    return Queries(
        np.asarray(codes, dtype=np.int64),
        items["y"].to_numpy(dtype=np.int64),
        items["score"].to_numpy(dtype=np.float64),
        "entities per day",
    )


def _sorted(q: Queries) -> tuple[npt.NDArray[np.int64], FloatArray, FloatArray, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Items sorted by query then decreasing score: query, score, relevance, position in query, query starts."""
    order = np.lexsort((-q.scores, q.query))
    query, score, rel = q.query[order], q.scores[order], q.relevant[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, query[1:] != query[:-1]])
    sizes = np.diff(np.r_[starts, len(query)])
    position = np.arange(len(query)) - np.repeat(starts, sizes)
    return query, score, rel, position, starts


def per_query(q: Queries, k: int) -> dict[str, FloatArray]:
    """Each metric per query (NaN where undefined: no relevant item), plus ``relevant`` counts."""
    if len(q.query) == 0:
        empty = np.zeros(0, dtype=np.float64)
        return {"precision@k": empty, "map": empty, "ndcg@k": empty, "mrr": empty, "relevant": empty}
    query, score, rel, position, starts = _sorted(q)
    n_items = np.diff(np.r_[starts, len(query)]).astype(np.float64)
    n_rel = np.add.reduceat(rel, starts)
    has = n_rel > 0

    top = (position < k).astype(np.float64)
    precision_k = np.add.reduceat(rel * top, starts) / np.minimum(k, n_items)

    # tie blocks: consecutive items of one query with the same score
    block_start = np.flatnonzero(np.r_[True, (query[1:] != query[:-1]) | (score[1:] != score[:-1])])
    block_size = np.diff(np.r_[block_start, len(query)])
    block_end = block_start + block_size - 1
    cum_rel = np.cumsum(rel)
    query_rel_before = np.repeat(np.r_[0.0, cum_rel][starts], np.diff(np.r_[starts, len(query)]))
    # average precision: each relevant item scores the precision at the end of its tie block
    hits_at_end = (cum_rel - query_rel_before)[block_end]
    precision_at_end = hits_at_end / (position[block_end] + 1.0)
    block_rel = np.add.reduceat(rel, block_start)
    block_query = query[block_start]
    ap_sum = np.bincount(block_query, weights=block_rel * precision_at_end, minlength=len(starts))
    average_precision = np.divide(ap_sum, n_rel, out=np.full(len(starts), np.nan), where=has)

    # ndcg@k: gain of a tie block = its mean relevance times the discounts of its positions (within the top k)
    discount = np.where(position < k, 1.0 / np.log2(position + 2.0), 0.0)
    block_gain = block_rel / block_size * np.add.reduceat(discount, block_start)
    dcg = np.bincount(block_query, weights=block_gain, minlength=len(starts))
    ideal_discount = np.cumsum(1.0 / np.log2(np.arange(int(n_items.max())) + 2.0))
    ideal_count = np.minimum(n_rel, k).astype(np.int64)
    idcg = np.where(has, ideal_discount[np.maximum(ideal_count - 1, 0)], 0.0)
    ndcg = np.divide(dcg, idcg, out=np.full(len(starts), np.nan), where=has)

    # reciprocal rank of the first relevant item in sorted order
    first = np.full(len(starts), np.inf)
    hit = rel > 0
    np.minimum.at(first, query[hit], position[hit].astype(np.float64))
    mrr = np.where(has, 1.0 / (first + 1.0), np.nan)
    return {"precision@k": precision_k, "map": average_precision, "ndcg@k": ndcg, "mrr": mrr, "relevant": n_rel}


def ranking_metrics(q: Queries, k: int) -> dict[str, Any]:
    """``precision@k, map, ndcg@k, mrr`` averaged as documented, plus the query counts."""
    values = per_query(q, k)
    has = values["relevant"] > 0
    out: dict[str, Any] = {
        f"precision@{k}": float(values["precision@k"].mean()) if len(has) else None,
        "map": float(values["map"][has].mean()) if has.any() else None,
        f"ndcg@{k}": float(values["ndcg@k"][has].mean()) if has.any() else None,
        "mrr": float(values["mrr"][has].mean()) if has.any() else None,
        "queries": len(has),
        "queries_with_relevant": int(has.sum()),
        "query": q.described,
    }
    return out
