"""Fitting the item-item candidate source: EASE^R (Steck 2019, "Embarrassingly Shallow Autoencoders") over the
watched/liked history matrix (recstack.stages.item_item), kept as each item's top-N neighbours.

EASE needs an items x items inverse, so it is fit on a head of the catalog: the most touched items with at least
``MIN_TOUCHES`` touches, at most ``MAX_ITEMS`` (wider than the EASE baseline's 8000), and never fewer than
``MIN_HEAD`` when the data has them. Rows are kept whole while the head's weights fit ``MAX_WEIGHTS``; past it each
row keeps its largest magnitudes, ``MAX_WEIGHTS / head`` of them. Measured (NDCG@10 of the item-item source, random
protocol, scored as /recommend orders it; bench/probe_item_item.py on ml-latest-small, the 1M figures with the same
functions on the 1M stack's events, issue 14's note):
  * ml-latest-small (9k items, 2.2k with 10+ ratings): whole rows on a head of 1000 0.285, 2500 0.286, 8000 0.285;
    a head of 8000 cut to 800 / 2000 / 4000 neighbours 0.274 / 0.281 / 0.285: the rare items add nothing and cutting
    the rows of the popular ones costs, so the head is the items with 10+ touches, rows whole;
  * 1M users / 100k items (20M events): whole rows on a head of 2500 0.0687 (0.89x the EASE baseline), 5000 0.0760,
    8000 0.0789 (1.025x); a head of 8000 cut to 500 / 1000 / 2000 neighbours 0.0784 / 0.0786 / 0.0787: the head is
    what matters there, the cut hardly (8M weights where whole rows would be 64M). At the same 8M weights
    (bench/probe_head.py, history model at l2 100): 8000 x 1000 0.0786 (1.022x), 12000 x 666 0.0816 (1.060x),
    16000 x 500 0.0825 (1.072x); ``select`` with the sequence model on 12000 items: 0.0823 (1.069x), peak RSS 13.8 GB,
    17.5 min; on 16000 it then ran out of memory (19.9 GB: the head^2 float64 Grams and inverses). Judged on 4,000
    users: 12000 x 666 1.046x, 16000 x 500 1.065x. ``select`` now holds at most four head x head matrices (in-place
    Cholesky inverse, row blocks); `recstack train` at 1M with a 16000 head peaked at 12.6 GB (14.0 at 12000 before).

The ridge penalty is chosen per dataset (``select``) from ``L2``, the value tuned on ml-latest-small: a penalty
suits the data it was tuned on (the Gram matrix grows with the users and their histories). Test-split NDCG@10 by
penalty, same probes: ml-latest-small random 25 / 50 / 100 / 200 / 400: 0.269 / 0.282 / 0.285 / 0.283 / 0.271,
temporal 0.113 / 0.114 / 0.114 / 0.109 / 0.102; 1M users 25 / 100 / 400 / 1600: 0.0796 / 0.0786 / 0.0758 / 0.0706.
``select`` on each one's own random split of the training data keeps 100 on all three (1M: 96 s, three fits).

Beside the history model, a sequence model: EASE on a windowed history (``sequence_gram``: each event's row holds
the same user's events up to ``SEQUENCE_WINDOW`` positions away), added to the history model's weights when it helps
on the held-out part (``select``; its penalty and weight chosen there too). The history model weighs two items a user
met months apart like two met in one sitting; on real logs what a user met next to an item tells more. On
ml-latest-small (bench/probe_item_item.py, NDCG@10 against the EASE baseline, the fit ``select`` chose): random
split seed 2020 1.013x -> 1.074x, seeds 2021 / 2022 1.031x -> 1.067x / 1.046x -> 1.107x, temporal 1.103x -> 1.109x.
Windows of 5 scored below 10, of 25 below both; a time-gap session model (events within an hour) reached 1.039x.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from recstack.stages.item_item import ItemItem, history_weights, recency_factor
from training import baselines, metrics
from training.baselines import ease_weights
from training.interactions import Interactions
from training.protocols import ProtocolConfig, split

log = logging.getLogger(__name__)

MAX_ITEMS = 16000  # a wider head still helped at 1M users (module docstring)
MIN_TOUCHES = 10
MIN_HEAD = 1000
MAX_WEIGHTS = 8_000_000
L2 = 100.0  # where the penalty search starts (select)
L2_STEPS = 4  # halvings or doublings at most: 6.25 .. 1600
SELECT_USERS = 2000
MIN_GAIN = 0.01  # a step is taken only for this much more held-out NDCG@10 (less is noise at a few thousand users)
SEQUENCE_WINDOW = 10  # the sequence model's window: a user's events up to this many positions apart (``sequence_gram``)
SEQUENCE_WEIGHTS = (0.5, 1.0, 2.0)  # weights of the sequence model tried beside the history one (``select``)
SEQUENCE_L2 = (2.0, 4.0, 8.0)  # its ridge penalties tried, as multiples of the history model's


def history_matrix(events: Interactions, n_users: int, n_items: int) -> sparse.csr_matrix:
    """users x items, the strongest history weight of each pair."""
    weight = history_weights(events.event_type, events.value)
    keep = weight > 0
    key = events.user[keep].astype(np.int64) * n_items + events.item[keep]
    unique, inverse = np.unique(key, return_inverse=True)
    best = np.zeros(len(unique), np.float32)
    np.maximum.at(best, inverse, weight[keep])
    return sparse.csr_matrix((best, (unique // n_items, unique % n_items)), shape=(n_users, n_items))


def query_matrix(events: Interactions, n_users: int, n_items: int) -> sparse.csr_matrix:
    """users x items, what each user's item-item query holds: the strongest weight x the recency factor of the
    pair's latest event (recstack.stages.item_item.query_weights, row by row)."""
    weight = history_weights(events.event_type, events.value)
    keep = weight > 0
    frame = pd.DataFrame(
        {"user": events.user[keep], "item": events.item[keep], "w": weight[keep], "ts": events.ts[keep]}
    )
    pairs = frame.groupby(["user", "item"], sort=False).agg(w=("w", "max"), ts=("ts", "max")).reset_index()
    rank = pairs.groupby("user")["ts"].rank(ascending=False, method="first").to_numpy() - 1
    values = pairs["w"].to_numpy(np.float32) * recency_factor(rank)
    return sparse.csr_matrix((values, (pairs["user"], pairs["item"])), shape=(n_users, n_items))


