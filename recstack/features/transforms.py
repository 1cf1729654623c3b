"""Request-time feature transformations, as plain functions over pandas frames.

Feast's on-demand feature views (feature_repo/on_demand.py) call these, and so does the serving path, so offline
training frames and online requests compute context and user x item features the same way.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pandas as pd

CROSS_OUTPUTS = ["category_affinity", "category_match_rank", "seconds_since_last_event"]

# Request context values: the devices the API accepts (serving/schemas.py), "unknown" when a request or an event
# came without one, "other" for a value that names none of them (an imported file's "toaster", "xx-yy-zz").
DEVICES = ("mobile", "desktop", "tv", "tablet")
UNKNOWN, OTHER = "unknown", "other"
_DEVICE_ALIASES = {
    "phone": "mobile",
    "smartphone": "mobile",
    "pc": "desktop",
    "laptop": "desktop",
    "computer": "desktop",
    "ipad": "tablet",
    "smart_tv": "tv",
    "smarttv": "tv",
    "ctv": "tv",
}
# BCP 47 tags (de-DE, zh-Hant-TW, es-419) and POSIX-style ones (de_DE): language, then an optional script, region.
_LOCALE = re.compile(r"^([a-z]{2,3})(?:[-_][a-z]{4})?(?:[-_]([a-z]{2}|\d{3}))?(?:[-_].*)?$", re.IGNORECASE)


def _text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


@functools.lru_cache(maxsize=4096)
def _device(text: str) -> str:
    key = text.lower().replace("-", "_").replace(" ", "_")
    return key if key in (*DEVICES, UNKNOWN, OTHER) else _DEVICE_ALIASES.get(key, OTHER)


@functools.lru_cache(maxsize=4096)
def _locale(text: str) -> str:
    if text.lower() in (UNKNOWN, OTHER):  # already spelled: normalizing twice changes nothing
        return text.lower()
    match = _LOCALE.match(text)
    if match is None:
        return OTHER
    language, region = match.group(1).lower(), match.group(2)
    return f"{language}_{region.upper()}" if region else language


def normalize_device(value: object) -> str:
    """The one spelling of a device: one of DEVICES (case and aliases folded), "unknown" or "other".

    Training (stored events and impressions) and serving (the request) both pass through here, via
    ``context_features``, so a ranker split on "mobile" meets "mobile" at serving, not "Mobile" or "phone"."""
    text = _text(value)
    return UNKNOWN if text is None else _device(text)


def normalize_locale(value: object) -> str:
    """The one spelling of a locale: ``ll`` or ``ll_RR`` (de-DE, de_de and DE-de are all de_DE; the script subtag of
    zh-Hant-TW is dropped), "unknown" when absent, "other" when not a locale tag."""
    text = _text(value)
    return UNKNOWN if text is None else _locale(text)


def context_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Hour of day on the unit circle (23h and 0h are neighbours), weekend flag, device and locale."""
    hour = frame["hour_of_day"].astype("float64")
    out = pd.DataFrame(index=frame.index)
    out["hour_sin"] = np.sin(2 * np.pi * hour / 24).astype("float64")
    out["hour_cos"] = np.cos(2 * np.pi * hour / 24).astype("float64")
    out["is_weekend"] = frame["day_of_week"].isin([5, 6]).astype("int64")
    out["ctx_device"] = frame["device"].map(normalize_device).astype(object)
    out["ctx_locale"] = frame["locale"].map(normalize_locale).astype(object)
    return out


def _affinity(categories: object, shares: object, item_categories: object) -> tuple[float, int]:
    """Largest share of the user's positives among the item's categories, and its rank (0 = top, -1 = none)."""
    if categories is None or item_categories is None or shares is None:
        return 0.0, -1
    wanted = set(item_categories)  # type: ignore[call-overload]
    for rank, (category, share) in enumerate(zip(categories, shares, strict=False)):  # type: ignore[call-overload]
        if category in wanted:
            return float(share), rank
    return 0.0, -1


def user_item_crosses_for_user(
    categories: object, shares: object, last_event_at: object, item_categories: list[object], request_ts: int
) -> dict[str, np.ndarray]:
    """``user_item_crosses`` for one user and many items (the serving path): the user's values are read once instead
    of being repeated on every row of a frame. Equal to the frame version (tests/unit/test_rank.py)."""
    n = len(item_categories)
    affinity, match_rank = np.zeros(n, np.float64), np.full(n, -1, np.int64)
    if categories is not None and shares is not None:
        first: dict[object, tuple[float, int]] = {}
        for rank, (category, share) in enumerate(zip(categories, shares, strict=False)):  # type: ignore[call-overload]
            first.setdefault(category, (float(share), rank))
        for row, wanted in enumerate(item_categories):
            if wanted is None or not first:
                continue
            hits = [first[c] for c in wanted if c in first]  # type: ignore[attr-defined]
            if hits:
                affinity[row], match_rank[row] = min(hits, key=lambda hit: hit[1])
    last = pd.to_datetime(last_event_at, utc=True, errors="coerce") if last_event_at is not None else pd.NaT
    since = -1.0 if pd.isna(last) else float(request_ts) - (last - pd.Timestamp(0, tz="UTC")).total_seconds()
    return {
        "category_affinity": affinity,
        "category_match_rank": match_rank,
        "seconds_since_last_event": np.full(n, since, np.float64),
    }


def user_item_crosses(frame: pd.DataFrame) -> pd.DataFrame:
    """User x item features: the user's affinity for the item's categories; recency of the user's last event."""
    pairs = [
        _affinity(c, s, i)
        for c, s, i in zip(frame["affinity_categories"], frame["affinity_shares"], frame["categories"], strict=True)
    ]
    out = pd.DataFrame(index=frame.index)
    out["category_affinity"] = np.array([p[0] for p in pairs], dtype="float64")
    out["category_match_rank"] = np.array([p[1] for p in pairs], dtype="int64")
    last = pd.to_datetime(frame["last_event_at"], utc=True, errors="coerce")
    last_s = (last - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    since = frame["request_ts"].astype("float64") - last_s
    out["seconds_since_last_event"] = since.fillna(-1.0).astype("float64")
    return out
