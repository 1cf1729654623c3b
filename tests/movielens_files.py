"""Folders in MovieLens's published file formats, generated locally (real MovieLens cannot be downloaded here).

Same files, separators, encodings and sizes as the real ml-100k (943 users, 1,682 movies, 100,000 ratings, every
user and movie rated at least once, unique (user, movie) pairs), so the importer runs on data shaped like the real
thing; also ml-1m and ml-latest layouts, and a helper that corrupts chosen lines for reject tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recstack.ingest.movielens import ML100K_GENRES

_TITLES = ["Café Society", "Toy Story", "Heat, The", "Amélie", "Se7en", "Fargo", "Brazil", "Léon", "Twelve Monkeys"]


def _pairs(rng: np.random.Generator, users: int, items: int, ratings: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique (user, item) pairs covering every user and item at least once."""
    if ratings > users * items:
        raise ValueError("more ratings than (user, item) pairs")
    n_base = max(users, items)
    base = list(zip((np.arange(n_base) % users).tolist(), (np.arange(n_base) % items).tolist(), strict=True))
    chosen = set(base)
    extra: list[tuple[int, int]] = []
    while len(chosen) < ratings:
        u = rng.integers(0, users, size=ratings)
        i = np.minimum((rng.pareto(1.2, size=ratings) * items / 20).astype(int), items - 1)
        for pair in zip(u.tolist(), i.tolist(), strict=True):
            if pair not in chosen and len(chosen) < ratings:
                chosen.add(pair)
                extra.append(pair)
    pairs = np.array(base + extra)
    rng.shuffle(pairs)
    return pairs[:, 0] + 1, pairs[:, 1] + 1


def _title(j: int) -> str:
    return f"{_TITLES[j % len(_TITLES)]} {j} ({1930 + j % 68})"


def write_movielens_100k(
    path: Path, seed: int = 0, users: int = 943, items: int = 1682, ratings: int = 100_000
) -> Path:
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    u, i = _pairs(rng, users, items, ratings)
    stars = rng.integers(1, 6, size=ratings)
    ts = 874_724_710 + rng.integers(0, 20_000_000, size=ratings)
    (path / "u.data").write_text(
        "".join(f"{a}\t{b}\t{r}\t{t}\n" for a, b, r, t in zip(u, i, stars, ts, strict=True)), encoding="latin-1"
    )
    genre_lines = "".join(f"{g}|{j}\n" for j, g in enumerate(ML100K_GENRES)) + "\n"
    (path / "u.genre").write_text(genre_lines, encoding="latin-1")
    item_lines = []
    for j in range(1, items + 1):
        flags = ["0"] * len(ML100K_GENRES)
        for g in rng.choice(len(ML100K_GENRES), size=rng.integers(1, 4), replace=False):
            flags[g] = "1"
        item_lines.append(
            f"{j}|{_title(j)}|01-Jan-{1930 + j % 68}||http://us.imdb.com/M/title-exact?{j}|" + "|".join(flags) + "\n"
        )
    (path / "u.item").write_text("".join(item_lines), encoding="latin-1")
    occupations = ["engineer", "student", "writer", "artist", "doctor"]
    (path / "u.user").write_text(
        "".join(f"{j}|{18 + j % 50}|{'MF'[j % 2]}|{occupations[j % 5]}|{10000 + j}\n" for j in range(1, users + 1)),
        encoding="latin-1",
    )
    return path


def write_movielens_1m(path: Path, seed: int = 0, users: int = 200, items: int = 300, ratings: int = 5000) -> Path:
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    u, i = _pairs(rng, users, items, ratings)
    stars = rng.integers(1, 6, size=ratings)
    ts = 956_703_932 + rng.integers(0, 10_000_000, size=ratings)
    (path / "ratings.dat").write_text(
        "".join(f"{a}::{b}::{r}::{t}\n" for a, b, r, t in zip(u, i, stars, ts, strict=True)), encoding="latin-1"
    )
    genres = ["Action", "Comedy", "Drama", "Sci-Fi", "Romance"]
    (path / "movies.dat").write_text(
        "".join(f"{j}::{_title(j)}::{genres[j % 5]}|{genres[(j + 2) % 5]}\n" for j in range(1, items + 1)),
        encoding="latin-1",
    )
    (path / "users.dat").write_text(
        "".join(f"{j}::{'MF'[j % 2]}::25::{j % 20}::{10000 + j}\n" for j in range(1, users + 1)), encoding="latin-1"
    )
    return path


def write_movielens_latest(path: Path, seed: int = 0, users: int = 200, items: int = 300, ratings: int = 5000) -> Path:
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    u, i = _pairs(rng, users, items, ratings)
    halves = rng.integers(1, 11, size=ratings) / 2
    ts = 1_500_000_000 + rng.integers(0, 50_000_000, size=ratings)
    (path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        + "".join(f"{a},{b},{r:g},{t}\n" for a, b, r, t in zip(u, i, halves, ts, strict=True)),
        encoding="utf-8",
    )
    lines = ["movieId,title,genres\n"]
    for j in range(1, items + 1):
        title = _title(j)
        genres = "(no genres listed)" if j % 50 == 0 else "Comedy|Drama"
        lines.append(f'{j},"{title}",{genres}\n' if "," in title else f"{j},{title},{genres}\n")
    (path / "movies.csv").write_text("".join(lines), encoding="utf-8")
    return path


def corrupt_lines(file: Path, line_numbers: list[int], encoding: str = "latin-1") -> None:
    """Overwrite the given 1-based lines with malformed variants (too few fields, non-numeric id, rating 9)."""
    lines = file.read_text(encoding=encoding).splitlines(keepends=True)
    sep = "::" if "::" in lines[-1] else ("\t" if "\t" in lines[-1] else ",")
    variants = [f"1{sep}2\n", f"abc{sep}1{sep}3{sep}881250949\n", f"1{sep}1{sep}9{sep}881250949\n"]
    for k, n in enumerate(line_numbers):
        lines[n - 1] = variants[k % len(variants)]
    file.write_text("".join(lines), encoding=encoding)