def sequence_gram(events: Interactions, head: np.ndarray, k: int) -> np.ndarray:
    """head x head, dense: the Gram matrix of a windowed history, each event's row holding the items of the same user's
    events up to ``k`` positions before and after it (time order), by their history weights. Two events ``d`` apart
    share ``2k + 1 - d`` windows, so the pair adds that many times the product of their weights (the sequence ends'
    shorter windows aside). Built pair by pair, without the windows (2k + 1 times the events)."""
    weight = history_weights(events.event_type, events.value)
    keep = weight > 0
    user, item, ts, weight = events.user[keep], events.item[keep], events.ts[keep].astype(np.int64), weight[keep]
    order = np.lexsort((ts, user))
    user, item, weight = user[order], item[order], weight[order].astype(np.float64)
    position = np.full(max(int(item.max()) if len(item) else 0, int(head.max()) if len(head) else 0) + 1, -1, np.int64)
    position[head] = np.arange(len(head))
    where = position[item]
    n = len(head)
    gram = np.zeros(n * n, np.float64)
    for d in range(0, 2 * k + 1):
        a, b = np.arange(len(item) - d), np.arange(d, len(item))
        ok = (user[a] == user[b]) & (where[a] >= 0) & (where[b] >= 0)
        a, b = a[ok], b[ok]
        product = weight[a] * weight[b] * (2 * k + 1 - d)
        gram += np.bincount(where[a] * n + where[b], product, minlength=n * n)
        if d:
            gram += np.bincount(where[b] * n + where[a], product, minlength=n * n)
    return gram.reshape(n, n)


def head_size(touched: np.ndarray, max_items: int = MAX_ITEMS, min_touches: int = MIN_TOUCHES) -> int:
    """How many of the most touched items EASE is fit on (module docstring)."""
    available = int((touched > 0).sum())
    frequent = int((touched >= min_touches).sum())
    return min(max_items, max(frequent, min(MIN_HEAD, available)))


def head_items(x: sparse.csr_matrix, max_items: int = MAX_ITEMS, min_touches: int = MIN_TOUCHES) -> np.ndarray:
    """The (sorted) columns EASE is fit on: the most touched, ``head_size`` of them."""
    touched = np.asarray((x > 0).sum(0)).ravel()
    return np.sort(np.argsort(-touched, kind="stable")[: head_size(touched, max_items, min_touches)])


def fit_ease(
    x: sparse.csr_matrix,
    l2: float = L2,
    max_items: int = MAX_ITEMS,
    neighbours: int | None = None,
    min_touches: int = MIN_TOUCHES,
) -> ItemItem:
    """B = I - P / diag(P), P = (X'X + l2 I)^-1 on the head items; rows whole while they fit ``MAX_WEIGHTS``, else
    (or with ``neighbours``) cut to their largest magnitudes."""
    head = head_items(x, max_items, min_touches)
    if len(head) < 2:
        return ItemItem.empty(x.shape[1])
    return as_item_item(ease_weights(x[:, head], l2), head, x.shape[1], neighbours)


