"""MovieLens importer: 100K (``u.data``), 1M (``*.dat``) and latest / latest-small (``*.csv``).

Formats are GroupLens's published ones. Ratings become ``rating`` events (half-star scales mapped linearly onto
1..5, the raw value kept in the context), genres become categories, domain ``movies``. MovieLens has no studio or
distributor column, so every movie gets the provider ``movielens``. Ids are namespaced by default (user ``1`` becomes
``ml-u1``, movie ``1`` becomes ``ml-m1``) so they never collide with other sources; ``IdMapping`` says how (an empty
prefix keeps MovieLens's own numbers). Event ids are derived from (prefix, user, movie, time): re-imports add nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recstack.ingest import DEFAULT_ID_PREFIX
from recstack.ingest.records import (
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    MAX_ID_LEN,
    USER_COLUMNS,
    Batch,
    Reject,
    SourceFormatError,
)
from recstack.ingest.rules import RATING_MAX, RATING_MIN, broken_rules

ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


@dataclass(frozen=True)
class Layout:
    name: str
    ratings: str
    movies: str
    users: str | None
    sep: str  # ratings file
    meta_sep: str  # movies and users files
    encoding: str
    header: bool


LAYOUTS = [
    Layout("ml-100k", "u.data", "u.item", "u.user", "\t", "|", "latin-1", False),
    Layout("ml-1m", "ratings.dat", "movies.dat", "users.dat", "::", "::", "latin-1", False),
    Layout("ml-latest", "ratings.csv", "movies.csv", None, ",", ",", "utf-8", True),
]
_PREFIX = re.compile(r"^[\x21-\x7e]{0,32}$")  # printable ASCII, no spaces: ids stay easy to type in a request


@dataclass(frozen=True)
class IdMapping:
    """MovieLens's numeric ids as external ids: ``<prefix>u<n>`` for users and ``<prefix>m<n>`` for movies (``ml-``
    by default, what earlier imports stored), or the numbers themselves when the prefix is empty."""

    prefix: str = DEFAULT_ID_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"id prefix {self.prefix!r}: use at most 32 printable ASCII characters without spaces")

    def _ids(self, kind: str, numbers: pd.Series) -> pd.Series:
        text = numbers.astype("Int64").astype(str)
        return (self.prefix + kind + text) if self.prefix else text

    def users(self, numbers: pd.Series) -> pd.Series:
        return self._ids("u", numbers)

    def movies(self, numbers: pd.Series) -> pd.Series:
        return self._ids("m", numbers)

    def events(self, users: pd.Series, movies: pd.Series, times: pd.Series) -> pd.Series:
        """``<prefix><user>-<movie>-<unix time>``: ``ml-1-31-874724710`` by default, as earlier imports stored."""
        text = [numbers.astype("Int64").astype(str) for numbers in (users, movies, times)]
        return self.prefix + text[0] + "-" + text[1] + "-" + text[2]

    def describe(self) -> list[str]:
        """How ids were mapped, for the import summary."""
        one = pd.Series([1])
        return [
            f"user ids: 1 -> {self.users(one).iloc[0]}",
            f"movie ids: 1 -> {self.movies(one).iloc[0]}",
            "(choose with --id-prefix; --id-prefix '' keeps MovieLens's numbers)",
        ]


SUPPORTED = (
    "ml-100k: u.data, u.item (u.user optional); ml-1m: ratings.dat, movies.dat (users.dat optional); "
    "ml-latest / ml-latest-small: ratings.csv, movies.csv"
)


def detect_layout(path: Path) -> tuple[Layout, Path]:
    """The layout of a MovieLens folder (or of its single sub-folder, as unzipped), else SourceFormatError."""
    if not path.is_dir():
        raise SourceFormatError(f"{path} is not a folder; supported MovieLens layouts: {SUPPORTED}")
    candidates = [path, *sorted(p for p in path.iterdir() if p.is_dir())]
    for folder in candidates:
        for layout in LAYOUTS:
            if (folder / layout.ratings).is_file() and (folder / layout.movies).is_file():
                return layout, folder
    raise SourceFormatError(f"{path} is not a MovieLens folder; supported layouts: {SUPPORTED}")


def _read_lines(file: Path, layout: Layout, n_fields: int, sep: str) -> tuple[pd.DataFrame, list[Reject]]:
    """Split every line into ``n_fields`` string fields; lines with another field count are rejects."""
    try:
        text = file.read_text(encoding=layout.encoding)
    except (OSError, UnicodeDecodeError) as err:
        raise SourceFormatError(f"{file}: cannot be read as {layout.encoding} text ({err})") from None
    lines = pd.Series(text.splitlines())
    first = 2 if layout.header else 1
    if layout.header:
        lines = lines.iloc[1:]
    lines.index = np.arange(first, first + len(lines))
    lines = lines[lines.str.strip() != ""]
    parsed = _split_csv(lines, n_fields) if sep == "," else lines.str.split(sep, regex=False, expand=False)
    ok = parsed.map(len) == n_fields
    rejects = [
        Reject(file.name, int(n), f"expected {n_fields} fields separated by {sep!r}, found {len(parsed[n])}")
        for n in parsed.index[~ok]
    ]
    frame = (
        pd.DataFrame(parsed[ok].tolist(), index=parsed.index[ok], columns=range(n_fields))
        if ok.any()
        else (pd.DataFrame(columns=range(n_fields)))
    )
    return frame, rejects


def _split_csv(lines: pd.Series, n_fields: int) -> pd.Series:
    """CSV split that honours quotes (movie titles contain commas), fast path for lines without quotes."""
    import csv

    quoted = lines.str.contains('"', regex=False).to_numpy()
    out = lines.str.split(",", regex=False).to_list()
    for pos in np.flatnonzero(quoted):
        out[pos] = next(csv.reader([lines.iloc[pos]]))
    return pd.Series(out, index=lines.index, dtype=object)


def _ints(column: pd.Series) -> pd.Series:
    return pd.to_numeric(column.str.strip(), errors="coerce")


def _ratings(file: Path, layout: Layout, known_movies: set[str], ids: IdMapping) -> tuple[pd.DataFrame, list[Reject]]:
    raw, rejects = _read_lines(file, layout, 4, layout.sep)
    user, movie = _ints(raw[0]), _ints(raw[1])
    rating, ts = pd.to_numeric(raw[2].str.strip(), errors="coerce"), _ints(raw[3])
    low, high = (0.5, 5.0) if layout.name == "ml-latest" else (RATING_MIN, RATING_MAX)
    rescaled = (low, high) != (RATING_MIN, RATING_MAX)
    # Another scale maps linearly onto the stored one (ml-latest's half stars: 0.5 -> 1, 5 -> 5).
    mapped = RATING_MIN + (rating - low) * (RATING_MAX - RATING_MIN) / (high - low) if rescaled else rating
    when = pd.to_datetime(ts.where(ts >= 0), unit="s", utc=True, errors="coerce")
    problems = [
        (user.isna() | (user != user.round()), "user id: not an integer"),
        (movie.isna() | (movie != movie.round()), "movie id: not an integer"),
        (rating.isna() | (rating < low) | (rating > high), f"rating: not a number in {low:g}..{high:g}"),
        (when.isna() | (ts != ts.round()), "timestamp: not a unix time"),
        # the rules the validation gate checks on stored events: a row it would refuse is refused here, by line
        *broken_rules(pd.DataFrame({"occurred_at": when, "event_type": "rating", "value": mapped})),
    ]
    bad = pd.Series(False, index=raw.index)
    for mask, reason in problems:
        new = mask & ~bad
        rejects += [Reject(file.name, int(n), reason) for n in raw.index[new]]
        bad |= mask
    movie_ext = ids.movies(movie)
    unknown = ~bad & ~movie_ext.isin(known_movies)
    rejects += [
        Reject(file.name, int(n), f"movie id {movie[n]:.0f}: not in the movies file") for n in raw.index[unknown]
    ]
    good = ~(bad | unknown)
    user_ext = ids.users(user[good])
    value = rating[good].astype(float)
    context = value.map(lambda v: json.dumps({"raw_rating": v})) if rescaled else pd.Series("{}", index=value.index)
    events = pd.DataFrame(
        {
            "event_id": ids.events(user[good], movie[good], ts[good]),
            "user_external_id": user_ext,
            "item_external_id": movie_ext[good],
            "event_type": "rating",
            "value": mapped[good].astype(float),
            "occurred_at": when[good],
            "context": context,
            "source_file": file.name,
            "source_line": raw.index[good],
        }
    )
    return events[EVENT_COLUMNS], rejects


def _movies(file: Path, layout: Layout, genre_names: list[str], ids: IdMapping) -> tuple[pd.DataFrame, list[Reject]]:
    if layout.name == "ml-100k":
        raw, rejects = _read_lines(file, layout, 5 + len(genre_names), layout.meta_sep)
        flags = raw[list(range(5, 5 + len(genre_names)))].to_numpy() == "1"
        genres = [[genre_names[j].lower() for j in np.flatnonzero(row)] for row in flags]
        dates = pd.to_datetime(raw[2], format="%d-%b-%Y", errors="coerce", utc=True)
        url = raw[4]
    else:
        raw, rejects = _read_lines(file, layout, 3, layout.meta_sep)
        genres = [[] if g.strip() == "(no genres listed)" else [x.lower() for x in g.split("|") if x] for g in raw[2]]
        dates, url = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]"), pd.Series("", index=raw.index)
    movie = _ints(raw[0])
    bad = movie.isna()
    rejects += [Reject(file.name, int(n), "movie id: not an integer") for n in raw.index[bad]]
    title = raw[1].str.strip()
    year = title.str.extract(r"\((\d{4})\)\s*$")[0]
    items = pd.DataFrame(
        {
            "external_id": ids.movies(movie[~bad]),
            "domain": "movies",
            "title": title[~bad],
            "categories": pd.Series(genres, index=raw.index)[~bad],
            "description": [
                f"{t}. {', '.join(g) or 'unclassified'} film" + (f" from {y}." if isinstance(y, str) else ".")
                for t, g, y in zip(title[~bad], pd.Series(genres, index=raw.index)[~bad], year[~bad], strict=True)
            ],
            "provider_id": "movielens",
            "attributes": [
                json.dumps(
                    {k: v for k, v in (("year", int(y) if isinstance(y, str) else None), ("imdb_url", u or None)) if v}
                )
                for y, u in zip(year[~bad], url[~bad], strict=True)
            ],
            "created_at": dates[~bad],
        }
    )
    return items.drop_duplicates("external_id"), rejects


def _users(file: Path | None, layout: Layout, events: pd.DataFrame, ids: IdMapping) -> pd.DataFrame:
    """Users of the ratings (created at their first rating) plus any listed only in the users file."""
    first_seen = events.groupby("user_external_id")["occurred_at"].min()
    users = pd.DataFrame({"external_id": first_seen.index, "created_at": first_seen.to_numpy()})
    if file is not None and file.is_file():
        raw, _ = _read_lines(file, layout, 5, layout.meta_sep)
        names = (
            ["age", "gender", "occupation", "zip"]
            if layout.name == "ml-100k"
            else ["gender", "age_group", "occupation", "zip"]
        )
        raw = raw[_ints(raw[0]).notna()]
        listed = pd.DataFrame(
            {
                "external_id": ids.users(_ints(raw[0])).to_numpy(),
                "attributes": [json.dumps(dict(zip(names, row, strict=True))) for row in raw[[1, 2, 3, 4]].to_numpy()],
            }
        ).drop_duplicates("external_id")
        users = users.merge(listed, on="external_id", how="outer")
    if "attributes" not in users:
        users["attributes"] = "{}"
    users["attributes"] = users["attributes"].fillna("{}")
    return users[USER_COLUMNS]


def read_movielens(path: Path, ids: IdMapping | None = None) -> Batch:
    """Parse a MovieLens folder into a Batch; malformed lines become Rejects with file and line number.

    Args:
        path: the unzipped MovieLens folder (or the folder holding it).
        ids: how MovieLens's numbers become external ids; ``ml-u1`` / ``ml-m1`` by default.
    """
    ids = ids or IdMapping()
    layout, folder = detect_layout(path)
    genre_names = ML100K_GENRES
    if layout.name == "ml-100k" and (folder / "u.genre").is_file():
        listed = [ln.split("|")[0] for ln in (folder / "u.genre").read_text(encoding="latin-1").splitlines() if ln]
        genre_names = listed or ML100K_GENRES
    items, rejects = _movies(folder / layout.movies, layout, genre_names, ids)
    events, rating_rejects = _ratings(folder / layout.ratings, layout, set(items["external_id"]), ids)
    rejects += rating_rejects
    too_long = (events["user_external_id"].str.len() > MAX_ID_LEN) | (events["event_id"].str.len() > MAX_ID_LEN)
    rejects += [
        Reject(r.source_file, int(r.source_line), "id longer than 128 characters")
        for r in events[too_long].itertuples()
    ]
    events = events[~too_long]
    # A movie without a release date was created no later than its first rating.
    first_rating = events.groupby("item_external_id")["occurred_at"].min()
    fallback = items["external_id"].map(first_rating)
    items["created_at"] = items["created_at"].fillna(fallback)
    users = _users(folder / layout.users if layout.users else None, layout, events, ids)
    rows_read = len(items) + len(events) + len(rejects)
    return Batch(users=users, items=items[ITEM_COLUMNS], events=events, rejects=rejects, rows_read=rows_read)
