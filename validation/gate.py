"""Run the suites with Great Expectations 1.x and gate materialization and training on them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.data_context.types.base import ProgressBarsConfig

from recstack import db, stack
from recstack.console import err_console
from recstack.settings import Settings
from validation.errors import ValidationFailed
from validation.suites import SuiteSpec, all_specs


@dataclass
class SuiteResult:
    name: str
    status: str  # "passed" | "failed" | "missing"
    evaluated: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rows: dict[str, list[str]] = field(default_factory=dict)  # failure -> a few offending rows (``show_rows``)


def _describe(result: Any, metric: bool = False) -> str:
    """One line per failed expectation: its type, column and bounds, and the observed value."""
    config = result.expectation_config
    if metric:  # a named metric of the aggregate query: say its value and the allowed range
        value = (result.result or {}).get("partial_unexpected_list") or ["?"]
        shown = f"{float(value[0]):.4g}" if isinstance(value[0], int | float | Decimal) else value[0]
        low, high = config.kwargs.get("min_value"), config.kwargs.get("max_value")
        return f"{config.kwargs['column']} = {shown}, expected {low:g}..{high:g}"
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format") and v is not None}
    column = kwargs.pop("column", None)
    args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    observed = result.result or {}
    if "observed_value" in observed:
        seen = f"observed {observed['observed_value']}"
    else:
        sample = observed.get("partial_unexpected_list") or []
        seen = f"{observed.get('unexpected_count', '?')} unexpected rows" + (f", e.g. {sample[:3]}" if sample else "")
    target = f"({column}{', ' if args else ''}{args})" if column else f"({args})"
    return f"{config.type}{target}: {seen}"


def _existing_tables(dsn: str, timeout_s: float) -> set[str]:
    with db.connect(dsn, timeout_s) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def _sqlalchemy_url(dsn: str) -> str:
    return "postgresql+psycopg://" + dsn.split("://", 1)[1]


def _docs_site(context: Any, docs_dir: Path) -> None:
    context.add_data_docs_site(
        site_name="recstack",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )


def _validations(context: Any, datasource: Any, spec: SuiteSpec) -> list[Any]:
    """The validation definitions of one suite: column rules on the table, metric rules on its aggregate query."""
    parts: list[tuple[str, Any, list[gxe.Expectation]]] = []
    parts.append((spec.name, datasource.add_table_asset(name=spec.name, table_name=spec.table), spec.column_rules))
    if spec.metrics_sql:
        rules: list[gxe.Expectation] = [
            gxe.ExpectColumnValuesToBeBetween(column=metric, min_value=low, max_value=high)
            for metric, (low, high) in spec.metric_bounds.items()
        ]
        asset = datasource.add_query_asset(name=f"{spec.name}_metrics", query=spec.metrics_sql)
        parts.append((f"{spec.name}.metrics", asset, rules))
    definitions = []
    for name, asset, rules in parts:
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=rules))
        batch = asset.add_batch_definition_whole_table(name="all")
        definitions.append(
            context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        )
    return definitions


def offending_rows(dsn: str, timeout_s: float, spec: SuiteSpec, metric: str, limit: int) -> list[str]:
    """Up to ``limit`` rows that a row-counting metric of ``spec`` counted, as ``column=value, ...`` lines."""
    condition = spec.row_conditions[metric]
    query = f"SELECT {spec.row_columns} FROM {spec.rows_from} WHERE {condition} LIMIT %s"  # noqa: S608 (constants)
    with db.connect(dsn, timeout_s) as conn:
        cursor = conn.execute(query, (limit,))
        names = [column.name for column in cursor.description or []]
        return [", ".join(f"{n}={v}" for n, v in zip(names, row, strict=True)) for row in cursor.fetchall()]


def run_suites(
    settings: Settings, names: list[str] | None = None, docs_dir: Path | None = None, show_rows: int = 0
) -> list[SuiteResult]:
    """Validate the named suites (all by default); optionally render Data Docs HTML into ``docs_dir``.

    Args:
        settings: where the stores are.
        names: suites to run (``all_specs()`` keys); all when None.
        docs_dir: write Data Docs HTML there when set.
        show_rows: list up to this many offending rows of each failed row-counting metric in ``SuiteResult.rows``.
    """
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    specs = all_specs()
    unknown = sorted(set(names or []) - set(specs))
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; known: {sorted(specs)}")
    dsn = stack.postgres_dsn(settings)
    tables = _existing_tables(dsn, settings.connect_timeout_s)
    context = gx.get_context(mode="ephemeral")
    # GX draws a progress bar per validation; recstack prints one summary table instead.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    if docs_dir is not None:
        _docs_site(context, docs_dir)
    datasource = context.data_sources.add_postgres(name="recstack", connection_string=_sqlalchemy_url(dsn))
    results = []
    definitions = []
    for name in names or list(specs):
        spec = specs[name]
        if spec.table not in tables:
            results.append(SuiteResult(name, "missing", failures=[f"table {spec.table} does not exist"]))
            continue
        started = time.perf_counter()
        suite_definitions = _validations(context, datasource, spec)
        definitions += suite_definitions
        result = SuiteResult(name, "passed")
        for definition in suite_definitions:
            run = definition.run(result_format="SUMMARY")
            for item in run.results:
                result.evaluated += 1
                if not item.success:
                    metric = definition.name.endswith(".metrics")
                    result.failed += 1
                    result.failures.append(_describe(item, metric=metric))
                    column = item.expectation_config.kwargs.get("column")
                    if show_rows and metric and column in spec.row_conditions:
                        timeout = settings.connect_timeout_s
                        result.rows[result.failures[-1]] = offending_rows(dsn, timeout, spec, column, show_rows)
        result.status = "failed" if result.failed else "passed"
        result.seconds = time.perf_counter() - started
        results.append(result)
    if docs_dir is not None and definitions:
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name="recstack",
                validation_definitions=definitions,
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs")],
            )
        )
        checkpoint.run()
    return results


def require_pass(settings: Settings, suites: list[str], force: bool) -> list[SuiteResult]:
    """Raise ValidationFailed naming every failed expectation, unless ``force`` (then warn and go on)."""
    results = run_suites(settings, suites)
    bad = [r for r in results if r.status != "passed"]
    if not bad:
        return results
    lines = [f"{r.name}: {failure}" for r in bad for failure in r.failures]
    message = "data validation failed:\n  " + "\n  ".join(lines)
    if force:
        err_console.print(f"[yellow]warning (--force):[/] {message}", markup=True)
        return results
    raise ValidationFailed(message + "\nfix the data (`recstack validate --show-rows` lists bad rows) or pass --force")