Rows = Callable[[slice], np.ndarray]  # rows of dense head x head weights, by position in the head


def as_item_item(
    b: np.ndarray | Rows, head: np.ndarray, n_items: int, neighbours: int | None = None, block: int = 1024
) -> ItemItem:
    """Dense head x head weights (or a function giving their rows) as the served sparse neighbours (rows cut past the
    weight budget), a block of rows at a time: no head x head temporary (2 GB each at 16,000 items)."""
    rows_of: Rows = b.__getitem__ if isinstance(b, np.ndarray) else b
    n = len(head)
    if neighbours is None and n**2 > MAX_WEIGHTS:
        neighbours = MAX_WEIGHTS // n
    keep = n if neighbours is None else min(neighbours, n - 1)
    values, columns = [], []
    for start in range(0, n, block):
        rows = rows_of(slice(start, start + block))
        # Cut by magnitude: EASE's negative weights carry as much as its positive ones (on ml-latest-small, rows cut
        # to their 200 largest weights lost 11% NDCG@10, to their 200 largest magnitudes nothing).
        top = (
            np.argpartition(-np.abs(rows), keep - 1, axis=1)[:, :keep]
            if keep < n
            else np.tile(np.arange(keep), (len(rows), 1))
        )
        values.append(np.take_along_axis(rows, top, axis=1).astype(np.float32).ravel())
        columns.append(head[top].ravel())
    matrix = sparse.csr_matrix(
        (np.concatenate(values), (np.repeat(head, keep), np.concatenate(columns))), shape=(n_items, n_items)
    )
    return ItemItem(matrix.astype(np.float32))


@dataclass(frozen=True)
class Choice:
    """How the item-item weights are fit: EASE on the history matrix with ridge penalty ``l2``, plus
    ``sequence_weight`` times EASE on the windowed history (``sequence_gram``) with penalty ``sequence_l2`` (weight 0:
    no sequence model)."""

    l2: float = L2
    sequence_weight: float = 0.0
    sequence_l2: float = 4 * L2

    def label(self) -> str:
        sequence = f" + {self.sequence_weight:g} x sequence (l2 {self.sequence_l2:g})" if self.sequence_weight else ""
        return f"l2 {self.l2:g}{sequence}"

    def params(self) -> dict[str, float]:
        """What the model's registry record keeps (``from_params`` reads it back)."""
        return {
            "item_item_l2": self.l2,
            "item_item_sequence_weight": self.sequence_weight,
            "item_item_sequence_l2": self.sequence_l2,
        }

    @classmethod
    def from_params(cls, params: dict[str, object]) -> Choice:
        """A record's choice; a model trained before a knob existed fit without it."""
        return cls(
            float(params.get("item_item_l2", L2)),  # type: ignore[arg-type]
            float(params.get("item_item_sequence_weight", 0.0)),  # type: ignore[arg-type]
            float(params.get("item_item_sequence_l2", 4 * L2)),  # type: ignore[arg-type]
        )


def fit(events: Interactions, n_users: int, n_items: int, choice: Choice = Choice()) -> ItemItem:
    """The served item-item weights of ``events`` as ``choice`` says: ``fit_ease``'s, plus the sequence model's."""
    x = history_matrix(events, n_users, n_items)
    head = head_items(x)
    if len(head) < 2:
        return ItemItem.empty(n_items)
    b = ease_weights(x[:, head], choice.l2)
    if not choice.sequence_weight:
        return as_item_item(b, head, n_items)
    b_sequence = baselines.ease_from_gram(sequence_gram(events, head, SEQUENCE_WINDOW), choice.sequence_l2)
    return as_item_item(blend(b, choice, b_sequence), head, n_items)


def blend(b_history: np.ndarray, choice: Choice, b_sequence: np.ndarray) -> Rows:
    """The served weights over the head, row by row: the history model's plus ``choice.sequence_weight`` times the
    sequence model's (EASE of ``sequence_gram`` at ``choice.sequence_l2``): what ``fit`` serves, ``select`` judges."""
    return lambda rows: b_history[rows] + choice.sequence_weight * b_sequence[rows]


@dataclass
class Selected:
    """The fit chosen for the data, the model it gives, and NDCG@10 on held-out positives of every fit tried (by
    ``Choice.label``)."""

    choice: Choice
    model: ItemItem
    ndcg: dict[str, float]


def select(
    history: Interactions,
    held_out: Interactions,
    exclude: Interactions,
    n_users: int,
    n_items: int,
    seed: int = 42,
) -> Selected:
    """The item-item fit for this data, chosen on held-out positives: EASE fit on ``history`` at ``L2``, then halved
    or doubled (``L2_STEPS`` times at most) for as long as NDCG@10 of the held-out positives of ``held_out`` rises;
    then the sequence model (``sequence_gram``) added at each of ``SEQUENCE_WEIGHTS`` with each of the penalties
    ``SEQUENCE_L2`` (multiples of the chosen one), the best kept if it beats the history model alone by more than
    ``MIN_GAIN``. Each user's items in ``exclude`` are left out, slates ordered as served (the recency-weighted
    query); up to ``SELECT_USERS`` users judge. The starting point was tuned on ml-latest-small: this keeps it where
    the data agree and moves it where they clearly do not (module docstring)."""
    x = history_matrix(history, n_users, n_items)
    head = head_items(x)
    positives = baselines.user_item_matrix(held_out, n_users, n_items)
    users = np.flatnonzero(np.diff(positives.indptr))
    if len(head) < 2 or not len(users):
        return Selected(Choice(), fit_ease(x), {})
    if len(users) > SELECT_USERS:
        users = np.sort(np.random.default_rng(seed).choice(users, SELECT_USERS, replace=False))
    query = query_matrix(history, n_users, n_items)[users][:, head]
    touched = np.ones(len(exclude.user), np.float32)  # every event, not only positives: a low rating is seen too
    seen = sparse.csr_matrix((touched, (exclude.user, exclude.item)), shape=(n_users, n_items))[users][:, head]
    relevant = [
        dict.fromkeys(positives.indices[positives.indptr[u] : positives.indptr[u + 1]].tolist(), 1) for u in users
    ]
    gram = baselines.gram_matrix(x[:, head])
    ndcg: dict[Choice, float] = {}

    def judge(choice: Choice, b: np.ndarray | Rows) -> float:
        started = time.perf_counter()
        served = as_item_item(b, head, n_items).weights[head][:, head]
        scores = np.asarray((query @ served).todense(), np.float64)
        scores[seen.nonzero()] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        ndcg[choice] = float(metrics.per_user(list(head[top]), relevant, 10)["ndcg"].mean())
        log.info(
            "item-item %s: held-out NDCG@10 %.4f (%.1f s)", choice.label(), ndcg[choice], time.perf_counter() - started
        )
        return ndcg[choice]

    chosen = Choice(walk(by_penalty(gram, judge, ndcg), L2))
    b = baselines.ease_from_gram(gram, chosen.l2)
    del gram  # at most four head x head matrices from here: b, the sequence Gram, the best and the current sequence fit
    sequence = sequence_gram(history, head, SEQUENCE_WINDOW)
    best: tuple[Choice, np.ndarray] | None = None  # the best sequence model so far, its weights
    for factor in SEQUENCE_L2:
        b_sequence = baselines.ease_from_gram(sequence, chosen.l2 * factor)
        for weight in SEQUENCE_WEIGHTS:
            choice = Choice(chosen.l2, weight, chosen.l2 * factor)
            if judge(choice, blend(b, choice, b_sequence)) > (ndcg[best[0]] if best else -1.0):
                best = (choice, b_sequence)
        del b_sequence
    del sequence
    served: np.ndarray | Rows = b
    if best is not None and ndcg[best[0]] > ndcg[chosen] * (1 + MIN_GAIN):
        chosen = best[0]
        served = blend(b, chosen, best[1])
    return Selected(chosen, as_item_item(served, head, n_items), {c.label(): v for c, v in ndcg.items()})


def by_penalty(
    gram: np.ndarray, judge: Callable[[Choice, np.ndarray], float], judged: dict[Choice, float]
) -> Callable[[float], float]:
    """What ``walk`` calls: the held-out NDCG@10 of the history model at a penalty, each fit judged once."""

    def at(l2: float) -> float:
        choice = Choice(l2)
        return judged[choice] if choice in judged else judge(choice, baselines.ease_from_gram(gram, l2))

    return at


def select_on(events: Interactions, n_users: int, n_items: int, seed: int = 42) -> Selected:
    """``select`` on a random split of ``events`` (training.protocols, its defaults): what a probe calls to fit the
    item-item source as `recstack train` would on the same events."""
    inner = split(
        events.user, events.item, events.event_type, events.value, events.ts, ProtocolConfig("random", seed=seed)
    )
    return select(
        events.take(inner.train), events.take(inner.valid), events.take(inner.train | inner.test), n_users, n_items
    )


def walk(judge: Callable[[float], float], start: float, steps: int = L2_STEPS, min_gain: float = MIN_GAIN) -> float:
    """Halve ``start`` while ``judge`` rises by more than ``min_gain`` a step (``steps`` at most); if that went
    nowhere, double it the same way. Returns where it stopped."""
    for factor in (0.5, 2.0):
        at = start
        for _ in range(steps):
            if judge(at * factor) <= judge(at) * (1 + min_gain):
                break
            at *= factor
        if at != start:
            return at
    return start
